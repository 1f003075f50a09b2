"""Voluptuous schemas for the configuration file, and validation problems.

The core schema covers the top level, labels, diskimages and tenant limits.
Each driver brings its provider schema (``nodepool.drivers``); providers
are validated against the schema of their own driver, so an error names the exact key path, e.g.
``providers[0].pools[1].labels[2].min-ram: expected an integer``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import voluptuous as v

# -- problems ----------------------------------------------------------------


def render_path(path: tuple | list) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


@dataclass(frozen=True)
class Problem:
    path: tuple
    message: str

    def __str__(self) -> str:
        if not self.path:  # about the whole file (unreadable, not YAML, ...)
            return self.message
        return f"{render_path(self.path)}: {self.message}"


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` says where and why."""

    def __init__(self, source: str | None, problems: list[Problem] | list[str]):
        self.source = source
        self.problems = [p if isinstance(p, Problem) else Problem((), p)
                         for p in problems]
        super().__init__(self.render())

    def render(self) -> str:
        where = f"{self.source}: " if self.source else ""
        if len(self.problems) == 1:
            return f"{where}{self.problems[0]}"
        lines = [f"{where}{len(self.problems)} problems:"]
        lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)

    def one_line(self) -> str:
        """The same, on one line (for a running daemon's log)."""
        where = f"{self.source}: " if self.source else ""
        return where + "; ".join(str(p) for p in self.problems)


# -- scalar validators with operator-friendly messages ------------------------


def Int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise v.Invalid(f"expected an integer, got {_describe(value)}")
    return value


def Number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise v.Invalid(f"expected a number, got {_describe(value)}")
    return float(value)


def FloatLike(value: Any) -> float:
    """A number, or a string holding one (upstream coerces with float())."""
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise v.Invalid(f"expected a number, got {_describe(value)}") from None
    else:
        number = Number(value)
    if not math.isfinite(number):
        raise v.Invalid(f"must be a finite number, got {value!r}")
    return number


def Timeout(value: Any) -> float:
    """Seconds to wait: a finite number above zero."""
    number = Number(value)
    if not math.isfinite(number) or number <= 0:
        raise v.Invalid(f"must be a positive number of seconds, got {value!r}")
    return value


def IntTimeout(value: Any) -> int:
    Int(value)
    if value <= 0:
        raise v.Invalid(f"must be a positive number of seconds, got {value!r}")
    return value


def NonNegativeIntTimeout(value: Any) -> int:
    """Seconds where 0 means "the default" (upstream ignores a 0)."""
    Int(value)
    if value < 0:
        raise v.Invalid(f"must not be negative, got {value!r}")
    return value


def Port(value: Any) -> int:
    Int(value)
    if not 1 <= value <= 65535:
        raise v.Invalid(f"must be a port number from 1 to 65535, got {value!r}")
    return value


def ListenPort(value: Any) -> int:
    """A port to listen on: 0 asks the system for a free one."""
    Int(value)
    if not 0 <= value <= 65535:
        raise v.Invalid(f"must be a port number from 0 to 65535, got {value!r}")
    return value


def Str(value: Any) -> str:
    if not isinstance(value, str):
        raise v.Invalid(f"expected a string, got {_describe(value)}")
    return value


def NonEmptyStr(value: Any) -> str:
    Str(value)
    if not value.strip():
        raise v.Invalid("must not be empty")
    return value


def Name(value: Any) -> str:
    """A name that becomes a ZooKeeper path part or a file name."""
    NonEmptyStr(value)
    if "/" in value or ".." in value:
        raise v.Invalid(f"must not contain '/' or '..', got {value!r}")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise v.Invalid(f"must not contain control characters, got {value!r}")
    return value


def Bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise v.Invalid(f"expected true or false, got {_describe(value)}")
    return value


def Map(value: Any) -> dict:
    if not isinstance(value, dict):
        raise v.Invalid(f"expected a mapping, got {_describe(value)}")
    return value


def StrMap(value: Any) -> dict:
    Map(value)
    for key, item in value.items():
        if not isinstance(key, str):
            raise v.Invalid(f"keys must be strings, got {_describe(key)}")
        if not isinstance(item, str):
            raise v.Invalid(f"value of {key!r} must be a string, got {_describe(item)}")
    return value


def StrOrInt(value: Any) -> str | int:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise v.Invalid(f"expected a string or integer, got {_describe(value)}")
    return value


