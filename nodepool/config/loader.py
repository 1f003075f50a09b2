"""Read, check and build the configuration (spec part A, section 4).

``load_config`` is the only way in: it reads the file safely (``reading``),
substitutes ``%(NODEPOOL_*)`` environment references, parses the YAML,
validates every key against the core and driver schemas, checks all cross
references (labels, diskimages, parents, cloud images, duplicates) and builds
typed objects. Every problem found is reported at once, each naming its key
path; nothing is half-loaded.

What upstream Nodepool accepts loads here too; where upstream silently does
something surprising with it (a later duplicate replaces an earlier one, a
label that can never be launched), the loaded config carries a warning.
"""

from __future__ import annotations

import logging
import os
import stat
from typing import Any, Mapping

from nodepool.config import schema as s
from nodepool.config.model import (
    Config, DiskImage, Label, Provider, TenantLimits, WebApp,
)
from nodepool.config.reading import (  # noqa: F401 (substitute_env is public)
    read_yaml, substitute_env,
)
from nodepool.config.schema import ConfigError, Problem
from nodepool.zk.client import DEFAULT_PORT, ZooKeeperServer, ZooKeeperTLS

log = logging.getLogger("nodepool.config")

# Tenant limit keys -> resource names used in quota arithmetic.
TENANT_LIMIT_KEYS = {
    "max-servers": "instances",
    "max-cores": "cores",
    "max-ram": "ram",
    "max-volumes": "volumes",
    "max-volume-gb": "volume-gb",
}


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


def _build_labels(raw: dict, warnings: list[Problem]) -> dict[str, Label]:
    labels: dict[str, Label] = {}
    for index, item in enumerate(raw.get("labels", [])):
        name = item["name"]
        if name in labels:
            # Upstream keeps the last definition; so do we.
            warnings.append(Problem(("labels", index, "name"),
                                    f"duplicate label {name!r}: this later entry "
                                    "replaces the earlier one"))
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
            # An empty username means the default, as upstream reads it.
            username=merged.get("username") or "zuul",
            python_path=merged.get("python-path", "auto"),
            shell_type=merged.get("shell-type"),
            delete_after_upload=merged.get("delete-after-upload", False),
            keep_formats=list(merged.get("keep-formats", [])),
            metadata=merged["metadata"], parent=entry.get("parent"))
    return concrete, abstract


def _build_providers(raw: dict, config: Config, abstract: set[str],
                     problems: list[Problem], warnings: list[Problem]) -> None:
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
                                 problems=problems, warnings=warnings)
        provider: Provider = driver.build(item, context)
        if provider.name in config.providers:
            # Upstream keeps the later provider; so do we, loudly.
            warnings.append(Problem(path + ("name",), f"duplicate provider name "
                                    f"{provider.name!r}: this later entry replaces "
                                    "the earlier one"))
            del config.providers[provider.name]
        config.providers[provider.name] = provider
        if driver.capabilities.manages_images:
            for image_name in provider.diskimages:
                image = config.diskimages.get(image_name)
                if image is not None and provider.image_type not in image.formats:
                    image.formats = sorted(set(image.formats) | {provider.image_type})


def _build_tenant_limits(raw: dict, warnings: list[Problem]
                         ) -> dict[str, TenantLimits]:
    limits: dict[str, TenantLimits] = {}
    for index, item in enumerate(raw.get("tenant-resource-limits", [])):
        name = item["tenant-name"]
        if name in limits:
            warnings.append(Problem(("tenant-resource-limits", index, "tenant-name"),
                                    f"duplicate tenant {name!r}: this later entry "
                                    "replaces the earlier one"))
        values = {TENANT_LIMIT_KEYS.get(k, k): val for k, val in item.items()
                  if k != "tenant-name"}
        limits[name] = TenantLimits(tenant_name=name, limits=values)
    return limits


def build_config(raw: dict, source: str | None = None) -> Config:
    """Validate a parsed main file and build the typed configuration."""
    problems = s.validate(s.top_level, raw)
    if problems:
        raise ConfigError(source, problems)
    warnings: list[Problem] = []
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
    config.labels = _build_labels(raw, warnings)
    config.diskimages, abstract = _build_diskimages(raw, problems)
    _build_providers(raw, config, abstract, problems, warnings)
    config.tenant_resource_limits = _build_tenant_limits(raw, warnings)
    if problems:
        raise ConfigError(source, problems)
    config.warnings = _render(source, warnings)
    return config


