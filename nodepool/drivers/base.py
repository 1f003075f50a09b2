"""The contract between the core and a cloud driver.

A driver is one package under ``nodepool/drivers/`` that exposes a
:class:`Driver` (its configuration schema, typed config, capabilities and
adapter factory) and is listed once in ``nodepool.drivers.REGISTRY``.

A driver only talks to its cloud. The launcher owns ZooKeeper, locking, quota
and node state; it asks the driver's :class:`Adapter` for state machines that
create and delete instances and advances them from a shared runner, so
``advance()`` must never block for long: slow cloud calls belong on the
adapter's own executor, with ``advance()`` checking their futures.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from nodepool.config.model import Pool, PoolLabel, Provider, ProviderDiskImage
from nodepool.resources import Resources

if TYPE_CHECKING:  # pragma: no cover
    from concurrent.futures import Future

    import voluptuous

    from nodepool.config.schema import BuildContext
    from nodepool.zk.records import Node, NodeRequest

# Metadata keys that mark an instance (or image) as nodepool's.
META_PROVIDER = "nodepool_provider_name"
META_NODE_ID = "nodepool_node_id"
META_POOL = "nodepool_pool_name"
META_IMAGE = "nodepool_image_name"
META_BUILD_ID = "nodepool_build_id"
META_UPLOAD_ID = "nodepool_upload_id"


class DriverError(Exception):
    """Base of the errors a driver raises; ``statsd_key`` names the result."""

    statsd_key = "error.unknown"


class QuotaError(DriverError):
    """The cloud refused for lack of quota: retry later, not a failure."""

    statsd_key = "error.quota"


class NotFound(DriverError):
    """The instance or resource does not exist (a delete counts it as done)."""


class RuntimeConfigurationError(DriverError):
    """The label can never work in this provider (e.g. unknown flavor)."""

    statsd_key = "error.nodepool"


class LaunchError(DriverError):
    statsd_key = "error.unknown"


class LaunchStatusError(LaunchError):
    """The instance went to an error state."""

    statsd_key = "error.status"


class LaunchNetworkError(LaunchError):
    statsd_key = "error.network"


class LaunchKeyscanError(LaunchError):
    statsd_key = "error.keyscan"


class LaunchTimeout(LaunchError):
    statsd_key = "error.servercreatetimeout"


class ImageUnavailable(LaunchError):
    statsd_key = "error.nodepool"


@dataclass
class Instance:
    """What a completed create reports about the instance."""

    external_id: Any
    interface_ip: str | None = None
    public_ipv4: str | None = None
    public_ipv6: str | None = None
    private_ipv4: str | None = None
    private_ipv6: str | None = None
    cloud: str | None = None
    region: str | None = None
    az: str | None = None
    host_id: str | None = None
    driver_data: Any = None
    slot: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    resources: dict[str, float] | None = None
    # Rarely set: overrides of what the image config says.
    username: str | None = None
    python_path: str | None = None
    shell_type: str | None = None
    # A port, or (Kubernetes-family drivers) the mapping of per-node
    # connection data Zuul's executor reads: API server, token, namespace.
    connection_port: int | dict | None = None
    connection_type: str | None = None
    host_keys: list[str] | None = None
    # The login fields above are the node's as they are, None included (a
    # slot of another node copies that node's); otherwise None means "as
    # the image says".
    copies_login: bool = False
    ready: bool = True
    deleted: bool = False


@dataclass
class Resource:
    """Something in the cloud that nodepool may have to delete when leaked."""

    type: str                # alphanumeric, used in metric names
    id: Any
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def plural_metric_name(self) -> str:
        return self.type + "s"


class StateMachine:
    """A create or delete in progress. ``advance()`` must not block.

    After each ``advance()`` the runner waits ``poll_delay`` seconds (or until
    the adapter wakes it) before advancing again.
    """

    def __init__(self):
        self.state = "start"
        self.external_id: Any = None
        self.complete = False
        self.start_time = time.monotonic()
        self.poll_delay = 0.0

    def advance(self) -> Instance | None:  # pragma: no cover - interface
        raise NotImplementedError

    def snapshot(self) -> dict:
        """What another launcher needs to carry this machine on after the
        one running it died (JSON-able; stored in the node record whenever
        it changes): by default the step and the cloud id."""
        return {"state": self.state, "external_id": self.external_id}

    def restore(self, saved: dict) -> None:
        """Continue from ``snapshot()`` taken in another launcher, or from
        ``{"external_id": ...}`` alone (the instance was found by its node
        id after a create whose id was never recorded). The default suits
        delete machines that may simply start over: the cloud id is kept,
        the step is not. Create machines of drivers whose capabilities say
        ``resumes_launches`` override it."""
        if saved.get("external_id") is not None:
            self.external_id = saved["external_id"]


class CreateMachine(StateMachine):
    """A create whose cloud call runs on the adapter's executor (``future``):
    what such machines of the cloud drivers hold in common."""

    def __init__(self, adapter, hostname: str, label: PoolLabel,
                 image_id: str | None, metadata: dict[str, str], az: str | None):
        super().__init__()
        self.adapter = adapter
        self.hostname = hostname
        self.label = label
        self.image_id = image_id
        self.metadata = metadata
        self.node_id = metadata.get(META_NODE_ID)
        self.az = az
        self.future: "Future | None" = None
        # When the cloud accepted the create (monotonic; 0: not yet).
        self.created_at = 0.0


def cloud_image_found(adapter: "Adapter", label: PoolLabel, find) -> bool:
    """``label_ready`` of drivers that look a cloud image up: whether
    ``find()`` (blocking) finds it; why not is logged. Labels of diskimages
    are ready (their uploads are the launcher's to check)."""
    if not label.cloud_image:
        return True
    try:
        find()
        return True
    except Exception as exc:
        logging.getLogger("nodepool.drivers").warning(
            "Provider %s: label %s: %s", adapter.provider.name, label.name, exc)
        return False


class BackingNodes(Protocol):
    """What the launcher offers a driver whose nodes live on other nodepool
    nodes (metastatic): backing nodes requested, held and given back through
    ZooKeeper as Zuul would, without the driver touching ZooKeeper. The
    reads come from the launcher's caches and never block; the writes are
    round trips, to be made off the runner threads."""

    def submit(self, label: str, requestor: str) -> str:
        """Request one node of ``label``; returns the request id."""

    def request(self, request_id: str) -> "NodeRequest | None":
        """The request as last seen (None: gone, or not seen yet)."""

    def claim(self, request_id: str, node_id: str, holder: str,
              user_data: str) -> "Node | None":
        """Take the fulfilled request's node for good: a lock that outlives
        the launcher (identified by ``holder``), ``user_data`` written and
        the node in use; the request is then deleted. None if the node is
        gone or cannot be locked."""

    def update_user_data(self, node_id: str, user_data: str) -> None:
        """Rewrite a held node's ``user_data``."""

    def release(self, node_id: str, holder: str) -> None:
        """Give a held node back: marked used (so it is deleted) and the
        ``holder``'s lock removed. A node already gone is fine."""

    def cancel(self, request_id: str) -> None:
        """Withdraw a request (fulfilled or not)."""

    def node(self, node_id: str) -> "Node | None":
        """A node as last seen."""

    def nodes(self) -> "list[Node]":
        """Every node as last seen."""

    def requests_of(self, requestor: str) -> "list[NodeRequest]":
        """Open requests made by ``requestor`` (as last seen)."""

    def holders(self, node_id: str) -> list[str]:
        """Fresh read: identifiers of the node's lock contenders, holder first."""


class Adapter:
    """One instance per configured provider.

    Threads: ``create_state_machine``/``delete_state_machine`` and the
    machines' ``advance()`` are called from the provider's runner threads and
    must not block. Everything else may block on the cloud and is called
    only from the launcher's background threads (cleanup, cloud snapshot
    refresh, the builder's upload workers), never from a pool worker or a
    cache thread.
    """

    def __init__(self, provider: Provider):
        self.provider = provider

    # -- required ----------------------------------------------------------

    def create_state_machine(self, hostname: str, label: PoolLabel,
                             image_external_id: str | None, metadata: dict[str, str],
                             request, az: str | None) -> StateMachine:
        raise NotImplementedError

    def delete_state_machine(self, external_id) -> StateMachine:
        raise NotImplementedError

    def list_instances(self) -> list[Instance]:
        """Every instance the credentials can see, ours or not."""
        raise NotImplementedError

    def list_resources(self) -> list[Resource]:
        """Every deletable resource, for leak detection."""
        return []

    def delete_resource(self, resource: Resource) -> None:
        raise NotImplementedError

    # -- optional ------------------------------------------------------------

    def cleanup_leaks(self, report) -> None:
        """Remove driver-specific leaks that carry no metadata (optional);
        ``report(plural_kind, count)`` counts them."""

    def quota_limits(self) -> Resources:
        return Resources(default=float("inf"))

    def quota_for_label(self, label: PoolLabel) -> Resources:
        return Resources({"instances": 1})

    def azs(self) -> list[str]:
        return []

    def label_ready(self, label: PoolLabel) -> bool:
        return True

    def capacity_key(self, label: PoolLabel) -> str:
        """What capacity errors are remembered by: the label's flavor, or
        whatever else the cloud runs out of (by default the label)."""
        return label.name

    def console_log(self, external_id) -> str | None:
        return None

    def upload_image(self, image_name: str, filename: str, image_format: str,
                     metadata: dict[str, str],
                     provider_image: ProviderDiskImage | None = None) -> str:
        """Upload a built image; ``provider_image`` is the provider's entry
        for it (its driver-specific settings). Returns the cloud's id."""
        raise NotImplementedError

    def delete_image(self, external_id: str) -> None:
        raise NotImplementedError

    # -- inventory drivers (capabilities.launches_instances is False) ---------

    def hosts(self, pool: Pool) -> list["Host"]:
        """The pre-existing hosts a pool hands out."""
        return []

    def describe_host(self, host: "Host") -> Instance:
        """Blocking: check a host can be handed out and say how to reach it
        (addresses, host keys); raises when it is not usable."""
        raise NotImplementedError

    def alive(self, host: "Host") -> bool:
        """Blocking but quick: whether a host may be handed out again."""
        return True

    def list_images(self) -> list[dict]:
        """Every image the cloud shows: ``{"id", "name", "properties"}``
        (for ``alien-image-list``); empty for drivers without images."""
        return []

    def attach_backing_nodes(self, service: BackingNodes) -> None:
        """Drivers with ``uses_backing_nodes``: the launcher's service, given
        once before the first state machine is asked for."""

    def reconfigure(self, provider: Provider) -> None:
        """Accept a changed provider config that needs no new connection."""
        self.provider = provider

    def stop(self) -> None:
        pass


@dataclass
class Host:
    """A pre-existing machine of an inventory driver's pool; each of its
    ``slots`` is one node record at a time."""

    name: str
    labels: list[str]
    username: str = "zuul"
    connection_type: str = "ssh"
    connection_port: int = 22
    slots: int = 1

    @property
    def identity(self) -> tuple[str, str, int]:
        return (self.name, self.username, self.connection_port)


@dataclass(frozen=True)
class Capabilities:
    """What the core may ask of a driver."""

    # False: the driver keeps a fixed inventory of hosts (Adapter.hosts)
    # instead of creating instances; pools hand back what they cannot serve.
    launches_instances: bool = True
    # The builder uploads diskimages to its providers.
    manages_images: bool = False
    # Adapter.quota_limits asks the cloud (otherwise only pool limits count).
    reports_quota: bool = False
    # Nodes live on other nodepool nodes, which the launcher requests and
    # holds for the driver (Adapter.attach_backing_nodes).
    uses_backing_nodes: bool = False
    # Create machines restore from a snapshot (StateMachine.restore), so a
    # launch another launcher started and left is carried on, not redone.
    resumes_launches: bool = False


class Driver:
    """A cloud driver as the core sees it; one instance per driver."""

    name: str = ""
    capabilities = Capabilities()

    def schema(self) -> "voluptuous.Schema":
        """Voluptuous schema of one ``providers[]`` entry of this driver (by
        default, of the keys ``provider_keys()`` returns)."""
        import voluptuous
        return voluptuous.Schema(self.provider_keys())

    def provider_keys(self) -> dict:
        """The keys of one ``providers[]`` entry, for the default ``schema()``."""
        raise NotImplementedError

    def build(self, raw: dict, ctx: "BuildContext") -> Provider:
        """The typed provider (a :class:`Provider` subclass) from validated
        data; reference problems go to ``ctx``."""
        raise NotImplementedError

    def make_adapter(self, provider: Provider) -> Adapter:
        raise NotImplementedError

    def connection_key(self, provider: Provider) -> tuple:
        """Settings whose change needs a new adapter (a new connection);
        other changes go to :meth:`Adapter.reconfigure`."""
        return (provider.driver,)
