"""The launcher daemon: wires configuration, ZooKeeper, providers and workers.

One :class:`Launcher` per process. It loads the configuration, connects to
ZooKeeper, starts the watch-driven caches, and runs one
:class:`ProviderManager` per provider (its adapter, its runner thread and one
:class:`~nodepool.launcher.pool.PoolWorker` per pool), plus the delete
worker, min-ready and the periodic cleanup. Cache listeners wake exactly the
workers a change concerns. The configuration file is checked every second;
a valid new file is applied without a restart, an invalid one is reported
and the last good configuration keeps running.
"""

from __future__ import annotations

import collections
import logging
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

from nodepool.config import load_config
from nodepool.config.model import Config, PoolLabel, Provider
from nodepool.config.reload import ConfigReloader
from nodepool.drivers import DriverUnavailable, connection_key, driver_of
from nodepool.launcher.deletion import NodeDelete
from nodepool.launcher.lifecycle import LaunchResult, NodeLaunch
from nodepool.launcher.runner import Runner
from nodepool.launcher.capacity import CapacityTracker
from nodepool.launcher.maintenance import Cleanup, DeleteWorker, MinReady
from nodepool.launcher.pool import PoolWorker
from nodepool.launcher.reservation import ReservationDesk
from nodepool.launcher.quota import UsageIndex, pool_limits
from nodepool.launcher.resume import Resumer
from nodepool.launcher.views import SchedulingViews
from nodepool.resources import Resources
from nodepool.launcher.cloudview import CloudView, Unknown
from nodepool.launcher.inventory import InventoryRegistrar
from nodepool.stats import Stats
from nodepool.zk.cache import ComponentCache, ImageCache, NodeCache, RequestCache
from nodepool.zk.client import ZooKeeperClient, client_from_config
from nodepool.zk.records import LAUNCHER_KEY, Component, ComponentState, Node
from nodepool.zk.components import ComponentRegistration, new_launcher_id
from nodepool.zk.store import Store

# Node states whose arrival tells a pool nothing new.
_NO_POOL_NEWS = frozenset({"building", "in-use", "used"})

log = logging.getLogger("nodepool.launcher")

RUNNERS = 4