def _render(source: str | None, found: list[Problem]) -> list[str]:
    where = f"{source}: " if source else ""
    return [f"{where}{p}" for p in found]


def merge_secure(config: Config, raw: dict, source: str) -> None:
    """Apply the secure file (spec 4.11): ZooKeeper settings and env-vars."""
    problems = s.validate(s.secure_file, raw)
    if problems:
        raise ConfigError(source, problems)
    # Upstream reads only these keys and ignores the rest.
    config.warnings += _render(source, [
        Problem((key,), "unknown key in the secure file, ignored (only "
                f"{', '.join(s.SECURE_FILE_KEYS)} are read from it)")
        for key in raw if key not in s.SECURE_FILE_KEYS])
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
                env: Mapping[str, str] | None = None, check_files: bool = True,
                report_warnings: bool = True) -> Config:
    """Load and validate; raises :class:`ConfigError` naming every problem.

    ``check_files``: also check that the files the configuration names and
    needs at start-up (the ZooKeeper TLS certificates) are there.
    ``report_warnings``: log the warnings (``Config.warnings``) at WARNING.
    """
    path = os.path.abspath(os.path.expanduser(path))
    raw, mtime, env_warnings = read_yaml(path, env)
    config = build_config(raw, path)
    config.warnings[:0] = _render(path, env_warnings)
    config.path = path
    config.mtimes[path] = mtime
    servers_given = "zookeeper-servers" in raw
    config.zookeeper_tls_source = path
    if secure_path:
        secure_path = os.path.abspath(os.path.expanduser(secure_path))
        secure_raw, secure_mtime, env_warnings = read_yaml(secure_path, env,
                                                           allow_empty=True)
        config.warnings += _render(secure_path, env_warnings)
        merge_secure(config, secure_raw, secure_path)
        servers_given = servers_given or "zookeeper-servers" in secure_raw
        if "zookeeper-tls" in secure_raw:
            config.zookeeper_tls_source = secure_path
        config.secure_path = secure_path
        config.mtimes[secure_path] = secure_mtime
    if servers_given and not config.zookeeper_servers:
        raise ConfigError(path, [Problem(("zookeeper-servers",),
                                         "must list at least one server")])
    if check_files and config.zookeeper_tls is not None:
        missing = _unreadable_tls_files(config.zookeeper_tls)
        if missing:
            raise ConfigError(config.zookeeper_tls_source, missing)
    if report_warnings:
        for warning in config.warnings:
            log.warning("Configuration warning: %s", warning)
    return config


def _unreadable_tls_files(tls: ZooKeeperTLS) -> list[Problem]:
    found = []
    for key in ("cert", "key", "ca"):
        file = getattr(tls, key)
        try:
            info = os.stat(file)
        except FileNotFoundError:
            found.append(Problem(("zookeeper-tls", key), f"file {file!r} not found"))
            continue
        except OSError as exc:
            found.append(Problem(("zookeeper-tls", key),
                                 f"file {file!r}: {exc.strerror}"))
            continue
        if not stat.S_ISREG(info.st_mode):
            found.append(Problem(("zookeeper-tls", key),
                                 f"{file!r} is not a regular file"))
        elif not os.access(file, os.R_OK):
            found.append(Problem(("zookeeper-tls", key),
                                 f"file {file!r} is not readable (permission denied)"))
    return found


def config_files_changed(config: Config) -> bool:
    """True when the main or secure file's mtime differs from the loaded one."""
    for path, mtime in config.mtimes.items():
        try:
            if os.stat(path).st_mtime_ns != mtime:
                return True
        except OSError:
            return True
    return False


def validate_file(path: str, secure_path: str | None = None,
                  check_files: bool = True) -> tuple[list[str], list[str]]:
    """Problems and warnings found in the files, rendered for printing (no
    problems: valid). ``check_files=False`` leaves out the files the
    configuration names (TLS certificates), for checks away from the hosts."""
    try:
        config = load_config(path, secure_path, check_files=False,
                             report_warnings=False)
    except ConfigError as exc:
        return _render(exc.source, exc.problems), []
    warnings = list(config.warnings)
    if check_files and config.zookeeper_tls is not None:
        # A daemon or command would refuse to start: say so now, before a
        # deployment rather than at it.
        problems = _render(config.zookeeper_tls_source,
                           _unreadable_tls_files(config.zookeeper_tls))
        if problems:
            return problems, warnings
    return [], warnings
