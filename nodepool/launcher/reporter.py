"""Gauges for dashboards (spec section 7.2, 7.3, 7.5).

The global gauges (nodes per state, provider and label; addressable
requests per pool) describe the whole cluster, so one launcher, elected
through ``/nodepool/elections/stats`` (kazoo's election recipe, which is its
lock recipe), sends them; every launcher sends the gauges of its own
providers and its internal queue depths. Computed from the caches, sent at
most once a second.
"""

from __future__ import annotations

import logging
import time

from nodepool import stats
from nodepool.worker import PeriodicWorker
from nodepool.zk import paths
from nodepool.zk.locks import Lock
from nodepool.zk.records import NodeState

log = logging.getLogger("nodepool.launcher.reporter")

INTERNAL_EVERY = 10.0


class StatsReporter(PeriodicWorker):
    settle = 0.0

    def __init__(self, launcher, interval: float = 1.0):
        super().__init__("StatsReporter", interval, launcher.client)
        self.launcher = launcher
        self.hostname = launcher.stats_name
        self.election: Lock | None = None
        self._last_internal = 0.0
        self._last_sent = 0.0

    @property
    def leader(self) -> bool:
        return self.election is not None and self.election.is_acquired

    def _elect(self) -> None:
        if self.leader:
            if self.election.is_still_valid:
                return
            self.election = None
        lock = Lock(self.launcher.client, paths.STATS_ELECTION, self.hostname)
        if lock.acquire(blocking=False):
            log.info("Elected to report the global gauges")
            self.election = lock

    def stop(self) -> None:
        super().stop()
        if self.leader:
            try:
                self.election.release()
            except Exception:
                pass

    def run_once(self) -> None:
        client = self.launcher.stats.client
        if client is None:
            return
        now = time.monotonic()
        if now - self._last_sent < self.interval * 0.9:
            return
        self._last_sent = now
        self._elect()
        pipe = client.pipeline()
        if self.leader:
            self.global_gauges(pipe)
        self.provider_gauges(pipe)
        if now - self._last_internal >= INTERNAL_EVERY:
            self._last_internal = now
            self.internal_gauges(pipe)
        pipe.send()

    def global_gauges(self, pipe) -> None:
        launcher = self.launcher
        pools = launcher.components.pools()
        states = {state: 0 for state in NodeState.ALL}
        by_provider = {p.provider_name: dict.fromkeys(NodeState.ALL, 0)
                       for p in pools if p.provider_name}
        by_label = {label: dict.fromkeys(NodeState.ALL, 0)
                    for p in pools for label in p.supported_labels or []}
        for node in launcher.nodes.nodes():
            if node.state not in states:
                continue
            states[node.state] += 1
            by_provider.setdefault(node.provider, dict.fromkeys(NodeState.ALL, 0))[
                node.state] += 1
            for label in set(node.type):
                by_label.setdefault(label, dict.fromkeys(NodeState.ALL, 0))[
                    node.state] += 1
        for state, count in states.items():
            pipe.gauge(stats.nodes_key(state), count)
        for provider, counts in by_provider.items():
            for state, count in counts.items():
                pipe.gauge(stats.provider_nodes_key(provider, state), count)
        for label, counts in by_label.items():
            for state, count in counts.items():
                pipe.gauge(stats.label_nodes_key(label, state), count)
        now = time.time()
        for entry in launcher.capacity.cache.entries():
            pipe.gauge(stats.capacity_gauge_key(entry.provider, entry.key, "avoided"),
                       int(entry.avoided(now)))
            pipe.gauge(stats.capacity_gauge_key(entry.provider, entry.key, "errors"),
                       entry.errors)
        requests = launcher.requests.requests()
        for pool in pools:
            supported = set(pool.supported_labels or [])
            count = sum(1 for r in requests if set(r.node_types) <= supported)
            pipe.gauge(stats.addressable_requests_key(pool.provider_name, pool.name),
                       count)

    def provider_gauges(self, pipe) -> None:
        config = self.launcher.config
        for provider in config.providers.values():
            pipe.gauge(stats.max_servers_key(provider.name),
                       stats.max_servers_total(provider.pools.values()))
        for tenant, limits in config.tenant_resource_limits.items():
            for key, value in stats.tenant_limit_values(limits.limits).items():
                pipe.gauge(stats.tenant_limit_key(tenant, key), value)
        # This launcher's share of the work now (with its counters, sent as
        # the work happens).
        managers = list(self.launcher.managers.values())
        held = sum(len(worker.handlers) for manager in managers
                   for worker in list(manager.workers.values()))
        running = sum(manager.active_launches() for manager in managers)
        pipe.gauge(stats.launcher_work_key(self.hostname, "requests_held"), held)
        pipe.gauge(stats.launcher_work_key(self.hostname, "launches_running"),
                   running)

    def internal_gauges(self, pipe) -> None:
        """Queue depths: requests waiting to be sent to ZooKeeper, and each
        cache's events and replies waiting to be applied (our caches apply
        events as they come, so there is no separate playback queue: 0)."""
        launcher = self.launcher
        pipe.gauge(stats.zk_queue_key(self.hostname, "client.connection_queue"),
                   launcher.client.queued_requests)
        for name, cache in (("node_cache", launcher.nodes),
                            ("request_cache", launcher.requests),
                            ("image_cache", launcher.images)):
            pipe.gauge(stats.zk_queue_key(self.hostname, f"{name}.event_queue"),
                       cache.queue_size)
            pipe.gauge(stats.zk_queue_key(self.hostname, f"{name}.playback_queue"), 0)
