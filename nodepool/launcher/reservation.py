"""Reserving quota before the cloud call, exactly, among any number of
launchers sharing a provider.

A node record is the reservation: it carries the resources the node will
use, and usage is summed from the records in ZooKeeper (the node cache's
index), never from one launcher's memory. What makes it exact is the order
in which records are created. Each provider has a fence znode; a launcher

1. reads the fence's version,
2. brings its node cache up to date (a barrier: every record created before
   that version is then in the cache),
3. checks the new nodes against the pool's limits and the cloud's, and
4. creates them and moves the fence on in one transaction, conditioned on
   the version read in step 1.

If another launcher created nodes of the provider in between, the
transaction fails and the round starts again: two launchers can never both
take the last instance. Deletions need no fence (a view that misses one
only errs on the safe side).

``tenant-resource-limits`` span providers, so a tenant with limits has a
fence of its own: a round that creates nodes for such a tenant reads that
fence too and moves it in the same transaction, which orders the tenant's
creations across every provider and launcher.

Each provider's :class:`ReservationDesk` batches the asks of all pools of
this launcher into one round (one fence read, one barrier, one
transaction), so a burst costs a few round trips per batch, not per node.
An ask is all or nothing: a request's nodes are created together or not at
all, so partly served requests never hold quota waiting for the rest.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from nodepool.config.model import Pool
from nodepool.launcher.quota import pool_limits, tenant_limits
from nodepool.resources import Resources, total
from nodepool.zk import paths
from nodepool.zk.records import Node

if TYPE_CHECKING:  # pragma: no cover
    from nodepool.launcher.launcher import Launcher, ProviderManager

log = logging.getLogger("nodepool.launcher.reservation")

# Nodes created by one transaction at most (a node record is ~1.5 KB; the
# transaction must stay well below ZooKeeper's 1 MiB request limit).
MAX_BATCH_NODES = 200
# Rounds lost to other launchers before an ask is given up for now (it is
# asked again on the pool's next pass).
MAX_ROUNDS = 50
BARRIER_TIMEOUT = 10.0


class ReservationFailed(Exception):
    """The desk could not decide (ZooKeeper out of reach, cache behind)."""


@dataclass(eq=False)
class Ask:
    """Nodes one request needs created together in one pool."""

    pool: Pool
    nodes: list[Node]
    done: threading.Event = field(default_factory=threading.Event)
    granted: bool = False
    error: Exception | None = None

    @property
    def need(self) -> Resources:
        return total(node.resources or {} for node in self.nodes)

    @property
    def tenant(self) -> str | None:
        """The request's tenant (every node of an ask has it)."""
        return self.nodes[0].tenant_name if self.nodes else None


class ReservationDesk:
    """Creates one provider's node records, only while they fit."""

    def __init__(self, launcher: "Launcher", manager: "ProviderManager"):
        self.launcher = launcher
        self.manager = manager
        self._asks: list[Ask] = []
        self._cv = threading.Condition()
        self._stopped = False
        # For the bench and the tests: rounds lost to another launcher.
        self.conflicts = 0
        self._thread = threading.Thread(
            target=self._run, daemon=True,
            name=f"reservations-{manager.provider.name}")
        self._thread.start()

    @property
    def provider_name(self) -> str:
        return self.manager.provider.name

    def reserve(self, pool: Pool, nodes: list[Node]) -> bool:
        """Create the nodes if they all fit now (each gets its id); False
        when they do not. Raises what kept the desk from deciding."""
        ask = Ask(pool, nodes)
        with self._cv:
            if self._stopped:
                raise ReservationFailed("the provider is stopping")
            self._asks.append(ask)
            self._cv.notify()
        ask.done.wait()
        if ask.error is not None:
            raise ask.error
        return ask.granted

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._asks and not self._stopped:
                    self._cv.wait()
                if self._stopped:
                    pending, self._asks = self._asks, []
                    break
                batch, count = [], 0
                while self._asks and (not batch or count + len(self._asks[0].nodes)
                                      <= MAX_BATCH_NODES):
                    ask = self._asks.pop(0)
                    batch.append(ask)
                    count += len(ask.nodes)
            try:
                self._round(batch)
            except Exception as exc:
                log.warning("Provider %s: cannot reserve quota: %r",
                            self.provider_name, exc)
                for ask in batch:
                    if not ask.done.is_set():
                        ask.error = exc if isinstance(exc, ReservationFailed) \
                            else ReservationFailed(repr(exc))
                        ask.done.set()
        for ask in pending:
            ask.error = ReservationFailed("the provider is stopping")
            ask.done.set()

    def _round(self, batch: list[Ask]) -> None:
        store = self.launcher.store
        limited = self.launcher.config.tenant_resource_limits
        tenant_paths = sorted({paths.tenant_fence(ask.tenant) for ask in batch
                               if ask.tenant in limited})
        for _ in range(MAX_ROUNDS):
            fences = {path: store.fence_version(path)
                      for path in [paths.quota_fence(self.provider_name)] + tenant_paths}
            version = next(iter(fences.values()))
            if not self.launcher.nodes.barrier(BARRIER_TIMEOUT):
                raise ReservationFailed("the node cache did not catch up")
            granted = self.decide(batch)
            if granted:
                nodes = [node for ask in granted for node in ask.nodes]
                if not store.create_nodes_fenced(fences, nodes):
                    # Another launcher created nodes meanwhile: look again.
                    self.conflicts += 1
                    for node in nodes:
                        node.id = None
                    continue
            for ask in batch:
                ask.granted = ask in granted
                ask.done.set()
            if granted:
                log.debug("Provider %s: reserved %d node(s) (fence version %d)",
                          self.provider_name,
                          sum(len(a.nodes) for a in granted), version)
            return
        raise ReservationFailed(f"lost {MAX_ROUNDS} rounds in a row to other "
                                "launchers")

    def decide(self, batch: list[Ask]) -> list[Ask]:
        """The asks that fit, in order, from usage as the cache has it now
        (the nodes of earlier asks counted for later ones)."""
        usage = self.launcher.usage
        provider = self.provider_name
        provider_used = usage.provider_usage(provider)
        pool_used: dict[str, Resources] = {}
        cloud = self.manager.cloud_limits()
        limited = self.launcher.config.tenant_resource_limits
        tenant_used = usage.tenant_usage() if limited else {}
        granted = []
        for ask in batch:
            need = ask.need
            used = pool_used.get(ask.pool.name)
            if used is None:
                used = pool_used[ask.pool.name] = usage.pool_usage(provider,
                                                                   ask.pool.name)
            if not pool_limits(ask.pool).subtract(used).fits(need):
                continue
            if isinstance(cloud, Resources) and not ask.pool.ignore_provider_quota \
                    and not cloud.copy().subtract(provider_used).fits(need):
                continue
            tenant = limited.get(ask.tenant or "")
            if tenant is not None:
                spent = tenant_used.setdefault(tenant.tenant_name, Resources())
                if not tenant_limits(tenant).subtract(spent).fits(need):
                    continue
                spent.add(need)
            used.add(need)
            provider_used.add(need)
            granted.append(ask)
        return granted
