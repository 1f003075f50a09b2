"""Which pool takes which request: ordering, candidates, declines (spec 4.5-4.6).

Pure decisions over snapshots, so they can be tested without ZooKeeper and
computed once per pass instead of once per request.
"""

from __future__ import annotations

from collections import defaultdict
from operator import itemgetter
from typing import Callable, Iterable

from nodepool.config.model import Pool, Provider
from nodepool.launcher.quota import pool_limits
from nodepool.resources import Resources, total
from nodepool.zk.records import NodeRequest, PoolComponent, RequestState


def order_requests(requests: Iterable[NodeRequest]) -> list[NodeRequest]:
    """Priority order, fair between requestors.

    Upstream orders by (precedence, relative_priority, sequence). We keep that
    order for each requestor, but interleave requestors that share a
    precedence and relative priority, so one requestor's burst cannot starve
    another's requests (for Zuul alone, which is one requestor, the order is
    exactly upstream's).
    """
    # Open requests are ordered again whenever the open set changes: the
    # keys come from each request's cached sort_key, not from its id again.
    groups: dict[tuple, list[tuple[str, NodeRequest]]] = defaultdict(list)
    for request in requests:
        priority, relative, sequence = request.sort_key()
        groups[(priority, relative, request.requestor or "")].append((sequence, request))
    keyed = []
    for (priority, relative, _), members in groups.items():
        members.sort(key=itemgetter(0))
        for rank, (sequence, request) in enumerate(members):
            keyed.append(((priority, relative, rank, sequence), request))
    keyed.sort(key=itemgetter(0))
    return [request for _, request in keyed]


# Distinct (labels, declined-by) keys remembered by a PoolDirectory.
MEMO_LIMIT = 4096


class PoolDirectory:
    """The registered pools, indexed by label: a request's candidates cost
    what the pools offering its rarest label cost, not all pools."""

    def __init__(self, components: list[PoolComponent]):
        self.components = components
        self._labels = [frozenset(c.supported_labels) for c in components]
        self._by_label: dict[str, list[int]] = defaultdict(list)
        for index, labels in enumerate(self._labels):
            for label in labels:
                self._by_label[label].append(index)
        # Requests alike in labels and declines have the same candidates; the
        # directory lives as long as the set of pools does.
        self._memo: dict[tuple, list[PoolComponent]] = {}

    def candidates(self, request: NodeRequest) -> list[PoolComponent]:
        """Registered pools that offer every label and have not declined
        (shared between requests alike in both: read-only)."""
        declined = request.declined_by
        key = (tuple(request.node_types), frozenset(declined) if declined else None)
        found = self._memo.get(key)
        if found is None:
            if len(self._memo) >= MEMO_LIMIT:
                self._memo.clear()  # requests come and go; their keys with them
            found = self._memo[key] = self._candidates(set(key[0]), declined)
        return found

    def _candidates(self, wanted: set[str], declined: list[str]) -> list[PoolComponent]:
        if wanted:
            rarest = min(wanted, key=lambda label: len(self._by_label.get(label, ())))
            indexes = self._by_label.get(rarest, ())
        else:
            indexes = range(len(self.components))
        found = []
        for index in indexes:
            component = self.components[index]
            if component.id not in declined and wanted <= self._labels[index]:
                found.append(component)
        return found


def candidate_pools(request: NodeRequest, components: list[PoolComponent]
                    ) -> list[PoolComponent]:
    """Registered pools that offer every label and have not declined."""
    return PoolDirectory(components).candidates(request)


def skip_reason(request: NodeRequest, me: PoolComponent, my_labels: set[str],
                candidates: list[PoolComponent]) -> str | None:
    """Why this pool should leave the request to others (None: consider it)."""
    if request.provider and request.provider != me.provider_name and any(
            c.provider_name == request.provider for c in candidates):
        return f"prefers provider {request.provider}"
    if any(c.priority < me.priority and not c.paused and c.id != me.id
           for c in candidates):
        return "a higher-priority pool can serve it"
    if not set(request.node_types) <= my_labels and candidates:
        return "another pool offers all its labels"
    return None


def decline_reason(request: NodeRequest, provider: Provider, pool: Pool,
                   image_available: Callable[[str], bool],
                   label_quota: Callable[[str], Resources | None],
                   cloud_limits: Resources | None) -> str | None:
    """Why this pool can never serve the request (None: it can, some day)."""
    if pool.max_servers is not None and pool.max_servers <= 0:
        return "pool is disabled by max-servers"
    if provider.name in request.failed_providers:
        return "the provider failed to launch its nodes"
    missing = sorted({t for t in request.node_types if t not in pool.labels})
    if missing:
        return f"node type(s) {missing} not available"
    broken = sorted({t for t in request.node_types if label_quota(t) is None})
    if broken:
        return f"node type(s) {broken} not available (provider configuration)"
    if not all(image_available(t) for t in set(request.node_types)):
        return "images are not available"
    need = total(label_quota(t) for t in request.node_types)
    if not pool_limits(pool).fits(need):
        return "it would exceed the pool's quota"
    if cloud_limits is not None and not pool.ignore_provider_quota \
            and not cloud_limits.fits(need):
        return "it would exceed the cloud's quota"
    return None


def all_declined(request: NodeRequest, components: list[PoolComponent]) -> bool:
    """Upstream's rule: fail once every registered pool has declined."""
    return {c.id for c in components} <= set(request.declined_by)


def is_open(request: NodeRequest, my_id: str) -> bool:
    return request.state == RequestState.REQUESTED and my_id not in request.declined_by