def StrOrStrList(value: Any) -> list[str]:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(i, str) for i in value):
        return value
    raise v.Invalid(f"expected a string or a list of strings, got {_describe(value)}")


def ListOf(item_schema) -> Callable:
    """A list whose items are validated one by one (paths keep the index)."""
    inner = v.Schema([item_schema])

    def validate(value):
        if not isinstance(value, list):
            raise v.Invalid(f"expected a list, got {_describe(value)}")
        return inner(value)
    return validate


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"boolean {value}"
    if isinstance(value, (int, float)):
        return f"number {value}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


# -- core schema -----------------------------------------------------------------

zookeeper_server = {
    v.Required("host"): NonEmptyStr,
    "port": Port,
    "chroot": Str,
}

zookeeper_tls = {
    v.Required("cert"): Str,
    v.Required("key"): Str,
    v.Required("ca"): Str,
}

label = {
    v.Required("name"): NonEmptyStr,
    "min-ready": Int,
    "max-ready-age": Int,
}

diskimage = {
    v.Required("name"): Name,
    "abstract": Bool,
    "parent": Str,
    "dib-cmd": Str,
    "pause": Bool,
    "elements": ListOf(Str),
    "formats": ListOf(Str),
    "keep-formats": ListOf(Str),
    "delete-after-upload": Bool,
    "release": StrOrInt,
    "rebuild-age": Int,
    "build-timeout": NonNegativeIntTimeout,
    "env-vars": StrMap,
    "username": Str,
    "python-path": Str,
    "shell-type": Str,
    "metadata": Map,
}

tenant_limit = {
    v.Required("tenant-name"): NonEmptyStr,
    "max-servers": Int,
    "max-cores": Int,
    "max-ram": Int,
    "max-volumes": Int,
    "max-volume-gb": Int,
    v.Extra: Int,
}

webapp = {
    "port": ListenPort,
    "listen_address": Str,
}

top_level = v.Schema({
    "zookeeper-servers": ListOf(zookeeper_server),
    "zookeeper-tls": zookeeper_tls,
    "zookeeper-timeout": Timeout,
    "webapp": webapp,
    "labels": ListOf(label),
    "diskimages": ListOf(diskimage),
    # Each provider is checked against its driver's schema afterwards.
    "providers": ListOf(Map),
    "elements-dir": Str,
    "images-dir": Str,
    "build-log-dir": Str,
    "build-log-retention": Int,
    "max-hold-age": Int,
    "tenant-resource-limits": ListOf(tenant_limit),
})

# The keys of the secure file that are read; upstream ignores any other key,
# so the loader warns about them instead of failing.
secure_file = v.Schema({
    "zookeeper-servers": ListOf(zookeeper_server),
    "zookeeper-tls": zookeeper_tls,
    "diskimages": ListOf({v.Required("name"): NonEmptyStr,
                          v.Required("env-vars"): StrMap}),
}, extra=v.ALLOW_EXTRA)
SECURE_FILE_KEYS = ("zookeeper-servers", "zookeeper-tls", "diskimages")

# Keys every provider accepts, whatever its driver.
provider_common = {
    v.Required("name"): Name,
    "driver": Str,
    "max-concurrency": Int,
    "priority": Int,
}

# How a node of an image is reached, as cloud images (and some drivers'
# diskimages) say it.
image_connection = {
    "python-path": Str,
    "shell-type": Str,
    "connection-type": Str,
    "connection-port": Port,
}

# Keys every pool accepts, whatever its driver.
pool_common = {
    v.Required("name"): Name,
    "max-servers": Int,
    "priority": Int,
    "node-attributes": Map,
}


def operations_per_second(raw: dict, ctx: "BuildContext", default: float) -> float:
    """A provider's ``rate`` as operations per second (aws, gce, azure): a positive
    number, else a problem and the default."""
    rate = FloatLike(raw.get("rate", default))
    if rate <= 0:
        ctx.problem(("rate",), f"must be a positive number of operations per "
                    f"second, got {raw.get('rate')!r}")
        return default
    return rate


def check_diskimage_reference(ctx: "BuildContext", where: tuple, name: str) -> None:
    """A provider's ``diskimages[].name`` must name a concrete top-level
    diskimage (aws, azure)."""
    if name in ctx.abstract_diskimages:
        ctx.problem(where, f"diskimage {name!r} is abstract and cannot be uploaded")
    elif name not in ctx.diskimages:
        ctx.problem(where, f"unknown diskimage {name!r} (not defined in the "
                    "top-level diskimages)")


