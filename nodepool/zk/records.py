"""Typed records stored in ZooKeeper, and their JSON encoding.

Every record here is wire-compatible with Zuul 14 and upstream Nodepool 11
(spec section 2): the same keys, the same defaults on read, unknown keys
tolerated. A record that cannot be decoded raises :class:`CorruptRecord`, which
callers log and skip; nothing here ever guesses at a broken record's meaning.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar

# CorruptRecord is part of this module's interface: its readers catch it.
from nodepool.zk.decoding import CorruptRecord  # noqa: F401
from nodepool.zk.decoding import (
    REQUIRED, decoder, field_decoder, field_defaults, is_number, load_object,
)


class RequestState:
    REQUESTED = "requested"
    PENDING = "pending"
    FULFILLED = "fulfilled"
    FAILED = "failed"
    ALL = (REQUESTED, PENDING, FULFILLED, FAILED)


class NodeState:
    INIT = "init"
    BUILDING = "building"
    TESTING = "testing"
    READY = "ready"
    IN_USE = "in-use"
    USED = "used"
    HOLD = "hold"
    DELETING = "deleting"
    FAILED = "failed"
    ABORTED = "aborted"
    DELETED = "deleted"
    ALL = (INIT, BUILDING, TESTING, READY, IN_USE, USED, HOLD, DELETING,
           FAILED, ABORTED, DELETED)


class BuildState:
    BUILDING = "building"
    READY = "ready"
    DELETING = "deleting"
    FAILED = "failed"
    ALL = (BUILDING, READY, DELETING, FAILED)


class UploadState:
    UPLOADING = "uploading"
    READY = "ready"
    DELETING = "deleting"
    FAILED = "failed"
    ALL = (UPLOADING, READY, DELETING, FAILED)


class ComponentState:
    INITIALIZING = "initializing"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"
    ALL = (INITIALIZING, RUNNING, PAUSED, STOPPED)


MIN_READY_REQUESTOR = "NodePool:min-ready"

# Keys we add to upstream's records (upstream Nodepool and Zuul ignore keys
# they do not know, and we write these only when they are set).
PROGRESS_KEY = "progress"                  # node: Progress
FAILED_PROVIDERS_KEY = "failed_providers"  # node and request: provider names
LAUNCHER_KEY = "launcher"                  # launcher and pool components


class LaunchOperation:
    LAUNCH = "launch"
    DELETE = "delete"


def string_list(value: Any) -> list[str]:
    """A list of strings read from an added key (anything else: empty)."""
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


@dataclass
class Progress:
    """Where a node's launch or delete stands, stored in the node record so
    that another launcher can carry it on when the one driving it dies.

    ``machine`` is the driver state machine's own snapshot (its step and
    cloud id); ``step`` is the launcher's: ``machine`` (the driver's
    machine runs), ``cleanup`` (a failed attempt's instance is being
    deleted) or ``scan`` (waiting for the host keys)."""

    launcher: str
    operation: str = LaunchOperation.LAUNCH
    step: str = "machine"
    attempt: int = 1
    # Epoch seconds: when the attempt (or the delete) started; the launch
    # timeout and the delete's patience count from here, in any launcher.
    started: float = field(default_factory=time.time)
    machine: dict = field(default_factory=dict)
    # A failed attempt's instance still to delete (step "cleanup").
    cleanup: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {"launcher": self.launcher, "operation": self.operation,
                "step": self.step, "attempt": self.attempt,
                "started": self.started, "machine": dict(self.machine),
                "cleanup": self.cleanup}

    @classmethod
    def from_value(cls, value: Any) -> "Progress | None":
        """The progress stored in a record; None when absent or malformed
        (a node whose progress cannot be read is not resumed)."""
        if not isinstance(value, dict):
            return None
        launcher, operation = value.get("launcher"), value.get("operation")
        step, attempt = value.get("step", "machine"), value.get("attempt", 1)
        started, machine = value.get("started"), value.get("machine") or {}
        if not (isinstance(launcher, str) and operation in (
                LaunchOperation.LAUNCH, LaunchOperation.DELETE)
                and isinstance(step, str) and is_number(attempt)
                and is_number(started) and isinstance(machine, dict)):
            return None
        return cls(launcher=launcher, operation=operation, step=step,
                   attempt=int(attempt), started=float(started),
                   machine=dict(machine), cleanup=value.get("cleanup"))


def new_event_id() -> str:
    return uuid.uuid4().hex


class Record:
    """Shared JSON plumbing for the record dataclasses.

    ``FIELDS`` maps each wire key to (attribute, kind, default-on-read). A
    default of ``REQUIRED`` makes a missing key a corrupt record. Keys not in
    ``FIELDS`` are kept in ``extra`` and written back, so a newer Zuul's
    additions survive our updates; ``DROP_KEYS`` are read and discarded.
    """

    REQUIRED: ClassVar[object] = REQUIRED
    FIELDS: ClassVar[tuple[tuple[str, str, str, Any], ...]] = ()
    DROP_KEYS: ClassVar[frozenset[str]] = frozenset()
    SORT_KEYS: ClassVar[bool] = False

    @classmethod
    def _decode_fields(cls, data: dict) -> dict[str, Any]:
        return field_decoder(cls)(data)

    @classmethod
    def _instantiate(cls, values: dict[str, Any]):
        """A record from decoded values, without the dataclass ``__init__``
        (a fifth of decoding a node); fields not in ``values`` get their
        defaults."""
        record = cls.__new__(cls)
        for name, default, factory in field_defaults(cls):
            if name not in values:
                values[name] = factory() if factory is not None else default
        record.__dict__.update(values)
        return record

    def _encode_fields(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(getattr(self, "extra", {}) or {})
        for key, attr, _kind, _default in self.FIELDS:
            value = getattr(self, attr)
            if isinstance(value, list):
                value = list(value)
            out[key] = value
        return out

    def to_dict(self) -> dict[str, Any]:
        return self._encode_fields()

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=self.SORT_KEYS).encode("utf-8")

    def copy(self):
        return dataclasses.replace(self, extra=dict(self.extra))


# -- node requests ---------------------------------------------------------

@dataclass(eq=False)
class NodeRequest(Record):
    """``/nodepool/requests/<PPP>-<SEQ10>`` (spec 2.1)."""

    FIELDS = (
        ("state", "state", "str", Record.REQUIRED),
        ("state_time", "state_time", "float", 0.0),
        ("declined_by", "declined_by", "strlist", list),
        ("node_types", "node_types", "strlist", list),
        ("nodes", "nodes", "strlist", list),
        ("reuse", "reuse", "bool", True),
        ("requestor", "requestor", "str?", None),
        ("requestor_data", "requestor_data", "any", None),
        ("provider", "provider", "str?", None),
        ("relative_priority", "relative_priority", "int", 0),
        ("event_id", "event_id", "str?", None),
        ("created_time", "created_time", "float?", None),
        ("tenant_name", "tenant_name", "str?", None),
    )
    DROP_KEYS = frozenset({"id"})

    id: str | None = None
    state: str = RequestState.REQUESTED
    state_time: float = field(default_factory=time.time)
    declined_by: list[str] = field(default_factory=list)
    node_types: list[str] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)
    reuse: bool = True
    requestor: str | None = None
    requestor_data: Any = None
    provider: str | None = None
    relative_priority: int = 0
    event_id: str | None = None
    created_time: float | None = None
    tenant_name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # ZooKeeper stat version of the data this object was read from (-1: new).
    version: int = -1

    @classmethod
    def from_dict(cls, request_id: str | None, data: dict) -> "NodeRequest":
        return cls(id=request_id, **cls._decode_fields(data))

    @classmethod
    @decoder
    def from_json(cls, request_id: str | None, raw: bytes | str | None,
                  version: int = -1) -> "NodeRequest | None":
        data = load_object(raw)
        if data is None:
            return None
        req = cls.from_dict(request_id, data)
        req.version = version
        return req

    def set_state(self, state: str) -> None:
        if state not in RequestState.ALL:
            raise ValueError(f"invalid request state {state!r}")
        self.state = state
        self.state_time = time.time()

    @property
    def priority(self) -> str:
        return request_priority(self.id)

    @property
    def sequence(self) -> str:
        return request_sequence(self.id)

    def sort_key(self) -> tuple[str, int, str]:
        """Order among requests: (precedence, relative_priority, sequence)."""
        # Requests are sorted on every scheduling pass: compute the id parts once.
        cached = self.__dict__.get("_sort_key")
        if cached is None or cached[0] != self.id or cached[1] != self.relative_priority:
            key = (self.priority, self.relative_priority, self.sequence)
            self.__dict__["_sort_key"] = cached = (self.id, self.relative_priority, key)
        return cached[2]

    @property
    def is_min_ready(self) -> bool:
        return self.requestor == MIN_READY_REQUESTOR

    @property
    def failed_providers(self) -> list[str]:
        """Providers that failed to launch a node for this request (ours;
        a key upstream and Zuul ignore): their pools leave it to others."""
        return string_list(self.extra.get(FAILED_PROVIDERS_KEY))

    def add_failed_provider(self, provider: str) -> None:
        failed = self.failed_providers
        if provider not in failed:
            self.extra[FAILED_PROVIDERS_KEY] = failed + [provider]

    def encoded_size(self) -> int:
        """Bytes of this request as we would write it back (computed once per
        object: a pass may ask for every open request)."""
        cached = self.__dict__.get("_encoded_size")
        if cached is None:
            cached = self.__dict__["_encoded_size"] = len(self.to_json())
        return cached


def request_priority(request_id: str | None) -> str:
    if not request_id:
        return ""
    return request_id.split("-", 1)[0]


def request_sequence(request_id: str | None) -> str:
    if not request_id or "-" not in request_id:
        return ""
    return request_id.split("-", 1)[1]


# -- nodes -----------------------------------------------------------------

def _hold_expiration(value: Any) -> int | None:
    """Zuul may write any type here; upstream coerces with int(), 0 on failure."""
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


@dataclass(eq=False)
class Node(Record):
    """``/nodepool/nodes/<SEQ10>`` (spec 2.2)."""

    FIELDS = (
        ("state", "state", "str", Record.REQUIRED),
        ("state_time", "state_time", "float", 0.0),
        ("created_time", "created_time", "float?", None),
        ("provider", "provider", "str?", None),
        ("pool", "pool", "str?", None),
        ("type", "type", "strlist", list),
        ("launcher", "launcher", "str?", None),
        ("allocated_to", "allocated_to", "str?", None),
        ("tenant_name", "tenant_name", "str?", None),
        ("requestor", "requestor", "str?", None),
        ("cloud", "cloud", "str?", None),
        ("region", "region", "str?", None),
        ("az", "az", "str?", None),
        ("host_id", "host_id", "str?", None),
        ("external_id", "external_id", "any", None),
        ("hostname", "hostname", "str?", None),
        ("interface_ip", "interface_ip", "str?", None),
        ("public_ipv4", "public_ipv4", "str?", None),
        ("private_ipv4", "private_ipv4", "str?", None),
        ("public_ipv6", "public_ipv6", "str?", None),
        ("connection_type", "connection_type", "str?", None),
        ("connection_port", "connection_port", "any", None),
        ("username", "username", "str?", "zuul"),
        ("python_path", "python_path", "str?", None),
        ("shell_type", "shell_type", "str?", None),
        ("host_keys", "host_keys", "strlist", list),
        ("image_id", "image_id", "str?", None),
        ("resources", "resources", "dict?", None),
        ("attributes", "attributes", "dict?", None),
        ("slot", "slot", "any", None),
        ("driver_data", "driver_data", "any", None),
        ("user_data", "user_data", "any", None),
        ("hold_job", "hold_job", "str?", None),
        ("comment", "comment", "str?", None),
        ("hold_expiration", "hold_expiration", "any", None),
        # Zuul hands it to jobs as ``nodepool.node_properties``; a mapping,
        # written empty (Zuul's own default) rather than left out.
        ("node_properties", "node_properties", "dict?", dict),
    )
    # Zuul adds "id" when it writes a node back; ssh_port is derived.
    DROP_KEYS = frozenset({"id", "ssh_port"})

    id: str | None = None
    state: str = NodeState.INIT
    state_time: float = field(default_factory=time.time)
    created_time: float | None = None
    provider: str | None = None
    pool: str | None = None
    type: list[str] = field(default_factory=list)
    launcher: str | None = None
    allocated_to: str | None = None
    tenant_name: str | None = None
    requestor: str | None = None
    cloud: str | None = None
    region: str | None = None
    az: str | None = None
    host_id: str | None = None
    external_id: Any = None
    hostname: str | None = None
    interface_ip: str | None = None
    public_ipv4: str | None = None
    private_ipv4: str | None = None
    public_ipv6: str | None = None
    connection_type: str | None = None
    connection_port: Any = 22
    username: str | None = "zuul"
    python_path: str | None = None
    shell_type: str | None = None
    host_keys: list[str] = field(default_factory=list)
    image_id: str | None = None
    resources: dict | None = None
    attributes: dict | None = None
    slot: Any = None
    driver_data: Any = None
    user_data: Any = None
    hold_job: str | None = None
    comment: str | None = None
    hold_expiration: int | None = None
    node_properties: dict | None = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    version: int = -1

    @classmethod
    def from_dict(cls, node_id: str | None, data: dict) -> "Node":
        kwargs = cls._decode_fields(data)
        if kwargs["connection_port"] is None:
            # Older writers only had ssh_port.
            kwargs["connection_port"] = data.get("ssh_port", 22)
        kwargs["hold_expiration"] = _hold_expiration(kwargs["hold_expiration"])
        kwargs["id"] = node_id
        return cls._instantiate(kwargs)

    @classmethod
    @decoder
    def from_json(cls, node_id: str | None, raw: bytes | str | None,
                  version: int = -1) -> "Node | None":
        data = load_object(raw)
        if data is None:
            return None
        node = cls.from_dict(node_id, data)
        node.version = version
        return node

    def to_dict(self) -> dict[str, Any]:
        out = self._encode_fields()
        out["ssh_port"] = self.connection_port
        return out

    def set_state(self, state: str) -> None:
        if state not in NodeState.ALL:
            raise ValueError(f"invalid node state {state!r}")
        self.state = state
        self.state_time = time.time()

    @property
    def labels(self) -> list[str]:
        return self.type

    @property
    def idle(self) -> bool:
        """Ready and allocated to no request."""
        return self.state == NodeState.READY and not self.allocated_to

    # Our additions, kept in ``extra`` so they are written only when set
    # (upstream Nodepool and Zuul ignore keys they do not know).

    @property
    def progress(self) -> "Progress | None":
        """Where the node's launch or delete stands (None: neither runs)."""
        return Progress.from_value(self.extra.get(PROGRESS_KEY))

    def set_progress(self, progress: "Progress | None") -> None:
        if progress is None:
            self.extra.pop(PROGRESS_KEY, None)
        else:
            self.extra[PROGRESS_KEY] = progress.to_dict()

    @property
    def failed_providers(self) -> list[str]:
        """Providers that failed to launch a node for this node's request."""
        return string_list(self.extra.get(FAILED_PROVIDERS_KEY))

    def set_failed_providers(self, providers: list[str]) -> None:
        if providers:
            self.extra[FAILED_PROVIDERS_KEY] = list(providers)
        else:
            self.extra.pop(FAILED_PROVIDERS_KEY, None)


