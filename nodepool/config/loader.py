"""Read, check and build the configuration (spec part A, section 4).

``load_config`` is the only way in: it reads the file (tolerating an editor
replacing it), substitutes ``%(NODEPOOL_*)`` environment references, parses the
YAML, validates every key against the core and driver schemas, checks all
cross references (labels, diskimages, parents, cloud images, duplicates) and
builds typed objects. Every problem found is reported at once, each naming its
key path; nothing is half-loaded.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any, Mapping

import yaml

from nodepool.config import schema as s
from nodepool.config.model import (
    Config, DiskImage, Label, Provider, TenantLimits, WebApp,
)
from nodepool.config.schema import ConfigError, Problem
from nodepool.zk.client import DEFAULT_PORT, ZooKeeperServer, ZooKeeperTLS

ENV_REFERENCE = re.compile(r"%\((NODEPOOL_[A-Za-z0-9_]*)\)")

# Tenant limit keys -> resource names used in quota arithmetic.
TENANT_LIMIT_KEYS = {
    "max-servers": "instances",
    "max-cores": "cores",
    "max-ram": "ram",
    "max-volumes": "volumes",
    "max-volume-gb": "volume-gb",
}


# -- reading -------------------------------------------------------------------


def _read(path: str) -> tuple[str, int]:
    """File text and mtime (ns, taken before reading)."""
    for attempt in range(4):
        try:
            mtime = os.stat(path).st_mtime_ns
            with open(path, encoding="utf-8") as handle:
                return handle.read(), mtime
        except FileNotFoundError:
            # Editors may replace the file: give it a moment to reappear.
            if attempt == 3:
                raise ConfigError(path, ["file not found"]) from None
            time.sleep(0.5)
        except IsADirectoryError:
            raise ConfigError(path, ["is a directory, not a file"]) from None
        except PermissionError:
            raise ConfigError(path, ["permission denied"]) from None
        except UnicodeDecodeError as exc:
            raise ConfigError(path, [f"not valid UTF-8 text: {exc.reason} at byte "
                                     f"{exc.start}"]) from None
        except OSError as exc:
            raise ConfigError(path, [f"cannot read: {exc.strerror}"]) from None
    raise AssertionError("unreachable")


def substitute_env(text: str, env: Mapping[str, str]) -> tuple[str, list[Problem]]:
    """Replace ``%(NODEPOOL_X)`` with the variable's value.

    Only variables named NODEPOOL_* are substituted (so secrets of other
    programs cannot be pulled in). A reference to an unset variable is an
    error, reported with its line number.
    """
    problems = []

    def replace(match: re.Match) -> str:
        name = match.group(1)
        if name in env:
            return env[name]
        line = text.count("\n", 0, match.start()) + 1
        problems.append(Problem((f"line {line}",),
                                f"environment variable {name} is not set"))
        return match.group(0)

    return ENV_REFERENCE.sub(replace, text), problems


def _parse_yaml(path: str, text: str, allow_empty: bool) -> dict:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        detail = f"{context}, {problem}" if context else problem
        raise ConfigError(path, [Problem((where,), f"YAML syntax error: {detail}")]) \
            from None
    if data is None:
        if allow_empty:
            return {}
        raise ConfigError(path, ["the file is empty"])
    if not isinstance(data, dict):
        raise ConfigError(path, [f"expected a mapping of configuration keys at the "
                                 f"top level, got {s._describe(data)}"])
    return data


def read_yaml(path: str, env: Mapping[str, str] | None = None,
              allow_empty: bool = False) -> tuple[dict, int]:
    text, mtime = _read(path)
    text, problems = substitute_env(text, os.environ if env is None else env)
    if problems:
        raise ConfigError(path, problems)
    return _parse_yaml(path, text, allow_empty), mtime


# -- building --------------------------------------------------------------------


def _build_zookeeper(raw: dict, problems: list[Problem]) -> list[ZooKeeperServer]:
    servers = []
    chroots = set()
    for index, item in enumerate(raw.get("zookeeper-servers", [])):
        chroot = item.get("chroot") or None
        if chroot is not None:
            chroots.add(chroot.rstrip("/") or "/")
        servers.append(ZooKeeperServer(host=item["host"],
                                       port=item.get("port", DEFAULT_PORT),
                                       chroot=chroot))
    if len(chroots) > 1:
        problems.append(Problem(("zookeeper-servers",),
                                "all servers must use the same chroot, found "
                                f"{sorted(chroots)}"))
    return servers


def _build_labels(raw: dict, problems: list[Problem]) -> dict[str, Label]:
    labels: dict[str, Label] = {}
    for index, item in enumerate(raw.get("labels", [])):
        name = item["name"]
        if name in labels:
            problems.append(Problem(("labels", index, "name"),
                                    f"duplicate label {name!r}"))
        labels[name] = Label(name=name, min_ready=item.get("min-ready", 0),
                             max_ready_age=item.get("max-ready-age", 0))
    return labels


def _merge_diskimage(target: dict, entry: dict) -> None:
    """Apply one diskimage entry over accumulated settings (spec 4.5.1)."""
    target["elements"] = target["elements"] + list(entry.get("elements", []))
    target["env-vars"] = {**target["env-vars"], **entry.get("env-vars", {})}
    # Metadata merges like env-vars (upstream overwrites; see spec 4.5.1).
    target["metadata"] = {**target["metadata"], **entry.get("metadata", {})}
    for key in ("formats", "keep-formats"):
        if entry.get(key):
            target[key] = list(entry[key])
    for key in ("release", "rebuild-age", "build-timeout", "dib-cmd", "username",
                "python-path", "shell-type"):
        if entry.get(key):
            target[key] = entry[key]
    if entry.get("pause"):
        target["pause"] = True
    if "delete-after-upload" in entry:
        target["delete-after-upload"] = entry["delete-after-upload"]


def _build_diskimages(raw: dict, problems: list[Problem]
                      ) -> tuple[dict[str, DiskImage], set[str]]:
    entries: dict[str, dict] = {}
    where: dict[str, int] = {}
    for index, item in enumerate(raw.get("diskimages", [])):
        name = item["name"]
        if name in entries:
            problems.append(Problem(("diskimages", index, "name"),
                                    f"duplicate diskimage {name!r}"))
        entries[name] = item
        where[name] = index

    concrete: dict[str, DiskImage] = {}
    abstract = {n for n, e in entries.items() if e.get("abstract")}
    for name, entry in entries.items():
        chain = []
        seen = {name}
        current = entry
        broken = False
        while current.get("parent"):
            parent = current["parent"]
            path = ("diskimages", where[current["name"]], "parent")
            if parent in seen:
                problems.append(Problem(path, "inheritance cycle: " + " -> ".join(
                    [name] + [c["name"] for c in chain] + [parent])))
                broken = True
                break
            if parent not in entries:
                problems.append(Problem(path, f"unknown parent diskimage {parent!r}"))
                broken = True
                break
            seen.add(parent)
            current = entries[parent]
            chain.append(current)
        if broken or name in abstract:
            continue
        merged: dict[str, Any] = {"elements": [], "env-vars": {}, "metadata": {}}
        for ancestor in reversed(chain):
            _merge_diskimage(merged, ancestor)
        _merge_diskimage(merged, entry)
        concrete[name] = DiskImage(
            name=name, elements=merged["elements"], env_vars=merged["env-vars"],
            explicit_formats=list(merged.get("formats", [])),
            formats=sorted(set(merged.get("formats", []))),
            release=str(merged.get("release", "")),
            rebuild_age=merged.get("rebuild-age", 86400),
            build_timeout=merged.get("build-timeout", 28800),
            dib_cmd=merged.get("dib-cmd", "disk-image-create"),
            pause=merged.get("pause", False),
            username=merged.get("username", "zuul"),
            python_path=merged.get("python-path", "auto"),
            shell_type=merged.get("shell-type"),
            delete_after_upload=merged.get("delete-after-upload", False),
            keep_formats=list(merged.get("keep-formats", [])),
            metadata=merged["metadata"], parent=entry.get("parent"))
    return concrete, abstract


def _build_providers(raw: dict, config: Config, abstract: set[str],
                     problems: list[Problem]) -> None:
    # Imported here: driver packages import the schema helpers of this package.
    from nodepool import drivers
    for index, item in enumerate(raw.get("providers", [])):
        path = ("providers", index)
        driver_name = drivers.driver_name_for(item)
        driver = drivers.get_driver(driver_name)
        if driver is None:
            problems.append(Problem(path + ("driver",), f"unknown driver "
                                    f"{driver_name!r} (known: "
                                    f"{', '.join(drivers.known_drivers())})"))
            continue
        found = s.validate(driver.schema(), item, path)
        if found:
            problems.extend(found)
            continue
        context = s.BuildContext(labels=config.labels, diskimages=config.diskimages,
                                 abstract_diskimages=abstract, path=path,
                                 problems=problems)
        provider: Provider = driver.build(item, context)
        if provider.name in config.providers:
            problems.append(Problem(path + ("name",),
                                    f"duplicate provider name {provider.name!r}"))
        config.providers[provider.name] = provider
        if driver.capabilities.manages_images:
            for image_name in provider.diskimages:
                image = config.diskimages.get(image_name)
                if image is not None and provider.image_type not in image.formats:
                    image.formats = sorted(set(image.formats) | {provider.image_type})


def _build_tenant_limits(raw: dict, problems: list[Problem]) -> dict[str, TenantLimits]:
    limits: dict[str, TenantLimits] = {}
    for index, item in enumerate(raw.get("tenant-resource-limits", [])):
        name = item["tenant-name"]
        if name in limits:
            problems.append(Problem(("tenant-resource-limits", index, "tenant-name"),
                                    f"duplicate tenant {name!r}"))
        values = {TENANT_LIMIT_KEYS.get(k, k): val for k, val in item.items()
                  if k != "tenant-name"}
        limits[name] = TenantLimits(tenant_name=name, limits=values)
    return limits


def build_config(raw: dict, source: str | None = None) -> Config:
    """Validate a parsed main file and build the typed configuration."""
    problems = s.validate(s.top_level, raw)
    if problems:
        raise ConfigError(source, problems)
    config = Config()
    config.zookeeper_servers = _build_zookeeper(raw, problems)
    tls = raw.get("zookeeper-tls")
    if tls:
        config.zookeeper_tls = ZooKeeperTLS(cert=tls["cert"], key=tls["key"],
                                            ca=tls["ca"])
    config.zookeeper_timeout = float(raw.get("zookeeper-timeout", 10.0))
    web = raw.get("webapp", {})
    config.webapp = WebApp(port=web.get("port", 8005),
                           listen_address=web.get("listen_address", "0.0.0.0"))
    config.elements_dir = raw.get("elements-dir")
    config.images_dir = raw.get("images-dir")
    config.build_log_dir = raw.get("build-log-dir", "/var/log/nodepool/builds")
    config.build_log_retention = raw.get("build-log-retention", 7)
    config.max_hold_age = max(0, raw.get("max-hold-age", 0))
    config.labels = _build_labels(raw, problems)
    config.diskimages, abstract = _build_diskimages(raw, problems)
    _build_providers(raw, config, abstract, problems)
    config.tenant_resource_limits = _build_tenant_limits(raw, problems)
    if problems:
        raise ConfigError(source, problems)
    return config


def merge_secure(config: Config, raw: dict, source: str) -> None:
    """Apply the secure file (spec 4.11): ZooKeeper settings and env-vars."""
    problems = s.validate(s.secure_file, raw)
    if problems:
        raise ConfigError(source, problems)
    if raw.get("zookeeper-servers"):
        config.zookeeper_servers = _build_zookeeper(raw, problems)
    if "zookeeper-tls" in raw:
        tls = raw["zookeeper-tls"]
        config.zookeeper_tls = ZooKeeperTLS(cert=tls["cert"], key=tls["key"],
                                            ca=tls["ca"])
    for index, item in enumerate(raw.get("diskimages", [])):
        image = config.diskimages.get(item["name"])
        if image is None:
            problems.append(Problem(("diskimages", index, "name"),
                                    f"unknown diskimage {item['name']!r} (it must "
                                    "be a concrete diskimage of the main file)"))
            continue
        image.env_vars = {**image.env_vars, **item["env-vars"]}
    if problems:
        raise ConfigError(source, problems)


def load_config(path: str, secure_path: str | None = None,
                env: Mapping[str, str] | None = None) -> Config:
    """Load and validate; raises :class:`ConfigError` naming every problem."""
    path = os.path.abspath(os.path.expanduser(path))
    raw, mtime = read_yaml(path, env)
    config = build_config(raw, path)
    config.path = path
    config.mtimes[path] = mtime
    if secure_path:
        secure_path = os.path.abspath(os.path.expanduser(secure_path))
        secure_raw, secure_mtime = read_yaml(secure_path, env, allow_empty=True)
        merge_secure(config, secure_raw, secure_path)
        config.secure_path = secure_path
        config.mtimes[secure_path] = secure_mtime
    return config


def config_files_changed(config: Config) -> bool:
    """True when the main or secure file's mtime differs from the loaded one."""
    for path, mtime in config.mtimes.items():
        try:
            if os.stat(path).st_mtime_ns != mtime:
                return True
        except OSError:
            return True
    return False


def validate_file(path: str, secure_path: str | None = None) -> list[str]:
    """Problems found in the files, rendered for printing (empty: valid)."""
    try:
        load_config(path, secure_path)
    except ConfigError as exc:
        where = f"{exc.source}: " if exc.source else ""
        return [f"{where}{p}" for p in exc.problems]
    return []