def check_cloud_image(ctx: "BuildContext", where: tuple, item: dict, provider,
                      specs: tuple[str, ...] = ()) -> None:
    """A cloud image names what it boots in exactly one of ``specs`` (drivers
    with several ways: azure, ibmvpc), and one listed twice keeps the later
    entry, loudly (every cloud driver)."""
    if specs:
        given = [k for k in specs if k in item]
        if len(given) != 1:
            ctx.problem(where, "exactly one of " + ", ".join(
                f"'{k}'" for k in specs) + " is required"
                + (f" (got {', '.join(given)})" if given else ""))
    name = item["name"]
    if name in provider.cloud_images:
        ctx.warn(where + ("name",), f"duplicate cloud-image {name!r}: this "
                 "later entry replaces the earlier one")


def check_label_references(ctx: "BuildContext", where: tuple, raw: dict, provider,
                           diskimages: bool = True) -> None:
    """A pool label's name is a top-level label, and what it boots (exactly
    one of its diskimage and cloud-image, where diskimages are offered) is
    one of its provider's."""
    name = raw["name"]
    if name not in ctx.labels:
        ctx.problem(where + ("name",), f"label {name!r} is not defined in the "
                    "top-level labels")
    if diskimages and ("diskimage" in raw) == ("cloud-image" in raw):
        ctx.problem(where, "exactly one of 'diskimage' or 'cloud-image' is required")
    image = raw.get("diskimage")
    if image is not None and image not in provider.diskimages:
        ctx.problem(where + ("diskimage",), f"diskimage {image!r} is not in this "
                    "provider's diskimages")
    cloud_image = raw.get("cloud-image")
    if cloud_image is not None and cloud_image not in provider.cloud_images:
        ctx.problem(where + ("cloud-image",), f"unknown cloud-image "
                    f"{cloud_image!r} (not in this provider's cloud-images)")


def validate(schema: v.Schema, data: Any, prefix: tuple = ()) -> list[Problem]:
    """Run a schema; return its errors as problems with full key paths."""
    try:
        schema(data)
    except v.MultipleInvalid as exc:
        return [_problem(err, prefix) for err in exc.errors]
    except v.Invalid as exc:
        return [_problem(exc, prefix)]
    return []


def _problem(err: v.Invalid, prefix: tuple) -> Problem:
    message = err.error_message
    if message == "extra keys not allowed":
        message = "unknown key"
    elif message == "required key not provided":
        message = "required key is missing"
    elif message.startswith("expected dict"):
        message = "expected a mapping"
    elif message.startswith("expected list"):
        message = "expected a list"
    return Problem(tuple(prefix) + tuple(err.path), message)


# -- what a driver gets to build its provider ---------------------------------


@dataclass
class BuildContext:
    """What a driver needs to check references while building a provider."""

    labels: dict
    diskimages: dict            # concrete diskimages by name
    abstract_diskimages: set
    path: tuple                 # e.g. ("providers", 2)
    problems: list
    # Things upstream accepts that we load but the operator should know about.
    warnings: list = field(default_factory=list)

    def problem(self, subpath: tuple, message: str) -> None:
        self.problems.append(Problem(self.path + tuple(subpath), message))

    def warn(self, subpath: tuple, message: str) -> None:
        self.warnings.append(Problem(self.path + tuple(subpath), message))

    def add_pool(self, pools: dict, pool, index: int) -> None:
        """Add the pool built from ``pools[index]`` of the provider entry.
        Upstream keeps the later of two pools of one name; so do we, loudly."""
        if pool.name in pools:
            self.warn(("pools", index, "name"), f"duplicate pool name {pool.name!r}: "
                      "this later entry replaces the earlier one")
            del pools[pool.name]
        pools[pool.name] = pool

    def add_labels(self, pool, raw_labels: list, build, where: tuple) -> None:
        """Add ``build(raw_label, path)`` of each entry to the pool (None: not
        offered here); a label listed twice keeps the later entry, loudly."""
        for index, item in enumerate(raw_labels):
            here = where + ("labels", index)
            label = build(item, here)
            if label is None:
                continue
            if label.name in pool.labels:
                self.warn(here + ("name",), f"label {label.name!r} is listed twice "
                          "in this pool: this later entry replaces the earlier one")
            pool.labels[label.name] = label
