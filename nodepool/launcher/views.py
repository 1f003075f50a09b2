"""What every pool pass reads, derived once per change and shared.

A launcher with a hundred pools would otherwise sort the open requests and
index the registered pools a hundred times for every event, though all of
them see the same requests and the same pools; and every pool would look at
every open request, though most are for other pools' labels.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict

from nodepool.launcher.scheduler import PoolDirectory, order_requests
from nodepool.launcher.sharing import Membership, split_candidates
from nodepool.zk.cache import ComponentCache, RequestCache
from nodepool.zk.records import NodeRequest, PoolComponent


# (request, the pools that could serve it) - what a pass iterates over.
Candidacy = tuple[NodeRequest, list[PoolComponent]]

# While requests keep changing, the split by pool is redone at most this
# often (a pass reads a split at most this old; it re-checks each request).
SPLIT_INTERVAL = 0.02


class SchedulingViews:
    """Never holds its own lock while taking a cache's: cache listeners call
    in here with their cache locked."""

    def __init__(self, requests: RequestCache, components: ComponentCache):
        self._requests = requests
        self._components = components
        self._lock = threading.Lock()
        # (generation, derived value) pairs, replaced whole.
        self._ordered: tuple[int, list[NodeRequest]] = (-1, [])
        self._pools: tuple[int, list[PoolComponent], PoolDirectory, Membership] = \
            (-1, [], PoolDirectory([]), Membership([]))
        self._split_key: tuple[int, int] = (-1, -1)
        self._split_at = 0.0
        self._by_pool: dict[str, list[Candidacy]] = {}
        # Candidacies of pools that share a provider pool with other
        # launchers and are not the request's owner there.
        self._shared: dict[str, list[Candidacy]] = {}
        self._orphans: list[Candidacy] = []
        # (request id, declines) -> its candidacies with ownership, for the
        # pools generation of _owners_generation (hashing is not free).
        self._owners: dict[tuple[str, int], list] = {}
        self._owners_generation = -1

    def _ordered_now(self) -> tuple[int, list[NodeRequest]]:
        current = self._ordered
        if current[0] == self._requests.open_generation:
            return current
        generation, requests = self._requests.open_snapshot()
        fresh = (generation, order_requests(requests))
        with self._lock:
            if fresh[0] > self._ordered[0]:
                self._ordered = fresh
            return self._ordered

    def ordered_requests(self) -> list[NodeRequest]:
        """Open requests in scheduling order (read-only: shared)."""
        return self._ordered_now()[1]

    def _pools_now(self) -> tuple[int, list[PoolComponent], PoolDirectory, Membership]:
        current = self._pools
        if current[0] == self._components.generation:
            return current
        generation, components = self._components.pools_snapshot()
        fresh = (generation, components, PoolDirectory(components),
                 Membership(components))
        with self._lock:
            if fresh[0] > self._pools[0]:
                self._pools = fresh
            return self._pools

    def pools(self) -> tuple[list[PoolComponent], PoolDirectory]:
        """Registered pools and their label index (read-only: shared)."""
        _, components, directory, _ = self._pools_now()
        return components, directory

    def membership(self) -> Membership:
        """Which of our launchers serve which provider pools, now."""
        return self._pools_now()[3]

    def requests_for(self, pool_id: str) -> tuple[
            list[Candidacy], list[Candidacy], list[Candidacy], bool]:
        """The open requests this pool is a candidate for and owns, those
        it is a candidate for but another launcher's pool of the same
        provider pool owns (:mod:`nodepool.launcher.sharing`), and those no
        pool is a candidate for (every pool must decline them), each in
        scheduling order, with their candidates; and whether that split is
        current (if not, the caller looks again soon). A request may have
        changed since: callers re-check it."""
        order_generation, ordered = self._ordered_now()
        pools_generation, _, directory, _ = self._pools_now()
        key = (order_generation, pools_generation)
        with self._lock:
            now = time.monotonic()
            if key != self._split_key and (
                    now - self._split_at >= SPLIT_INTERVAL
                    or key[1] != self._split_key[1]):
                by_pool: dict[str, list[Candidacy]] = defaultdict(list)
                shared: dict[str, list[Candidacy]] = defaultdict(list)
                orphans: list[Candidacy] = []
                for request in ordered:
                    candidates = directory.candidates(request)
                    if not candidates:
                        orphans.append((request, candidates))
                    for component, owned in self._owned(request, candidates,
                                                        pools_generation):
                        target = by_pool if owned else shared
                        target[component.id or ""].append((request, candidates))
                self._by_pool, self._shared = dict(by_pool), dict(shared)
                self._orphans = orphans
                self._split_key, self._split_at = key, now
            return (self._by_pool.get(pool_id, []), self._shared.get(pool_id, []),
                    self._orphans, key == self._split_key)

    def _owned(self, request: NodeRequest, candidates: list[PoolComponent],
               generation: int) -> list:
        if len(candidates) < 2:
            return [(c, True) for c in candidates]
        if generation != self._owners_generation:
            self._owners.clear()
            self._owners_generation = generation
        key = (request.id or "", len(request.declined_by))
        found = self._owners.get(key)
        if found is None:
            if len(self._owners) > 100000:
                self._owners.clear()  # requests come and go
            found = self._owners[key] = split_candidates(request.id or "", candidates)
        return found

    def candidates(self, request: NodeRequest) -> list[PoolComponent]:
        return self.pools()[1].candidates(request)
