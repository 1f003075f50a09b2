"""Quota: resources used, needed and allowed per pool, provider and tenant
(spec 4.10). The arithmetic itself is :mod:`nodepool.resources`."""

from __future__ import annotations

from typing import Iterable

from nodepool.config.model import Pool, TenantLimits
from nodepool.resources import Resources, limits, total
from nodepool.zk.records import Node


def pool_limits(pool: Pool) -> Resources:
    values: dict[str, float | None] = {
        "instances": pool.max_servers,
        "cores": pool.max_cores,
        "ram": pool.max_ram,
        "volumes": pool.max_volumes,
        "volume-gb": pool.max_volume_gb,
    }
    values.update(pool.max_resources)
    return limits(values)


def tenant_limits(tenant: TenantLimits) -> Resources:
    return limits(dict(tenant.limits))


def sum_resources(nodes: Iterable[Node]) -> Resources:
    return total(node.resources for node in nodes if node.resources)


class UsageIndex:
    """Resources in use per provider, pool and tenant, kept up to date
    incrementally from node cache events (a pass never sums over all nodes).
    Also indexes the ready, unallocated nodes of each pool for reuse."""

    def __init__(self, label_need=None):
        import threading
        self._lock = threading.Lock()
        # node id -> (provider, pool, tenant, resources)
        self._nodes: dict[str, tuple] = {}
        self._provider: dict[str, Resources] = {}
        self._pool: dict[tuple[str, str], Resources] = {}
        self._tenant: dict[str, Resources] = {}
        self._idle: dict[tuple[str, str], dict[str, Node]] = {}
        # (provider, label) -> Resources, for nodes written without resources.
        self.label_need = label_need

    def _need(self, node: Node):
        if node.resources:
            return node.resources
        if self.label_need is not None and node.type:
            return self.label_need(node.provider, node.type[0]) or {}
        return {}

    def update(self, node: Node | None, node_id: str) -> None:
        with self._lock:
            old = self._nodes.pop(node_id, None)
            if old is not None:
                provider, pool, tenant, need = old
                self._provider[provider].subtract(need)
                self._pool[(provider, pool)].subtract(need)
                if tenant:
                    self._tenant[tenant].subtract(need)
                self._idle.get((provider, pool), {}).pop(node_id, None)
            if node is None or node.provider is None:
                return
            need = dict(self._need(node))
            key = (node.provider, node.pool or "")
            self._nodes[node_id] = (node.provider, node.pool or "", node.tenant_name,
                                    need)
            self._provider.setdefault(node.provider, Resources()).add(need)
            self._pool.setdefault(key, Resources()).add(need)
            if node.tenant_name:
                self._tenant.setdefault(node.tenant_name, Resources()).add(need)
            if node.state == "ready" and not node.allocated_to:
                self._idle.setdefault(key, {})[node_id] = node

    def contains(self, node_id: str) -> bool:
        return node_id in self._nodes

    def provider_usage(self, provider: str) -> Resources:
        with self._lock:
            return self._provider.get(provider, Resources()).copy()

    def pool_usage(self, provider: str, pool: str) -> Resources:
        with self._lock:
            return self._pool.get((provider, pool), Resources()).copy()

    def tenant_usage(self) -> dict[str, Resources]:
        with self._lock:
            return {k: v.copy() for k, v in self._tenant.items()}

    def idle_nodes(self, provider: str, pool: str) -> list[Node]:
        with self._lock:
            return list(self._idle.get((provider, pool), {}).values())
