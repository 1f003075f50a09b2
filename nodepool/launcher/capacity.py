"""Avoiding a provider that keeps answering with capacity errors.

When a provider refuses creates for lack of capacity (a quota error from
the cloud) ``CAPACITY_ERRORS`` times for one flavor, no more than
``ERROR_WINDOW`` apart, its pools avoid the labels of that flavor for
``AVOID_SECONDS``: requests for them are left to (and held ones moved to)
another provider that serves them, when there is one. A successful launch
of the flavor clears the entry. Entries live in ZooKeeper
(:mod:`nodepool.zk.capacity`), so every launcher avoids the same, and
``nodepool info`` and statsd show them.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from kazoo.exceptions import KazooException

from nodepool.zk.capacity import CapacityCache, CapacityEntry, CapacityStore

if TYPE_CHECKING:  # pragma: no cover
    from nodepool.launcher.launcher import Launcher

log = logging.getLogger("nodepool.launcher.capacity")

CAPACITY_ERRORS = 3
ERROR_WINDOW = 300.0
AVOID_SECONDS = 600.0


def count_error(entry: CapacityEntry, label: str, launcher: str, message: str,
                now: float) -> None:
    """The policy, applied to the stored entry: one more error."""
    if now - entry.last_error > ERROR_WINDOW:
        entry.errors = 0
        entry.first_error = now
    entry.errors += 1
    entry.last_error = now
    entry.launcher = launcher
    entry.message = message[:500]
    if label not in entry.labels:
        entry.labels = entry.labels + [label]
    if entry.errors >= CAPACITY_ERRORS:
        entry.avoid_until = now + AVOID_SECONDS


def expired(entry: CapacityEntry, now: float) -> bool:
    """Nothing to remember any more: not avoided, no recent error."""
    return not entry.avoided(now) and now - entry.last_error > ERROR_WINDOW


class CapacityTracker:
    """The launcher's view of, and writes to, the capacity entries."""

    def __init__(self, launcher: "Launcher"):
        self.launcher = launcher
        self.store = CapacityStore(launcher.client)
        self.cache = CapacityCache(launcher.client)

    # -- readers (any thread; from the cache, never blocking) -----------------

    def avoided_labels(self, provider: str, now: float | None = None) -> set[str]:
        """Labels the provider's pools leave to others now: those of the
        flavors it keeps refusing."""
        now = time.time() if now is None else now
        entries = [e for e in self.cache.entries()
                   if e.provider == provider and e.avoided(now)]
        if not entries:
            return set()
        labels = {label for e in entries for label in e.labels}
        manager = self.launcher.managers.get(provider)
        if manager is not None:
            # Labels of an avoided flavor that never failed yet are avoided too.
            keys = {e.key for e in entries}
            for pool in manager.provider.pools.values():
                labels.update(label for label in pool.labels
                              if manager.view.capacity_key(label) in keys)
        return labels

    def not_avoiding(self, candidates, labels: set[str]):
        """The candidate pools whose provider does not avoid the labels."""
        if not self.cache.entries():
            return candidates
        now = time.time()
        return [c for c in candidates
                if not labels & self.avoided_labels(c.provider_name or "", now)]

    def alternatives(self, provider: str, labels: set[str],
                     candidates) -> bool:
        """Whether a pool of another provider, not avoiding any of the
        labels, is a candidate too."""
        now = time.time()
        return any(c.provider_name != provider and not (
            labels & self.avoided_labels(c.provider_name or "", now))
            for c in candidates)

    # -- writes (blocking: executor and cleanup threads) ---------------------------

    def record_error(self, provider: str, label: str, message: str) -> None:
        manager = self.launcher.managers.get(provider)
        key = manager.view.capacity_key(label) if manager is not None else label
        try:
            entry = self.store.change(provider, key, lambda e: count_error(
                e, label, self.launcher.id, message, time.time()))
        except (KazooException, RuntimeError) as exc:
            log.warning("Provider %s: cannot record a capacity error of %s: %r",
                        provider, key, exc)
            return
        self.launcher.stats.capacity_error(provider)
        if entry.avoided() and entry.errors == CAPACITY_ERRORS:
            log.warning("Provider %s: %d capacity errors for %s; its labels %s go "
                        "to other providers until %s", provider, entry.errors, key,
                        ",".join(entry.labels),
                        time.strftime("%H:%M:%S", time.localtime(entry.avoid_until)))

    def record_success(self, provider: str, label: str) -> None:
        manager = self.launcher.managers.get(provider)
        key = manager.view.capacity_key(label) if manager is not None else label
        entry = self.cache.get(provider, key)
        if entry is None:
            return
        try:
            if self.store.delete(entry):
                log.info("Provider %s: %s launched again; its capacity errors are "
                         "forgotten", provider, key)
        except KazooException as exc:
            log.warning("Provider %s: cannot clear the capacity errors of %s: %r",
                        provider, key, exc)

    def expire(self) -> None:
        """Remove entries with nothing left to say (cleanup)."""
        now = time.time()
        for entry in self.cache.entries():
            if expired(entry, now) and self.store.delete(entry):
                log.info("Provider %s: capacity errors of %s expired", entry.provider,
                         entry.key)
