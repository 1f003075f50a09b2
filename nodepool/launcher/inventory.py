"""Registering the hosts of inventory drivers (static) as node records
(spec 5.4).

A driver without the ``launches_instances`` capability lists pre-existing
hosts (:meth:`Adapter.hosts`); each host has ``slots`` (the static driver's
``max-parallel-jobs``) and each free slot gets a ``ready`` node record. When
Zuul returns a node (``used``), the delete worker removes the record and the
slot is registered again with a fresh node. Hosts removed from the
configuration, and slots beyond the host's count, are retired. A
cluster-wide lock per provider keeps several launchers with the same provider
from registering a slot twice.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from nodepool.config.model import Pool
from nodepool.drivers.base import Host
from nodepool.worker import PeriodicWorker
from nodepool.zk import paths
from nodepool.zk.locks import Lock
from nodepool.zk.records import Node, NodeState

if TYPE_CHECKING:  # pragma: no cover
    from nodepool.launcher.launcher import ProviderManager

log = logging.getLogger("nodepool.launcher.inventory")

# The launcher name on registered nodes (upstream's, for the static driver).
LAUNCHER_NAME = "static driver"
# Records in these states hold no slot (they are on their way out or in).
NOT_HOLDING = {NodeState.DELETING, NodeState.DELETED}
RESYNC_INTERVAL = 30.0
# A host that failed its probe is not probed again before this many seconds,
# doubling on each failure up to the maximum: the probe blocks the
# registrar (and the provider's cluster-wide lock) for up to the host's
# timeout, and every deleted node or cleanup pass wakes the registrar.
RETRY_FIRST = 10.0
RETRY_MAX = 300.0


def identity(node: Node) -> tuple:
    return (node.hostname or node.external_id, node.username, node.connection_port)


class InventoryRegistrar(PeriodicWorker):
    def __init__(self, manager: "ProviderManager"):
        super().__init__(f"inventory-{manager.provider.name}", RESYNC_INTERVAL,
                         manager.launcher.client)
        self.manager = manager
        # host identity -> (host config, monotonic time of the next probe, delay)
        self._backoff: dict[tuple, tuple[Host, float, float]] = {}

    def start(self) -> None:
        self.wake.set()
        super().start()

    def run_once(self) -> None:
        self.sync()

    def host_for(self, node: Node) -> Host | None:
        adapter = self.manager.adapter
        for pool in self.manager.provider.pools.values():
            for host in adapter.hosts(pool):
                if host.identity == identity(node):
                    return host
        return None

    def sync(self) -> None:
        launcher = self.manager.launcher
        provider = self.manager.provider
        lock = Lock(launcher.client, f"{paths.ELECTIONS}/static-{provider.name}")
        if not lock.acquire(blocking=True, timeout=10):
            return
        try:
            launcher.nodes.barrier()
            existing: dict[tuple, list[Node]] = {}
            for node in launcher.nodes.nodes():
                if node.provider == provider.name and node.state not in NOT_HOLDING:
                    existing.setdefault(identity(node), []).append(node)
            for pool in provider.pools.values():
                for host in self.manager.adapter.hosts(pool):
                    self._sync_host(pool, host, existing.pop(host.identity, []))
            # Hosts no longer configured: retire their ready nodes.
            for nodes in existing.values():
                for node in nodes:
                    self.retire(node, "its host was removed from the configuration")
        finally:
            lock.release()

    def _sync_host(self, pool: Pool, host: Host, nodes: list[Node]) -> None:
        taken: set[int] = set()
        for node in sorted(nodes, key=lambda n: n.state_time):
            slot = node.slot if isinstance(node.slot, int) else None
            if slot is None or slot >= host.slots or slot in taken:
                self.retire(node, f"slot {slot} is beyond the host's {host.slots} "
                            "or taken")
                continue
            taken.add(slot)
        for slot in range(host.slots):
            if slot not in taken and not self.stopped:
                self.register(pool, host, slot)

    def waiting_to_retry(self, host: Host) -> bool:
        """Whether the host failed its last probe and its next one is not due
        (a changed host configuration is probed at once)."""
        entry = self._backoff.get(host.identity)
        if entry is None:
            return False
        configured, due, _ = entry
        if configured != host:
            del self._backoff[host.identity]
            return False
        return time.monotonic() < due

    def register(self, pool: Pool, host: Host, slot: int) -> None:
        if self.waiting_to_retry(host):
            return
        try:
            found = self.manager.adapter.describe_host(host)
        except Exception as exc:
            previous = self._backoff.get(host.identity)
            delay = min(previous[2] * 2, RETRY_MAX) if previous else RETRY_FIRST
            self._backoff[host.identity] = (host, time.monotonic() + delay, delay)
            log.warning("Host %s:%s is not usable, not registering it (next try in "
                        "%.0fs): %s", host.name, host.connection_port, delay, exc)
            return
        self._backoff.pop(host.identity, None)
        node = Node(state=NodeState.READY, provider=self.manager.provider.name,
                    pool=pool.name, type=list(host.labels), launcher=LAUNCHER_NAME,
                    external_id=found.external_id, hostname=host.name,
                    interface_ip=found.interface_ip, public_ipv4=found.public_ipv4,
                    public_ipv6=found.public_ipv6, username=found.username,
                    connection_port=found.connection_port,
                    connection_type=found.connection_type,
                    python_path=found.python_path, shell_type=found.shell_type,
                    host_keys=list(found.host_keys or []),
                    attributes=pool.node_attributes, slot=slot,
                    resources=dict(found.resources or {"instances": 1}))
        self.manager.launcher.store.create_node(node)
        log.info("Registered host %s:%s slot %s as node %s (%s)", host.name,
                 host.connection_port, slot, node.id, ",".join(host.labels))

    def retire(self, node: Node, why: str) -> None:
        """Send a ready node of this provider to deletion (not re-registered
        unless its host and slot are still configured)."""
        if self.manager.launcher.store.delete_node_if(node.id, lambda n: n.idle):
            log.info("Retiring node %s of host %s: %s", node.id, node.hostname, why)

    def reusable(self, node: Node) -> bool:
        """Liveness check before a node is handed out; a dead host is retired."""
        host = self.host_for(node)
        if host is None:
            return False
        if self.manager.adapter.alive(host):
            return True
        log.warning("Host %s:%s does not answer; retiring node %s",
                    host.name, host.connection_port, node.id)
        return False
