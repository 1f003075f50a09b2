"""Decoding stored JSON into records: strict parsing, per-field type checks,
and a field reader generated once per record class. Everything that goes
wrong becomes a :class:`CorruptRecord`, which callers log and skip."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import orjson


class CorruptRecord(ValueError):
    """A znode's data could not be decoded into the expected record."""


# A FIELDS default that makes a missing key a corrupt record.
REQUIRED = object()


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _coerce(kind: str, key: str, value: Any) -> Any:
    """Check one decoded JSON value against the field kind; raise on mismatch."""
    if kind == "any":
        return value
    if kind == "str?":
        if value is None or isinstance(value, str):
            return value
    elif kind == "str":
        if isinstance(value, str):
            return value
    elif kind == "float":
        if is_number(value):
            return float(value)
    elif kind == "float?":
        if value is None:
            return None
        if is_number(value):
            return float(value)
    elif kind == "int":
        if is_number(value):
            return int(value)
    elif kind == "bool":
        if isinstance(value, bool):
            return value
    elif kind == "strlist":
        if value.__class__ is list and all(v.__class__ is str for v in value):
            return value[:]
        if isinstance(value, str):
            # Static nodes written by upstream may carry a bare label string.
            return [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
    elif kind == "dict?":
        if value is None or isinstance(value, dict):
            return value
    else:  # pragma: no cover - programming error
        raise AssertionError(f"unknown field kind {kind}")
    raise CorruptRecord(f"field {key!r}: expected {kind}, got {type(value).__name__}")


def load_object(raw: bytes | str | None) -> dict | None:
    """Parse znode data; empty data means 'absent' (returns None).

    With orjson (three times Python's json on node records, and decoding is
    on the hot path of every cache and of ``nodepool list``), which is
    strict where Python's json is lax: ``NaN``/``Infinity``, numbers that
    overflow to infinity, invalid UTF-8 and nesting deeper than 1024 are
    corrupt. (Integers beyond 64 bits read as floats.)"""
    if raw is None or not raw.strip():
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        reason = short_repr(str(exc), 200)
        if "UTF-8" in reason:
            raise CorruptRecord(f"not UTF-8: {reason}") from None
        raise CorruptRecord(f"not JSON: {reason}") from None
    if not isinstance(data, dict):
        raise CorruptRecord(f"expected a JSON object, got {type(data).__name__}")
    return data


def short_repr(value: Any, limit: int = 300) -> str:
    """``repr`` cut to ``limit`` characters, for log lines about bad data."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def decoder(from_json):
    """Make any failure to build a record from stored data a CorruptRecord
    (a crafted record must never crash a reader with another exception)."""

    @functools.wraps(from_json)
    def decode(cls, *args, **kwargs):
        try:
            return from_json(cls, *args, **kwargs)
        except CorruptRecord:
            raise
        except (ValueError, TypeError, OverflowError, RecursionError,
                AttributeError, KeyError) as exc:
            raise CorruptRecord(f"cannot decode: {type(exc).__name__}: "
                                f"{short_repr(str(exc), 200)}") from None
    return decode


# Per kind, the classes _coerce returns unchanged (None: any value is).
_EXACT: dict[str, tuple[type, ...] | None] = {
    "any": None, "str?": (str, type(None)), "str": (str,), "float": (float,),
    "float?": (float, type(None)), "int": (int,), "bool": (bool,),
    "dict?": (dict, type(None)), "strlist": (),
}


_MISSING = object()


@functools.cache
def _decode_plan(cls: type) -> tuple[tuple, frozenset[str]]:
    """A record class's FIELDS with each kind's exact classes, and every
    key it reads: worked out once, not for each record decoded."""
    plan = tuple((key, attr, kind, default, _EXACT[kind])
                 for key, attr, kind, default in cls.FIELDS)
    return plan, frozenset(f[0] for f in cls.FIELDS) | cls.DROP_KEYS


@functools.cache
def field_defaults(cls: type) -> tuple[tuple[str, Any, Any], ...]:
    """A record dataclass's fields with their default or default factory."""
    out = []
    for item in dataclasses.fields(cls):
        factory = None if item.default_factory is dataclasses.MISSING \
            else item.default_factory
        default = None if item.default is dataclasses.MISSING else item.default
        out.append((item.name, default, factory))
    return tuple(out)


@functools.cache
def field_decoder(cls: type) -> Callable[[dict], dict[str, Any]]:
    """A function that reads ``cls.FIELDS`` out of a decoded JSON object.

    Generated once per record class as straight-line code, one block per
    field: a loop over the field table costs twice as much, and every cache
    event and every row of ``nodepool list`` decodes a record."""
    plan, known = _decode_plan(cls)
    namespace: dict[str, Any] = {"MISSING": _MISSING, "coerce": _coerce,
                                 "CorruptRecord": CorruptRecord, "KNOWN": known}
    lines = ["def decode(data):", "    get = data.get", "    found = 0"]
    for index, (key, attr, kind, default, exact) in enumerate(plan):
        namespace[f"EXACT{index}"] = exact
        namespace[f"DEFAULT{index}"] = default
        value = f"v{index}"
        lines.append(f"    {value} = get({key!r}, MISSING)")
        lines.append(f"    if {value} is not MISSING:")
        lines.append("        found += 1")
        if exact is not None:
            # Values of exactly the expected type need no coercion.
            lines.append(f"        if {value}.__class__ not in EXACT{index}:")
            lines.append(f"            {value} = coerce({kind!r}, {key!r}, {value})")
        lines.append("    else:")
        if default is REQUIRED:
            message = f"missing required field {key!r}"
            lines.append(f"        raise CorruptRecord({message!r})")
        elif callable(default):
            lines.append(f"        {value} = DEFAULT{index}()")
        else:
            lines.append(f"        {value} = DEFAULT{index}")
    for key in sorted(cls.DROP_KEYS - {f[0] for f in plan}):
        lines.append(f"    if {key!r} in data:")
        lines.append("        found += 1")
    entries = ", ".join(f"{attr!r}: v{index}"
                        for index, (_key, attr, *_rest) in enumerate(plan))
    lines.append("    # Every key is known when as many were found as there are keys.")
    lines.append("    extra = {} if found == len(data) else "
                 "{k: v for k, v in data.items() if k not in KNOWN}")
    lines.append(f"    return {{{entries}{', ' if entries else ''}'extra': extra}}")
    exec(compile("\n".join(lines), f"<{cls.__name__} field decoder>", "exec"), namespace)
    return namespace["decode"]