class ProviderManager:
    """One provider's adapter, runner and pool workers."""

    def __init__(self, launcher: "Launcher", provider: Provider):
        self.launcher = launcher
        self.provider = provider
        self.driver = driver_of(provider)
        self.capabilities = self.driver.capabilities
        self.adapter = self.driver.make_adapter(provider)
        if self.capabilities.uses_backing_nodes:
            from nodepool.launcher.backing import LauncherBackingNodes
            self.adapter.attach_backing_nodes(LauncherBackingNodes(launcher))
        # Several runners, so one thread's ZooKeeper round trips do not queue
        # every other launch and delete of the provider behind them.
        self.runners = [Runner(f"{provider.name}-{i}") for i in range(RUNNERS)]
        self.desk = ReservationDesk(launcher, self)
        self.workers: dict[str, PoolWorker] = {}
        self._launches = 0
        self._mutex = threading.Lock()
        self.view = CloudView(self)
        # Inventory drivers: their hosts become node records here.
        self.registrar = None if self.capabilities.launches_instances \
            else InventoryRegistrar(self)

    def start(self) -> None:
        self.view.start()
        for pool in self.provider.pools.values():
            self._start_worker(pool)
        if self.registrar is not None:
            self.registrar.start()

    def _start_worker(self, pool) -> None:
        worker = PoolWorker(self.launcher, self, pool)
        self.workers[pool.name] = worker
        worker.start()

    def stop(self) -> None:
        self.view.stop()
        if self.registrar is not None:
            self.registrar.stop()
        # Launches stop (and let go of their nodes) before the requests are
        # handed back: a launch never runs on after its lock is released,
        # when another launcher may already be carrying it on.
        for runner in self.runners:
            runner.stop()
        for worker in list(self.workers.values()):
            worker.stop()
        self.workers.clear()
        self.desk.stop()
        self.adapter.stop()

    def reconfigure(self, provider: Provider) -> None:
        old = self.provider
        self.provider = provider
        self.adapter.reconfigure(provider)
        self.view.forget()
        for name in list(self.workers):
            if name not in provider.pools:
                log.info("Pool %s/%s was removed from the configuration",
                         provider.name, name)
                self.workers.pop(name).stop()
        for name, pool in provider.pools.items():
            if name not in self.workers:
                log.info("Pool %s/%s was added to the configuration",
                         provider.name, name)
                self._start_worker(pool)
            elif old.pools.get(name) != pool or old != provider:
                self.workers[name].reconfigure(pool)
        if self.registrar is not None:
            self.registrar.wake.set()

    def node_deleted(self, node: Node) -> None:
        if self.registrar is not None:
            self.registrar.wake.set()

    def reusable(self, node: Node) -> bool:
        """Whether a ready node may be handed out (inventory: host alive)."""
        if self.registrar is not None:
            return self.registrar.reusable(node)
        return True

    # -- launches and deletes --------------------------------------------------

    @property
    def resumes_launches(self) -> bool:
        return self.capabilities.resumes_launches

    def launch(self, task: NodeLaunch) -> None:
        callback = task.callback
        capacity = self.launcher.capacity
        label = task.label.name

        def done(node: Node, result: LaunchResult) -> None:
            with self._mutex:
                self._launches -= 1
            if result == LaunchResult.ABORTED:
                self.view.refresh_limits()  # the cloud disagreed with our estimate
                self.launcher.submit(capacity.record_error, self.provider.name, label,
                                     task.abort_reason or "quota exceeded")
            elif result == LaunchResult.READY:
                self.launcher.submit(capacity.record_success, self.provider.name,
                                     label)
            callback(node, result)

        task.callback = done
        with self._mutex:
            self._launches += 1
        self._runner_for(task.node.id).add(task)

    def delete(self, task: NodeDelete) -> None:
        self._runner_for(task.node.id).add(task)

    def _runner_for(self, node_id: str | None) -> Runner:
        return self.runners[int(node_id or 0) % len(self.runners)]

    def active_launches(self) -> int:
        return self._launches

    @property
    def can_launch(self) -> bool:
        return self.capabilities.launches_instances

    # -- what the pool workers ask about the provider ---------------------------

    def label_quota(self, label_name: str) -> Resources | None | Unknown:
        """Resources one node of the label uses; None if it can never work,
        UNKNOWN until the cloud has answered."""
        return self.view.label_need(label_name)

    def label_available(self, label: PoolLabel) -> bool | Unknown:
        if label.diskimage:
            if label.diskimage not in self.provider.diskimages:
                return False
            return self.launcher.images.latest_ready_upload(
                label.diskimage, self.provider.name) is not None
        return self.view.image_ready(label.name)

    def serves_label(self, label_name: str) -> bool:
        for pool in self.provider.pools.values():
            label = pool.labels.get(label_name)
            if label is not None and (pool.max_servers is None or pool.max_servers > 0) \
                    and self.label_available(label) is True:
                return True
        return False

    def cloud_limits(self) -> Resources | None | Unknown:
        """Cloud limits minus what instances not managed by us use (the last
        snapshot; None: the cloud sets none)."""
        return self.view.limits()

    def room_for(self, label_name: str) -> float:
        """How many more nodes of ``label_name`` this provider's pools could
        start now, from pool limits, the last known cloud quota (no cloud call
        here) and max-concurrency; ``UNLIMITED`` if nothing limits it."""
        need = self.label_quota(label_name)
        if not isinstance(need, Resources):
            return 0
        total = 0.0
        cloud_room = None
        for worker in list(self.workers.values()):
            pool = worker.pool
            label = pool.labels.get(label_name)
            if label is None or (pool.max_servers is not None and pool.max_servers <= 0) \
                    or self.label_available(label) is not True:
                continue
            pool_used, provider_used = worker.usage_now()
            total += pool_limits(pool).subtract(pool_used).count_fitting(need)
            if cloud_room is None and not pool.ignore_provider_quota:
                limits = self.view.limits()
                if isinstance(limits, Resources):
                    cloud_room = limits.subtract(provider_used)
        if cloud_room is not None:
            total = min(total, cloud_room.count_fitting(need))
        if self.provider.max_concurrency > 0:
            total = min(total, max(0, self.provider.max_concurrency - self._launches))
        return total

    def azs(self) -> list[str]:
        return self.view.zones()

    def wake(self) -> None:
        for worker in list(self.workers.values()):
            worker.wake.set()


