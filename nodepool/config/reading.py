"""Reading a configuration file safely: the bytes, the environment
references, the YAML.

Whatever sits at the configuration path, reading it returns promptly: only a
regular file of at most :data:`MAX_FILE_BYTES` is read (a FIFO would block a
reader forever, a device could be endless), it is opened non-blocking and
checked with ``fstat`` on the same descriptor. The YAML is parsed with limits
that keep hostile or broken input from hanging or crashing the loader: nesting
depth, the length of a number, and the size a document reaches once its
aliases are expanded.
"""

from __future__ import annotations

import os
import re
import stat
import time
from typing import Mapping

import yaml
from yaml.constructor import ConstructorError, SafeConstructor

from nodepool.config.schema import ConfigError, Problem, _describe

MAX_FILE_BYTES = 10 * 1024 * 1024
# No configuration nests anywhere near this; the composer recurses per level.
MAX_DEPTH = 100
# Digits (and signs, dots, exponents) in one YAML number; the largest sane
# value (a byte count) has 20.
MAX_NUMBER_CHARS = 64
# Values a document may expand to through aliases (a "billion laughs" file is
# small on disk but endless to walk or compare).
MAX_EXPANDED_NODES = 1_000_000

ENV_REFERENCE = re.compile(r"%\((NODEPOOL_[A-Za-z0-9_]*)\)")


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def read_text(path: str) -> tuple[str, int]:
    """The text of a regular file and its mtime (ns, taken before reading)."""
    for attempt in range(4):
        try:
            # O_NONBLOCK: opening a FIFO with no writer must not wait.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            # Editors may replace the file: give it a moment to reappear.
            if attempt == 3:
                raise ConfigError(path, ["file not found"]) from None
            time.sleep(0.5)
            continue
        except IsADirectoryError:
            raise ConfigError(path, ["is a directory, not a file"]) from None
        except PermissionError:
            raise ConfigError(path, ["permission denied"]) from None
        except OSError as exc:
            raise ConfigError(path, [f"cannot open: {exc.strerror}"]) from None
        try:
            return _read_regular(path, fd)
        finally:
            os.close(fd)
    raise AssertionError("unreachable")


def _read_regular(path: str, fd: int) -> tuple[str, int]:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        kind = _kind(info.st_mode)
        if kind == "a directory":
            raise ConfigError(path, ["is a directory, not a file"])
        raise ConfigError(path, [f"is {kind}, not a regular file"])
    if info.st_size > MAX_FILE_BYTES:
        raise ConfigError(path, [f"is {info.st_size} bytes, larger than the "
                                 f"{MAX_FILE_BYTES} bytes a configuration may have"])
    chunks = []
    total = 0
    try:
        while total <= MAX_FILE_BYTES:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as exc:
        raise ConfigError(path, [f"cannot read: {exc.strerror}"]) from None
    if total > MAX_FILE_BYTES:  # it grew while being read
        raise ConfigError(path, [f"is larger than the {MAX_FILE_BYTES} bytes a "
                                 "configuration may have"])
    data = b"".join(chunks)
    try:
        return data.decode("utf-8"), info.st_mtime_ns
    except UnicodeDecodeError as exc:
        raise ConfigError(path, [f"not valid UTF-8 text: {exc.reason} at byte "
                                 f"{exc.start}"]) from None


def substitute_env(text: str, env: Mapping[str, str]) -> tuple[str, list[Problem]]:
    """Replace ``%(NODEPOOL_X)`` with the variable's value.

    Only variables named NODEPOOL_* are substituted (so secrets of other
    programs cannot be pulled in). A reference to an unset variable stays as
    written, as upstream leaves it; it is returned as a warning with its line.
    """
    warnings = []

    def replace(match: re.Match) -> str:
        name = match.group(1)
        if name in env:
            return env[name]
        line = text.count("\n", 0, match.start()) + 1
        warnings.append(Problem((f"line {line}",), f"environment variable {name} is "
                                f"not set; the text {match.group(0)!r} is kept as "
                                "written"))
        return match.group(0)

    return ENV_REFERENCE.sub(replace, text), warnings


class _LimitedError(yaml.YAMLError):
    """A limit of :class:`LimitedLoader` was passed."""

    def __init__(self, message: str, mark):
        super().__init__(message)
        self.problem = message
        self.problem_mark = mark
        self.context = None


class LimitedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with bounds on depth, numbers and alias expansion."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0
        self._sizes: dict[int, int] = {}

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = self.anchors.get(event.anchor)
            if node is not None and id(node) not in self._sizes:
                raise _LimitedError(f"alias *{event.anchor} refers to a value that "
                                    "contains it", event.start_mark)
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _LimitedError(f"nested more than {MAX_DEPTH} levels deep",
                                self.peek_event().start_mark)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._count(node)
        return node

    def _count(self, node) -> None:
        if isinstance(node, yaml.ScalarNode):
            size = 1
        elif isinstance(node, yaml.SequenceNode):
            size = 1 + sum(self._sizes.get(id(item), 1) for item in node.value)
        else:
            size = 1 + sum(self._sizes.get(id(key), 1) + self._sizes.get(id(item), 1)
                           for key, item in node.value)
        if size > MAX_EXPANDED_NODES:
            raise _LimitedError(f"expands to more than {MAX_EXPANDED_NODES} values "
                                "through aliases", node.start_mark)
        self._sizes[id(node)] = size


def _check_number(node) -> None:
    if len(node.value) > MAX_NUMBER_CHARS:
        raise ConstructorError(None, None, f"a number of {len(node.value)} "
                               f"characters is too long (at most "
                               f"{MAX_NUMBER_CHARS})", node.start_mark)


def _construct_int(loader, node):
    _check_number(node)
    return SafeConstructor.construct_yaml_int(loader, node)


def _construct_float(loader, node):
    _check_number(node)
    return SafeConstructor.construct_yaml_float(loader, node)


LimitedLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
LimitedLoader.add_constructor("tag:yaml.org,2002:float", _construct_float)


class _LibyamlLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """libyaml's safe loader (ten times the pure-Python one on a big
    configuration), with the same bound on numbers; used only for documents
    :func:`_plain` found within the other limits."""


_LibyamlLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_LibyamlLoader.add_constructor("tag:yaml.org,2002:float", _construct_float)
_OPENING = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
_CLOSING = (yaml.MappingEndEvent, yaml.SequenceEndEvent)


def _plain(text: str) -> bool:
    """Whether libyaml may load the document: it parses, has no aliases
    (whose expansion LimitedLoader bounds) and nests at most MAX_DEPTH (its
    composer recurses in C). Anything else goes to LimitedLoader, which
    also words the errors."""
    if not getattr(yaml, "__with_libyaml__", False):
        return False
    depth = 0
    try:
        for event in yaml.parse(text, Loader=_LibyamlLoader):
            if isinstance(event, _OPENING):
                depth += 1
                if depth > MAX_DEPTH:
                    return False
            elif isinstance(event, _CLOSING):
                depth -= 1
            elif isinstance(event, yaml.AliasEvent):
                return False
    except yaml.YAMLError:
        return False
    return True


def parse_yaml(path: str, text: str, allow_empty: bool,
               hints: list[Problem] = ()) -> dict:
    """The top-level mapping of a document; ``hints`` (e.g. unset variables)
    are added to a syntax error, as they are often its cause."""
    loader = _LibyamlLoader(text) if _plain(text) else LimitedLoader(text)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        detail = f"{context}, {problem}" if context else problem
        # Beyond a limit, or a tag safe loading refuses: well-formed YAML, but
        # not something a configuration may hold.
        kind = "YAML refused" if isinstance(exc, (_LimitedError, ConstructorError)) \
            else "YAML syntax error"
        raise ConfigError(path, [Problem((where,), f"{kind}: {detail}")]
                          + list(hints)) from None
    except RecursionError:
        raise ConfigError(path, ["YAML nested too deeply to read"]) from None
    except ValueError as exc:  # e.g. Python's limit on integer digits
        raise ConfigError(path, [f"YAML value cannot be read: {exc}"]) from None
    finally:
        loader.dispose()
    if data is None:
        if allow_empty:
            return {}
        raise ConfigError(path, ["the file is empty"])
    if not isinstance(data, dict):
        raise ConfigError(path, [f"expected a mapping of configuration keys at the "
                                 f"top level, got {_describe(data)}"])
    return data


def read_yaml(path: str, env: Mapping[str, str] | None = None,
              allow_empty: bool = False) -> tuple[dict, int, list[Problem]]:
    """Parsed file, its mtime, and warnings (unset environment references)."""
    text, mtime = read_text(path)
    text, warnings = substitute_env(text, os.environ if env is None else env)
    return parse_yaml(path, text, allow_empty, warnings), mtime, warnings
