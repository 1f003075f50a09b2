"""How launchers serving the same provider pool share its work.

Any number of our launchers may run the same provider pool; each registers
its pool worker with its launcher's id (the ``launcher`` key of the pool
component). Who handles a piece of work - an open request, an orphaned
node, a node to delete - is decided by rendezvous (highest random weight)
hashing of the work's id over the live members: every launcher computes the
same owner from the same registry without talking to the others, and when a
launcher joins or leaves only the work it owned (or now owns) moves.

Ownership only says who tries first. Correctness never depends on it: locks
still decide who holds a request or node, and quota is enforced when nodes
are created (:mod:`nodepool.launcher.reservation`). Work its owner leaves
alone for ``TAKEOVER_SECONDS`` (a launcher hung but still registered, or
at quota) is tried by every member.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Iterable, Sequence

from nodepool.zk.records import PoolComponent

# Work older than this is tried by every member, not only by its owner.
TAKEOVER_SECONDS = 10.0


def weight(key: str, member: str) -> bytes:
    """The rendezvous weight of ``member`` for ``key``: the same in every
    process (Python's own hash is salted per process)."""
    return hashlib.blake2b(f"{key}\0{member}".encode(), digest_size=8).digest()


def owner(key: str, members: Iterable[str]) -> str | None:
    """The member that owns ``key`` (None when there is none)."""
    return max(members, key=lambda member: weight(key, member), default=None)


def peer_key(component: PoolComponent) -> tuple[str, str] | None:
    """Pools with the same key are one provider pool run by several of our
    launchers (None: an upstream launcher's pool, which shares nothing)."""
    if component.launcher is None:
        return None
    return (component.provider_name or "", component.name or "")


def split_candidates(key: str, candidates: Sequence[PoolComponent]
                     ) -> list[tuple[PoolComponent, bool]]:
    """Each candidate pool for a piece of work, with whether it owns it:
    among the pools of one provider pool only one does; any other pool
    (a different pool, or an upstream launcher's) owns its candidacy."""
    groups: dict[tuple[str, str], list[PoolComponent]] = defaultdict(list)
    for component in candidates:
        group = peer_key(component)
        if group is not None:
            groups[group].append(component)
    owners = set()
    for members in groups.values():
        if len(members) == 1:
            owners.add(members[0].id)
        else:
            owners.add(owner(key, (c.id or "" for c in members)))
    return [(c, peer_key(c) is None or c.id in owners) for c in candidates]


class Membership:
    """The live launchers serving each provider pool, from one snapshot of
    the registered pools (read-only once built)."""

    def __init__(self, components: Iterable[PoolComponent]):
        by_pool: dict[tuple[str, str], set[str]] = defaultdict(set)
        by_provider: dict[str, set[str]] = defaultdict(set)
        launchers: set[str] = set()
        for component in components:
            launcher = component.launcher
            if launcher is None:
                continue
            launchers.add(launcher)
            by_pool[(component.provider_name or "", component.name or "")].add(launcher)
            by_provider[component.provider_name or ""].add(launcher)
        self._by_pool = {k: sorted(v) for k, v in by_pool.items()}
        self._by_provider = {k: sorted(v) for k, v in by_provider.items()}
        self.launchers = frozenset(launchers)

    def serving(self, provider: str | None, pool: str | None = None) -> list[str]:
        """Launchers running the provider pool (or any pool of the provider;
        or any pool at all, without a provider)."""
        if provider is None:
            return sorted(self.launchers)
        if pool is None:
            return self._by_provider.get(provider, [])
        return self._by_pool.get((provider, pool), [])

    def owns(self, me: str, key: str, provider: str | None,
             pool: str | None = None) -> bool:
        """Whether launcher ``me`` owns ``key`` among those serving the
        provider (pool). A launcher not registered for it yet owns nothing
        unless nobody is registered."""
        members = self.serving(provider, pool)
        if not members:
            return True
        return owner(key, members) == me

    def is_live(self, launcher: str | None) -> bool:
        return launcher is not None and launcher in self.launchers
