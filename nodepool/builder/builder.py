"""The nodepool-builder process: it starts and stops the build
(:mod:`~nodepool.builder.build`), upload (:mod:`~nodepool.builder.upload`)
and cleanup (:mod:`~nodepool.builder.retention`) workers, and reloads the
configuration they work from.

Workers coordinate with other builders (and with upstream's) only through
ZooKeeper: the image build lock serialises builds of an image cluster-wide,
the upload lock one upload per (build, provider). Every lock the builder
takes is non-blocking: a held lock means "someone else is on it", and the
work is reconsidered on a later pass. Passes run when the image tree changes
(a cache watch), when the configuration file changes, and at least every
interval (for ``rebuild-age``).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid

from nodepool.builder.base import BuilderError
from nodepool.builder.build import BuildWorker
from nodepool.builder.retention import CleanupWorker
from nodepool.builder.upload import UploadWorker
from nodepool.config import load_config
from nodepool.config.loader import config_files_changed
from nodepool.config.model import Config, Provider
from nodepool.config.reload import ConfigReloader
from nodepool.drivers import make_adapter
from nodepool.stats import BuilderStats
from nodepool.worker import PeriodicWorker
from nodepool.zk.cache import ImageCache
from nodepool.zk.client import ZooKeeperClient, client_from_config
from nodepool.zk.components import ComponentRegistration
from nodepool.zk.records import Component, ComponentState
from nodepool.zk.store import Store

log = logging.getLogger("nodepool.builder")


def read_builder_id(images_dir: str) -> str:
    """``<images-dir>/builder_id.txt``, created with a new UUID if missing."""
    path = os.path.join(images_dir, "builder_id.txt")
    try:
        with open(path) as handle:
            return handle.read().strip()
    except FileNotFoundError:
        builder_id = str(uuid.uuid4())
        with open(path, "w") as handle:
            handle.write(builder_id)
        return builder_id


class Builder:
    """One nodepool-builder process."""

    def __init__(self, config_path: str, secure_path: str | None = None, *,
                 build_workers: int = 1, upload_workers: int = 4,
                 build_interval: float = 10.0, upload_interval: float = 10.0,
                 cleanup_interval: float = 60.0, config_check_interval: float = 1.0,
                 stats: BuilderStats | None = None):
        self.config_path = config_path
        self.secure_path = secure_path
        self.config: Config = load_config(config_path, secure_path)
        if not self.config.zookeeper_servers:
            raise BuilderError("No ZooKeeper servers specified in config.")
        if not self.config.images_dir:
            raise BuilderError("No images-dir specified in config.")
        if not os.path.isdir(self.config.images_dir):
            raise BuilderError(f"images-dir {self.config.images_dir} does not exist")
        self.images_dir = self.config.images_dir
        self.builder_id = read_builder_id(self.images_dir)
        self.hostname = socket.getfqdn()
        self.stats = stats or BuilderStats()
        self.client: ZooKeeperClient = client_from_config(self.config)
        self.store = Store(self.client)
        self.images: ImageCache | None = None
        self.registration: ComponentRegistration | None = None
        self._config_lock = threading.Lock()
        self.reloader = ConfigReloader(config_path, secure_path, log)
        self._adapters: dict[str, tuple[Provider, object]] = {}
        self._adapter_lock = threading.Lock()
        self.build_workers = [BuildWorker(self, i, build_interval)
                              for i in range(build_workers)]
        self.upload_workers = [UploadWorker(self, i, upload_interval)
                               for i in range(upload_workers)]
        self.cleanup_worker = CleanupWorker(self, cleanup_interval) \
            if cleanup_interval > 0 else None
        self.config_watcher = ConfigWatcher(self, config_check_interval)
        self.running = threading.Event()
        # Set when stopping has waited long enough: running DIB commands are
        # killed (with their whole process group) instead of orphaned.
        self.dib_stop = threading.Event()

    @property
    def workers(self) -> list[PeriodicWorker]:
        return [*self.build_workers, *self.upload_workers,
                *([self.cleanup_worker] if self.cleanup_worker else [])]

    def pending_work(self) -> list[str]:
        """Workers with a pass running or asked for (empty: the builder waits
        for news, or for a periodic pass to come due)."""
        return [worker.name for worker in [*self.workers, self.config_watcher]
                if worker.pending]

    # -- start and stop ----------------------------------------------------

    def start(self, connect_timeout: float | None = None,
              stop: threading.Event | None = None) -> None:
        """Connect and start working. ``stop`` (set by SIGTERM) ends a wait
        for an unreachable ZooKeeper with ConnectInterrupted."""
        self.client.connect(timeout=connect_timeout, stop=stop)
        self.images = ImageCache(self.client)
        self.images.start()
        self.images.wait_synced(60)
        self.registration = ComponentRegistration(
            self.client, Component(kind="builder", hostname=socket.gethostname(),
                                   state=ComponentState.RUNNING))
        self.registration.register()
        self.images.add_listener(self._on_image_event)
        for worker in self.workers:
            worker.start()
        self.config_watcher.start()
        self.running.set()
        log.info("Builder %s running: %d build, %d upload workers, images in %s",
                 self.builder_id, len(self.build_workers), len(self.upload_workers),
                 self.images_dir)

    def stop(self, grace: float = 60.0) -> None:
        """Builds and uploads in progress get ``grace`` seconds to finish.
        Builds still running then have their DIB process groups killed and are
        recorded failed. Uploads still running are left: any builder removes
        their records later, and the launchers' leak cleanup their images."""
        log.info("Builder stopping")
        self.running.clear()
        # Out of reach of ZooKeeper nothing can be recorded: builds are not
        # waited for, and no call waits for the server to come back.
        self.client.abort_when_disconnected()
        if not self.client.connected:
            grace = 0.0
        self.config_watcher.stop()
        for worker in self.workers:
            worker.signal_stop()
        deadline = time.monotonic() + grace
        for worker in self.build_workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        if any(worker.alive for worker in self.build_workers):
            log.warning("Builds still running after %.0fs; killing them", grace)
            self.dib_stop.set()
            for worker in self.build_workers:
                worker.join(30)
        for worker in self.upload_workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        if any(worker.alive for worker in self.upload_workers):
            log.warning("Uploads still running after %.0fs; leaving them", grace)
        if self.cleanup_worker is not None:
            self.cleanup_worker.stop()
        with self._adapter_lock:
            for _, adapter in self._adapters.values():
                try:
                    adapter.stop()
                except Exception:
                    log.exception("Stopping a provider client failed")
            self._adapters.clear()
        if self.registration is not None:
            self.registration.unregister()
        if self.images is not None:
            self.images.stop()
        self.client.disconnect()
        log.info("Builder stopped")

    def _on_image_event(self, kind, key, record) -> None:
        for worker in self.workers:
            worker.wake.set()

    # -- configuration -----------------------------------------------------

    def current_config(self) -> Config:
        """The configuration for this pass: reloaded when the files changed;
        an invalid file keeps the last good configuration."""
        with self._config_lock:
            config = self.config
            new = self.reloader.reload(config)
            if new is None:
                return config
            if new.images_dir != self.images_dir:
                log.warning("images-dir changed to %s; it takes a restart",
                            new.images_dir)
            self.config = new
            log.info("Configuration reloaded")
            return new

    def adapter(self, provider: Provider):
        """The cloud client of a provider, remade when its config changes."""
        with self._adapter_lock:
            current = self._adapters.get(provider.name)
            if current is not None and current[0] == provider:
                return current[1]
            if current is not None:
                try:
                    current[1].stop()
                except Exception:
                    log.exception("Stopping the client of %s failed", provider.name)
            adapter = make_adapter(provider)
            self._adapters[provider.name] = (provider, adapter)
            return adapter

    @property
    def usable(self) -> bool:
        return self.running.is_set() and self.client.connected


class ConfigWatcher(PeriodicWorker):
    """Wakes the workers as soon as the configuration files change."""

    def __init__(self, builder: Builder, interval: float):
        super().__init__("BuilderConfigWatcher", interval)
        self.builder = builder

    def run_once(self) -> None:
        if config_files_changed(self.builder.config):
            before = self.builder.config
            if self.builder.current_config() is not before:
                for worker in self.builder.workers:
                    worker.wake.set()
