"""Quota arithmetic: resources used, needed and allowed (spec 4.10).

A :class:`Resources` maps resource names (``cores``, ``instances``, ``ram``
in MiB, ``volumes``, ``volume-gb`` and driver-specific keys) to amounts. A
missing key is 0 in a usage or need, and unlimited in a limit.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping

from nodepool.config.model import Pool, TenantLimits
from nodepool.zk.records import Node

UNLIMITED = math.inf


class Resources(dict):
    """Amounts by resource name; ``default`` answers for missing keys."""

    def __init__(self, values: Mapping[str, float] | None = None,
                 default: float = 0):
        super().__init__(values or {})
        self.default = default

    def get_amount(self, key: str) -> float:
        return self.get(key, self.default)

    def add(self, other: Mapping[str, float]) -> "Resources":
        default = self.default
        for key, value in other.items():
            if value.__class__ in (int, float):
                self[key] = self.get(key, default) + value
        return self

    def subtract(self, other: Mapping[str, float]) -> "Resources":
        default = self.default
        for key, value in other.items():
            if value.__class__ in (int, float):
                self[key] = self.get(key, default) - value
        return self

    def copy(self) -> "Resources":
        return Resources(dict(self), self.default)

    def fits(self, need: Mapping[str, float]) -> bool:
        """Whether ``need`` can be taken from what this (remaining) allows."""
        return all(self.get_amount(k) - v >= 0 for k, v in need.items()
                   if isinstance(v, (int, float)) and v > 0)

    def count_fitting(self, need: Mapping[str, float]) -> float:
        """How many times ``need`` fits in what this (remaining) allows
        (``UNLIMITED`` if nothing limits it)."""
        count = UNLIMITED
        for key, value in need.items():
            if isinstance(value, (int, float)) and value > 0:
                available = self.get_amount(key)
                if available != UNLIMITED:
                    count = min(count, max(0, math.floor(available / value)))
        return count

    def non_negative(self) -> bool:
        return all(v >= 0 for v in self.values())

    def exceeded(self, need: Mapping[str, float]) -> list[str]:
        return sorted(k for k, v in need.items()
                      if isinstance(v, (int, float)) and v > 0
                      and self.get_amount(k) - v < 0)


def limits(values: Mapping[str, float | None]) -> Resources:
    """A limit object: keys with None are unlimited (left out)."""
    return Resources({k: v for k, v in values.items() if v is not None},
                     default=UNLIMITED)


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
    total = Resources()
    for node in nodes:
        if node.resources:
            total.add(node.resources)
    return total


def total_need(needs: Iterable[Mapping[str, float]]) -> Resources:
    total = Resources()
    for need in needs:
        total.add(need)
    return total


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
