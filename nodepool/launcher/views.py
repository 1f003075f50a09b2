"""What every pool pass reads, derived once per change and shared.

A launcher with a hundred pools would otherwise sort the open requests and
index the registered pools a hundred times for every event, though all of
them see the same requests and the same pools.
"""

from __future__ import annotations

import threading

from nodepool.launcher.scheduler import PoolDirectory, order_requests
from nodepool.zk.cache import ComponentCache, RequestCache
from nodepool.zk.records import NodeRequest, PoolComponent


class SchedulingViews:
    def __init__(self, requests: RequestCache, components: ComponentCache):
        self._requests = requests
        self._components = components
        self._lock = threading.Lock()
        self._order_generation = -1
        self._ordered: list[NodeRequest] = []
        self._pools_generation = -1
        self._pools: tuple[list[PoolComponent], PoolDirectory] = ([], PoolDirectory([]))

    def ordered_requests(self) -> list[NodeRequest]:
        """Open requests in scheduling order (read-only: shared)."""
        with self._lock:
            if self._order_generation != self._requests.open_generation:
                generation, requests = self._requests.open_snapshot()
                self._ordered = order_requests(requests)
                self._order_generation = generation
            return self._ordered

    def pools(self) -> tuple[list[PoolComponent], PoolDirectory]:
        """Registered pools and their label index (read-only: shared)."""
        with self._lock:
            if self._pools_generation != self._components.generation:
                generation, components = self._components.pools_snapshot()
                self._pools = (components, PoolDirectory(components))
                self._pools_generation = generation
            return self._pools
