"""Registering static hosts as node records (spec 5.4).

Each configured host has ``max-parallel-jobs`` slots; each free slot gets a
``ready`` node record. When Zuul returns a node (``used``), the delete worker
removes the record and the slot is registered again with a fresh node. Hosts
removed from the configuration, and slots beyond ``max-parallel-jobs``, are
retired. A cluster-wide lock per provider keeps several launchers with the
same static provider from registering a slot twice.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from nodepool.config.model import Pool, StaticNode
from nodepool.worker import PeriodicWorker
from nodepool.zk import paths
from nodepool.zk.locks import Lock
from nodepool.zk.records import Node, NodeState

if TYPE_CHECKING:  # pragma: no cover
    from nodepool.launcher.launcher import ProviderManager

log = logging.getLogger("nodepool.launcher.static")

LAUNCHER_NAME = "static driver"
# Records in these states hold no slot (they are on their way out or in).
NOT_HOLDING = {NodeState.DELETING, NodeState.DELETED}
RESYNC_INTERVAL = 30.0


def identity(node: Node) -> tuple:
    return (node.hostname or node.external_id, node.username, node.connection_port)


class StaticRegistrar(PeriodicWorker):
    def __init__(self, manager: "ProviderManager"):
        super().__init__(f"static-{manager.provider.name}", RESYNC_INTERVAL,
                         manager.launcher.client)
        self.manager = manager

    def start(self) -> None:
        self.wake.set()
        super().start()

    def run_once(self) -> None:
        self.sync()

    def host_for(self, node: Node) -> StaticNode | None:
        for pool in self.manager.provider.pools.values():
            for host in pool.nodes:
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
                for host in pool.nodes:
                    self._sync_host(pool, host, existing.pop(host.identity, []))
            # Hosts no longer configured: retire their ready nodes.
            for nodes in existing.values():
                for node in nodes:
                    self.retire(node, "its host was removed from the configuration")
        finally:
            lock.release()

    def _sync_host(self, pool: Pool, host: StaticNode, nodes: list[Node]) -> None:
        taken: set[int] = set()
        for node in sorted(nodes, key=lambda n: n.state_time):
            slot = node.slot if isinstance(node.slot, int) else None
            if slot is None or slot >= host.max_parallel_jobs or slot in taken:
                self.retire(node, f"slot {slot} is beyond max-parallel-jobs "
                            f"{host.max_parallel_jobs} or taken")
                continue
            taken.add(slot)
        for slot in range(host.max_parallel_jobs):
            if slot not in taken and not self.stopped:
                self.register(pool, host, slot)

    def register(self, pool: Pool, host: StaticNode, slot: int) -> None:
        adapter = self.manager.adapter
        try:
            keys = adapter.scan(host)
        except Exception as exc:
            log.warning("Static host %s:%s is not usable, not registering it: %s",
                        host.name, host.connection_port, exc)
            return
        ipv4, ipv6 = adapter.addresses(host.name)
        node = Node(state=NodeState.READY, provider=self.manager.provider.name,
                    pool=pool.name, type=list(host.labels), launcher=LAUNCHER_NAME,
                    external_id=host.name, hostname=host.name,
                    interface_ip=host.name, public_ipv4=ipv4, public_ipv6=ipv6,
                    username=host.username, connection_port=host.connection_port,
                    connection_type=host.connection_type,
                    python_path=host.python_path, shell_type=host.shell_type,
                    host_keys=keys, attributes=pool.node_attributes, slot=slot,
                    resources={"instances": 1})
        self.manager.launcher.store.create_node(node)
        log.info("Registered static host %s:%s slot %s as node %s (%s)", host.name,
                 host.connection_port, slot, node.id, ",".join(host.labels))

    def retire(self, node: Node, why: str) -> None:
        """Send a ready node of this provider to deletion (not re-registered
        unless its host and slot are still configured)."""
        if self.manager.launcher.store.delete_node_if(node.id, lambda n: n.idle):
            log.info("Retiring static node %s: %s", node.id, why)

    def reusable(self, node: Node) -> bool:
        """Liveness check before a node is handed out; a dead host is retired."""
        host = self.host_for(node)
        if host is None:
            return False
        if self.manager.adapter.alive(host):
            return True
        log.warning("Static host %s:%s does not answer; retiring node %s",
                    host.name, host.connection_port, node.id)
        return False