# -- components ------------------------------------------------------------

@dataclass(eq=False)
class Component(Record):
    """``/nodepool/components/<kind>/<hostname><SEQ10>`` (spec 2.4)."""

    FIELDS = (
        ("hostname", "hostname", "str", ""),
        ("kind", "kind", "str", Record.REQUIRED),
        ("state", "state", "str", ComponentState.STOPPED),
        ("version", "version", "str?", None),
        ("model_api", "model_api", "int", 0),
    )
    SORT_KEYS = True

    kind: str = "launcher"
    hostname: str = ""
    state: str = ComponentState.STOPPED
    version: str | None = None
    model_api: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    # The znode name (hostname + sequence), once registered.
    znode: str | None = None
    version_stat: int = -1

    @classmethod
    @decoder
    def from_json(cls, znode: str | None, raw: bytes | str | None,
                  version: int = -1) -> "Component | None":
        data = load_object(raw)
        if data is None:
            return None
        target = PoolComponent if data.get("kind") == "pool" else Component
        obj = target(**target._decode_fields(data))
        obj.znode = znode
        obj.version_stat = version
        return obj


@dataclass(eq=False)
class PoolComponent(Component):
    """A pool worker's registration; Zuul reads ``id`` and ``supported_labels``."""

    FIELDS = Component.FIELDS + (
        ("id", "id", "str?", None),
        ("name", "name", "str?", None),
        ("provider_name", "provider_name", "str?", None),
        ("supported_labels", "supported_labels", "strlist", list),
        ("priority", "priority", "int", 100),
        ("paused", "paused", "bool", False),
    )

    kind: str = "pool"
    id: str | None = None
    name: str | None = None
    provider_name: str | None = None
    supported_labels: list[str] = field(default_factory=list)
    priority: int = 100
    paused: bool = False

    @property
    def launcher(self) -> str | None:
        """The id of the launcher process running this pool worker (ours, a
        key upstream ignores; None for an upstream launcher's pool): pools
        of one provider pool in several of our launchers share its work."""
        value = self.extra.get(LAUNCHER_KEY)
        return value if isinstance(value, str) else None
