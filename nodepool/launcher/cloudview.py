"""What a provider's cloud says, as snapshots that never make a reader wait.

The pool workers, min-ready and the node cache's usage index ask how much a
label needs (flavors), whether a label's cloud image exists, the cloud's
limits and its availability zones. Each answer costs cloud API calls that
can take seconds, or hang. A :class:`CloudView` asks them on a thread of its
own and publishes the answers; readers take the last snapshot, and a hung
cloud API delays nothing but the next snapshot of its own provider.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from nodepool.drivers.base import RuntimeConfigurationError
from nodepool.worker import PeriodicWorker
from nodepool.resources import Resources

if TYPE_CHECKING:  # pragma: no cover
    from nodepool.launcher.launcher import ProviderManager

log = logging.getLogger("nodepool.launcher.cloudview")

# How often limits (and what other tenants' servers use) are read again.
LIMITS_SECONDS = 60.0
# How often labels' needs and images are checked again.
LABELS_SECONDS = 300.0


class Unknown:
    """Not asked yet (the first answer is on its way)."""

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN = Unknown()


class CloudView(PeriodicWorker):
    def __init__(self, manager: "ProviderManager"):
        super().__init__(f"cloudview-{manager.provider.name}", LIMITS_SECONDS)
        self.manager = manager
        self._mutex = threading.Lock()
        # label -> resources one node uses, or None: it can never launch;
        # label -> whether its cloud image exists. Replaced, never changed in
        # place, so readers (every request of every pass) take no lock.
        # The Resources are shared: readers must not change them.
        self._needs: dict[str, Resources | None] = {}
        self._ready: dict[str, bool] = {}
        # label -> what capacity errors are remembered by (its flavor).
        self._capacity_keys: dict[str, str] = {}
        self._limits: Resources | None | Unknown = UNKNOWN
        self._zones: list[str] | None = None
        self._limits_at = 0.0
        self._labels_at = 0.0
        self._stale_labels = True
        self._stale_limits = True
        self._asking = False

    # -- readers (any thread; never block) -----------------------------------------

    def label_need(self, label: str) -> Resources | None | Unknown:
        need = self._needs.get(label, UNKNOWN)
        if need is UNKNOWN:
            self.refresh_labels()
        return need

    def image_ready(self, label: str) -> bool | Unknown:
        ready = self._ready.get(label, UNKNOWN)
        if ready is UNKNOWN:
            self.refresh_labels()
        return ready

    def capacity_key(self, label: str) -> str:
        """The label's flavor (or the label itself until the cloud said)."""
        return self._capacity_keys.get(label, label)

    def limits(self) -> Resources | None | Unknown:
        """Cloud limits less what servers not ours use; None: unlimited."""
        with self._mutex:
            limits = self._limits
        return limits.copy() if isinstance(limits, Resources) else limits

    def zones(self) -> list[str]:
        with self._mutex:
            return list(self._zones or [])

    # -- asking for fresh answers ----------------------------------------------------

    def refresh_labels(self) -> None:
        self._stale_labels = True
        self.wake.set()

    def refresh_limits(self) -> None:
        self._stale_limits = True
        self.wake.set()

    def forget(self) -> None:
        """The provider's configuration changed: ask everything again
        (readers keep the old answers meanwhile, except for removed labels)."""
        labels = self._labels()
        with self._mutex:
            self._needs = {k: v for k, v in self._needs.items() if k in labels}
            self._ready = {k: v for k, v in self._ready.items() if k in labels}
        self._stale_labels = self._stale_limits = True
        self.wake.set()

    @property
    def answering(self) -> bool:
        """Questions to the cloud asked or about to be."""
        return self._asking or self._stale_labels or self._stale_limits \
            or self.pending

    def stop(self) -> None:
        # The thread may be stuck in a hung cloud call: do not wait for it.
        self._stopped.set()
        self.wake.set()

    # -- the view's own thread ---------------------------------------------------

    def start(self) -> None:
        self.wake.set()
        super().start()

    def run_once(self) -> None:
        self._asking = True
        try:
            self._ask()
        finally:
            self._asking = False

    def _ask(self) -> None:
        now = time.monotonic()
        if self._stale_labels or now - self._labels_at > LABELS_SECONDS:
            self._stale_labels = False
            self._labels_at = now
            self._read_labels()
        if self.stopped:
            return
        if self._stale_limits or now - self._limits_at > LIMITS_SECONDS:
            self._stale_limits = False
            self._limits_at = now
            self._read_limits()

    def _labels(self) -> dict:
        labels = {}
        for pool in self.manager.provider.pools.values():
            for name, label in pool.labels.items():
                labels.setdefault(name, label)
        return labels

    def _read_labels(self) -> None:
        adapter = self.manager.adapter
        provider = self.manager.provider.name
        changed = False
        for name, label in self._labels().items():
            if self.stopped:
                return
            try:
                need = adapter.quota_for_label(label)
            except RuntimeConfigurationError as exc:
                log.error("Provider %s: label %s cannot be launched: %s",
                          provider, name, exc)
                need = None
            except Exception as exc:
                # Keep the last answer; ask again at the next pass.
                log.warning("Provider %s: cannot read what label %s needs: %s",
                            provider, name, exc)
                self._stale_labels = True
                continue
            ready = True if label.diskimage else adapter.label_ready(label)
            try:
                key = adapter.capacity_key(label) if need is not None else name
            except Exception:
                key = name
            with self._mutex:
                self._capacity_keys = {**self._capacity_keys, name: key}
                changed |= self._needs.get(name, UNKNOWN) != need \
                    or self._ready.get(name) != ready
                self._needs = {**self._needs, name: need}
                self._ready = {**self._ready, name: ready}
        if self._zones is None and self.manager.capabilities.launches_instances:
            try:
                zones = list(adapter.azs())
                with self._mutex:
                    self._zones = zones
            except Exception as exc:
                log.warning("Provider %s: cannot list availability zones: %s",
                            provider, exc)
        if changed:
            self.manager.wake()

    def _read_limits(self) -> None:
        manager = self.manager
        if not manager.capabilities.reports_quota:
            limits = None
        else:
            try:
                limits = self._unmanaged_subtracted(manager.adapter.quota_limits())
            except Exception as exc:
                log.warning("Provider %s: cannot read cloud quota: %s",
                            manager.provider.name, exc)
                self._stale_limits = True
                return
        with self._mutex:
            first = isinstance(self._limits, Unknown)
            self._limits = limits
        if first:
            manager.wake()

    def _unmanaged_subtracted(self, limits: Resources) -> Resources | None:
        if all(v == float("inf") for v in limits.values()) and \
                limits.default == float("inf"):
            return None
        name = self.manager.provider.name
        result = limits.copy()
        for instance in self.manager.adapter.list_instances():
            if (instance.metadata or {}).get("nodepool_provider_name") == name:
                continue  # ours (counted from node records) or a leak (cleaned up)
            result.subtract(instance.resources or {"instances": 1})
        return result