class Launcher:
    """A nodepool-launcher process."""

    def __init__(self, config_path: str, secure_path: str | None = None, *,
                 idle_interval: float = 5.0, cleanup_interval: float = 60.0,
                 delete_sweep_interval: float = 10.0,
                 min_ready_interval: float = 5.0,
                 config_check_interval: float = 1.0,
                 accept_threads: int = 16, stats: Stats | None = None,
                 webapp: bool = False, webapp_port: int | None = None,
                 stats_name: str | None = None):
        self.config_path = config_path
        self.secure_path = secure_path
        # Names this process in the pools it registers and in the progress
        # of the launches and deletes it drives.
        self.id = new_launcher_id()
        # Names this launcher in statsd keys: stable across restarts (the
        # id is not), so a dashboard keeps one series per launcher host.
        self.stats_name = stats_name or socket.gethostname()
        self.idle_interval = idle_interval
        self.config_check_interval = config_check_interval
        self.config: Config = load_config(config_path, secure_path)
        self.stats = stats or Stats()
        self.client: ZooKeeperClient = client_from_config(self.config)
        self.store = Store(self.client)
        self.executor = ThreadPoolExecutor(max_workers=accept_threads,
                                           thread_name_prefix="accept")
        # Fulfilling and declining must not wait behind a queue of accepts.
        self.finisher = ThreadPoolExecutor(max_workers=8, thread_name_prefix="finish")
        self.managers: dict[str, ProviderManager] = {}
        self.usage = UsageIndex(label_need=self._label_need)
        self.delete_worker = DeleteWorker(self, delete_sweep_interval)
        self.min_ready = MinReady(self, min_ready_interval)
        self.cleanup = Cleanup(self, cleanup_interval)
        self.resumer = Resumer(self, cleanup_interval)
        self.capacity = CapacityTracker(self)
        # This launcher's share of the work (also sent to statsd).
        self.counters: collections.Counter[str] = collections.Counter()
        from nodepool.launcher.reporter import StatsReporter
        self.reporter = StatsReporter(self)
        self.ready = threading.Event()
        self._stopped = threading.Event()
        self._config_thread = threading.Thread(target=self._watch_config,
                                               daemon=True, name="config-watch")
        self.reloader = ConfigReloader(config_path, secure_path, log)
        self.registration: ComponentRegistration | None = None
        self.webapp = None
        if webapp:
            from nodepool.web.app import StatusWebApp
            web = self.config.webapp
            self.webapp = StatusWebApp(
                self, web.listen_address,
                web.port if webapp_port is None else webapp_port)
            # A port in use is a one-line start-up error (ListenError), before
            # ZooKeeper is touched.
            self.webapp.bind()

    # -- start and stop ----------------------------------------------------

    def start(self, connect_timeout: float | None = None,
              stop: threading.Event | None = None) -> None:
        """Connect and start serving. ``stop`` (set by SIGTERM) ends a wait
        for an unreachable ZooKeeper with ConnectInterrupted."""
        self.client.connect(timeout=connect_timeout, stop=stop)
        self.nodes = NodeCache(self.client)
        self.requests = RequestCache(self.client)
        self.images = ImageCache(self.client)
        self.components = ComponentCache(self.client)
        self.views = SchedulingViews(self.requests, self.components)
        self.store.mirror_writes(self.nodes, self.requests)
        # Before the caches load, so the index sees every node.
        self.nodes.add_listener(self._index_node)
        caches = (self.nodes, self.requests, self.images, self.components,
                  self.capacity.cache)
        for cache in caches:
            cache.start()
        for cache in caches:
            cache.wait_synced(60)
        self.registration = ComponentRegistration(
            self.client, Component(kind="launcher", state=ComponentState.INITIALIZING,
                                   extra={LAUNCHER_KEY: self.id}))
        self.registration.register()
        self.nodes.add_listener(self._on_node)
        self.requests.add_listener(self._on_request)
        self.images.add_listener(self._on_other)
        self.components.add_listener(self._on_component)
        self.capacity.cache.add_listener(self._on_other)
        for provider in self.config.providers.values():
            self._start_provider(provider)
        self.delete_worker.start()
        self.min_ready.start()
        self.cleanup.start()
        self.resumer.start()
        # Whatever a launcher left before we came (our own previous run, say).
        self.resumer.wake.set()
        if self.stats.enabled:
            self.reporter.start()
        self._config_thread.start()
        self.registration.update(state=ComponentState.RUNNING)
        self.min_ready.wake.set()
        if self.webapp is not None:
            self.webapp.start()
        self.ready.set()
        log.info("Launcher running with providers %s (launcher id %s)",
                 ", ".join(self.managers) or "(none)", self.id)

    def _start_provider(self, provider: Provider) -> None:
        try:
            manager = ProviderManager(self, provider)
            manager.start()
        except DriverUnavailable as exc:
            log.error("%s; it is left out until the next configuration change", exc)
            return
        except Exception:
            log.exception("Provider %s failed to start; it is left out until the "
                          "next configuration change", provider.name)
            return
        self.managers[provider.name] = manager

    def stop(self) -> None:
        log.info("Launcher stopping")
        self._stopped.set()
        self.ready.clear()
        # Requests in hand are given back and our records removed if the
        # server answers; if it is (or goes) out of reach, nothing waits for
        # it: our locks and registrations go with the session.
        self.client.abort_when_disconnected()
        if self.webapp is not None:
            self.webapp.stop()
        for part in (self.min_ready, self.cleanup, self.delete_worker, self.reporter,
                     self.resumer):
            part.stop()
        for manager in list(self.managers.values()):
            manager.stop()
        self.managers.clear()
        self.executor.shutdown(wait=True, cancel_futures=False)
        self.finisher.shutdown(wait=True, cancel_futures=False)
        if self.registration is not None:
            self.registration.unregister()
        for name in ("nodes", "requests", "images", "components"):
            cache = getattr(self, name, None)  # (None if start was cut short)
            if cache is not None:
                cache.stop()
        self.capacity.cache.stop()
        self.client.disconnect()
        log.info("Launcher stopped")

    def pending_work(self) -> list[str]:
        """What the launcher is still doing or about to do, from the events
        it has seen (empty: settled until something changes in ZooKeeper,
        in the cloud, or a periodic task comes due)."""
        pending = []
        for name, manager in list(self.managers.items()):
            if manager.view.answering:
                pending.append(f"{name}: asking the cloud")
            busy = sum(len(runner) for runner in manager.runners)
            if busy:
                pending.append(f"{name}: {busy} launches or deletes")
            if manager.registrar is not None and manager.registrar.pending:
                pending.append(f"{name}: registering hosts")
            for pool_name, worker in list(manager.workers.items()):
                pending += [f"{name}/{pool_name}: {what}"
                            for what in worker.pending_work()]
        if self.delete_worker.busy:
            pending.append("deletes being dispatched")
        if self.resumer.busy:
            pending.append("resuming orphaned work")
        if self.min_ready.pending:
            pending.append("min-ready")
        return pending

    # -- work on the shared executors, counted -----------------------------------

    def submit(self, fn, *args) -> bool:
        """Run ``fn(*args)`` on the executor; False once we are stopping."""
        try:
            self.executor.submit(fn, *args)
            return True
        except RuntimeError:  # shut down
            return False

    def count(self, what: str, amount: int = 1) -> None:
        """Our share of the work (see stats.launcher_work_key)."""
        self.counters[what] += amount
        self.stats.work(self.stats_name, what, amount)

    # -- events --------------------------------------------------------------

    def _label_need(self, provider_name: str, label: str):
        manager = self.managers.get(provider_name)
        need = manager.label_quota(label) if manager is not None else None
        return need if isinstance(need, Resources) else None

    def _index_node(self, kind: str, node_id, node: Node) -> None:
        if kind in ("changed", "deleted"):
            self.usage.update(node if kind == "changed" else None, node_id)

    def _on_node(self, kind: str, node_id, node: Node) -> None:
        # A pool pass cares about quota freed and nodes it could reuse; a node
        # being locked, built or used by Zuul changes neither.
        if kind == "deleted" or kind == "unlocked" or (
                kind == "changed" and node.state not in _NO_POOL_NEWS):
            self._wake_provider(node.provider)
        if kind != "deleted":
            self.delete_worker.consider(node)
        if kind == "deleted" or node.state == "ready":
            self.min_ready.wake.set()

    def _on_request(self, kind: str, request_id, request) -> None:
        if kind == "deleted":
            for manager in list(self.managers.values()):
                for worker in list(manager.workers.values()):
                    worker.cancel(request_id)
            self.min_ready.wake.set()
        elif request.is_min_ready and request.state in ("fulfilled", "failed"):
            self.min_ready.wake.set()
        if kind != "deleted" and request.state == "requested":
            self._wake_candidates(request)

    def _wake_candidates(self, request) -> None:
        """An open request is news for the pools that could serve it (all
        pools when none can: each has to decline it); other changes to
        requests change no pool's decisions."""
        components, directory = self.views.pools()
        candidates = {c.id for c in directory.candidates(request)}
        if not candidates:
            self._wake_all()
            return
        registered = {c.id for c in components}
        for manager in list(self.managers.values()):
            for worker in list(manager.workers.values()):
                if worker.id in candidates or worker.id not in registered:
                    worker.wake.set()

    def _on_other(self, kind, key, record) -> None:
        self._wake_all()

    def _on_component(self, kind, key, record) -> None:
        if kind == "deleted":
            # A launcher (or one of its pools) left: what it held may be
            # ours to carry on now.
            self.resumer.wake.set()
        self._wake_all()

    def _wake_provider(self, provider_name) -> None:
        manager = self.managers.get(provider_name or "")
        if manager is not None:
            manager.wake()
        else:
            self._wake_all()

    def _wake_all(self) -> None:
        for manager in list(self.managers.values()):
            manager.wake()

    def node_deleted(self, node: Node) -> None:
        manager = self.managers.get(node.provider or "")
        if manager is not None:
            manager.node_deleted(node)

    # -- configuration reload ----------------------------------------------------

    def _watch_config(self) -> None:
        while not self._stopped.wait(self.config_check_interval):
            try:
                self.check_config()
            except Exception:
                log.exception("Configuration check failed")

    @property
    def config_errors(self) -> int:
        """Changed configurations that failed to load (one per change)."""
        return self.reloader.errors

    def check_config(self) -> bool:
        """Reload if the files changed; returns True if a new config was applied."""
        new = self.reloader.reload(self.config)
        if new is None:
            return False
        self.apply_config(new)
        return True

    def apply_config(self, new: Config) -> None:
        old = self.config
        log.info("Applying a changed configuration")
        self.config = new
        if new.zookeeper_servers != old.zookeeper_servers:
            from nodepool.zk.client import connection_string
            self.client.reset_hosts(connection_string(new.zookeeper_servers))
        for name in list(self.managers):
            if name not in new.providers:
                log.info("Provider %s was removed from the configuration", name)
                self.managers.pop(name).stop()
        for name, provider in new.providers.items():
            manager = self.managers.get(name)
            if manager is None:
                log.info("Provider %s was added to the configuration", name)
                self._start_provider(provider)
            elif connection_key(manager.provider) != connection_key(provider):
                log.info("Provider %s changed its connection; restarting it", name)
                self.managers.pop(name).stop()
                self._start_provider(provider)
            elif manager.provider != provider:
                manager.reconfigure(provider)
        self.min_ready.wake.set()
        self._wake_all()
