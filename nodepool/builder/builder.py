"""The nodepool-builder process: build, upload and cleanup workers.

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
import subprocess
import threading
import time
import uuid

from nodepool.builder import dib, local
from nodepool.config import ConfigError, load_config
from nodepool.config.loader import config_files_changed
from nodepool.config.model import Config, DiskImage, Provider, ProviderDiskImage
from nodepool.drivers import DriverUnavailable, NotFound, make_adapter
from nodepool.worker import PeriodicWorker
from nodepool.stats import BuilderStats
from nodepool.zk import paths
from nodepool.zk.cache import ImageCache
from nodepool.zk.client import ZooKeeperClient, client_from_config
from nodepool.zk.locks import Lock, is_locked
from nodepool.zk.records import (
    BuildState, Component, ComponentState, ImageBuild, ImageUpload, UploadState,
)
from nodepool.zk.components import ComponentRegistration
from nodepool.zk.store import Store

log = logging.getLogger("nodepool.builder")

# Worker status values reported as gauges (spec 2.4.4, 2.6.8).
IDLE, BUILDING, UPLOADING, PAUSED = 0, 1, 2, 3


class BuilderError(Exception):
    pass


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
        self._failed_mtimes: dict | None = None
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
        """Builds in progress get ``grace`` seconds to finish, then their DIB
        process groups are killed and they are recorded failed. Uploads are
        not waited for: their records are cleaned up by any builder later."""
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
            if not config_files_changed(config):
                return config
            mtimes = _mtimes(config)
            if mtimes == self._failed_mtimes:
                return config
            try:
                new = load_config(self.config_path, self.secure_path)
            except ConfigError as exc:
                self._failed_mtimes = mtimes
                log.error("New configuration is invalid; keeping the previous one:"
                          "\n%s", exc)
                return config
            if new.images_dir != self.images_dir:
                log.warning("images-dir changed to %s; it takes a restart",
                            new.images_dir)
            self._failed_mtimes = None
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


def _mtimes(config: Config) -> dict:
    found = {}
    for path in config.mtimes:
        try:
            found[path] = os.stat(path).st_mtime_ns
        except OSError:
            found[path] = None
    return found


def image_providers(config: Config) -> list[Provider]:
    return [p for p in config.providers.values() if p.manages_images]


def newest_ready(builds: list[ImageBuild]) -> ImageBuild | None:
    for build in builds:  # newest state_time first
        if build.state == BuildState.READY:
            return build
    return None


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


class BuilderWorker(PeriodicWorker):
    def __init__(self, builder: Builder, name: str, interval: float):
        super().__init__(name, interval, builder.client)
        self.builder = builder
        self.store = builder.store

    def signal_stop(self) -> None:
        self._stopped.set()
        self.wake.set()

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def should_stop(self) -> bool:
        return self.stopped or not self.builder.client.connected


# -- builds -------------------------------------------------------------------

class BuildWorker(BuilderWorker):
    def __init__(self, builder: Builder, index: int, interval: float):
        super().__init__(builder, f"BuildWorker.{index}", interval)
        self.status: dict[str, int] = {}

    def run_once(self) -> None:
        config = self.builder.current_config()
        for check in (self.scheduled_build, self.requested_build):
            for diskimage in list(config.diskimages.values()):
                if self.should_stop or config is not self.builder.config:
                    return
                try:
                    check(config, diskimage)
                except Exception:
                    log.exception("Build check of %s failed", diskimage.name)

    def _buildable(self, diskimage: DiskImage) -> bool:
        if diskimage.pause or self.builder.images.flags(diskimage.name).paused:
            self.status[diskimage.name] = PAUSED
            return False
        self.status[diskimage.name] = IDLE
        return bool(diskimage.formats)

    def scheduled_build(self, config: Config, diskimage: DiskImage) -> None:
        if not self._buildable(diskimage):
            return
        name = diskimage.name
        # The cache answers "is a build due?"; under the lock, ZooKeeper does.
        current = newest_ready(self.builder.images.builds(name))
        if current is not None and \
                time.time() - current.state_time < diskimage.rebuild_age and \
                set(diskimage.formats) <= set(current.formats):
            return
        lock = self.store.lock_image_build(name)
        if lock is None:
            return  # another worker or builder is building it
        try:
            latest = newest_ready(self.store.get_builds(name))
            if latest is not None and (current is None or
                                       latest.state_time > current.state_time):
                return  # built by someone else meanwhile
            reason = ("no ready build" if current is None else
                      "formats missing" if not set(diskimage.formats) <=
                      set(current.formats) else "rebuild-age reached")
            log.info("Building %s (%s)", name, reason)
            self.build(config, diskimage)
        finally:
            lock.release()

    def requested_build(self, config: Config, diskimage: DiskImage) -> None:
        if not self._buildable(diskimage):
            return
        name = diskimage.name
        if self.builder.images.flags(name).build_requested_at is None:
            return
        lock = self.store.lock_image_build(name)
        if lock is None:
            return
        try:
            if self.store.build_requested_at(name) is None:
                return
            log.info("Building %s (requested with image-build)", name)
            result = self.build(config, diskimage)
            if result is not None and result.state == BuildState.READY:
                self.store.remove_build_request(name)
        finally:
            lock.release()

    def build(self, config: Config, diskimage: DiskImage) -> ImageBuild | None:
        """One build under the image build lock; returns the stored record."""
        builder = self.builder
        name = diskimage.name
        record = ImageBuild(image_name=name, state=BuildState.BUILDING,
                            builder=builder.hostname, builder_id=builder.builder_id,
                            formats=sorted(diskimage.formats), username=None,
                            python_path=None, shell_type=None)
        self.store.store_build(record)
        generation = builder.client.session_generation
        base = dib.output_base(builder.images_dir, name, record.id)
        log_dir = config.build_log_dir
        os.makedirs(log_dir, exist_ok=True)
        dib.prune_logs(log_dir, name, config.build_log_retention)
        log_path = os.path.join(log_dir, f"{name}-{record.id}.log")
        self.status[name] = BUILDING
        log.info("Build %s-%s started, log %s", name, record.id, log_path)
        try:
            result = dib.run(diskimage, base, log_path, config.elements_dir,
                             stop=builder.dib_stop)
        except Exception:
            log.exception("Build %s-%s could not run", name, record.id)
            result = dib.DibResult(1, False, 0.0)
        finally:
            self.status[name] = IDLE
        # The lock cannot be trusted across a lost session: wait for a new
        # one, and record the build as failed.
        while not builder.client.wait_until_connected(1.0):
            if self.stopped:
                break
        session_lost = builder.client.session_generation != generation
        ready = result.ok and not session_lost
        final = ImageBuild(image_name=name, id=record.id,
                           state=BuildState.READY if ready else BuildState.FAILED,
                           builder=builder.hostname, builder_id=builder.builder_id,
                           formats=sorted(diskimage.formats) if ready else [],
                           username=diskimage.username,
                           python_path=diskimage.python_path,
                           shell_type=diskimage.shell_type)
        if session_lost:
            log.error("Build %s-%s: ZooKeeper session lost during the build; "
                      "recording it as failed", name, record.id)
        elif not result.ok:
            log.error("Build %s-%s failed (%s); log kept in %s", name, record.id,
                      "timed out" if result.timed_out else f"exit code {result.rc}",
                      log_path)
        else:
            log.info("Build %s-%s ready in %.1fs", name, record.id, result.seconds)
        self.builder.stats.build_finished(name, result, base, final.formats)
        if not self.store.update_build(final):
            log.error("Build %s-%s: its record is gone (removed while this builder "
                      "was away); deleting the local files", name, record.id)
            local.delete_build(builder.images_dir, name, record.id)
            return None
        return final


# -- uploads ------------------------------------------------------------------

class UploadWorker(BuilderWorker):
    def __init__(self, builder: Builder, index: int, interval: float):
        super().__init__(builder, f"UploadWorker.{index}", interval)
        self.status: dict[tuple[str, str], int] = {}

    def run_once(self) -> None:
        config = self.builder.current_config()
        for provider in image_providers(config):
            for provider_image in list(provider.diskimages.values()):
                if self.should_stop:
                    return
                try:
                    if self.consider(config, provider, provider_image):
                        # Start over so the next pass sees a changed config.
                        self.wake.set()
                        return
                except DriverUnavailable as exc:
                    log.error("Cannot upload to %s: %s", provider.name, exc)
                    break
                except Exception:
                    log.exception("Upload check of %s to %s failed",
                                  provider_image.name, provider.name)

    def consider(self, config: Config, provider: Provider,
                 provider_image: ProviderDiskImage) -> bool:
        """Upload the newest ready build if this provider lacks it; True when
        an upload succeeded."""
        name = provider_image.name
        key = (name, provider.name)
        if provider_image.pause:
            self.status[key] = PAUSED
            return False
        self.status[key] = IDLE
        diskimage = config.diskimages.get(name)
        if diskimage is None:
            return False
        # Cheap checks from the cache; the upload lock's holder re-reads.
        images = self.builder.images
        build = newest_ready(images.builds(name))
        if build is None:
            return False
        if any(u.build_id == build.id for u in images.uploads(
                name, provider.name, states=[UploadState.READY])):
            return False
        files = local.image_files(self.builder.images_dir, name, build.id)
        if not files:
            return False  # built elsewhere, or pruned
        if provider.image_type not in build.formats:
            return False
        lock = self.store.lock_upload(name, build.id, provider.name)
        if lock is None:
            return False
        try:
            if self._has_ready_upload(name, build.id, provider.name):
                return False
            build = self.store.get_build(name, build.id)
            if build is None or build.state == BuildState.DELETING:
                return False
            upload = ImageUpload(image_name=name, build_id=build.id,
                                 provider_name=provider.name,
                                 state=UploadState.UPLOADING, username=build.username,
                                 python_path=build.python_path,
                                 shell_type=build.shell_type)
            self.store.store_upload(upload)
            self.status[key] = UPLOADING
            try:
                result = self.upload(provider, diskimage, provider_image, build,
                                     upload, files)
            finally:
                self.status[key] = IDLE
            self.store.store_upload(result)
            return result.state == UploadState.READY
        finally:
            lock.release()

    def _has_ready_upload(self, image: str, build_id: str, provider: str) -> bool:
        return any(u.state == UploadState.READY
                   for u in self.store.get_uploads(image, build_id, provider))

    def upload(self, provider: Provider, diskimage: DiskImage,
               provider_image: ProviderDiskImage, build: ImageBuild,
               upload: ImageUpload, files: dict[str, str]) -> ImageUpload:
        started = time.monotonic()
        path = files.get(provider.image_type)
        if path is None:
            raise BuilderError(f"build {diskimage.name}-{build.id} has no "
                               f"{provider.image_type} file")
        external_name = provider.image_name_format.format(
            image_name=diskimage.name, upload_id=upload.id,
            timestamp=str(int(time.time())))
        metadata = dict(diskimage.metadata)
        metadata.update(provider_image.meta)
        metadata.update(nodepool_build_id=build.id, nodepool_upload_id=upload.id,
                        nodepool_provider_name=provider.name)
        failed = ImageUpload(image_name=upload.image_name, build_id=upload.build_id,
                             provider_name=upload.provider_name, id=upload.id,
                             state=UploadState.FAILED, username=None,
                             python_path=None, shell_type=None)
        log.info("Uploading %s (%s) to %s as %s", path, upload.id, provider.name,
                 external_name)
        try:
            external_id = self.builder.adapter(provider).upload_image(
                external_name, path, provider.image_type,
                {k: str(v) for k, v in metadata.items()})
        except DriverUnavailable:
            raise
        except Exception as exc:
            log.error("Upload of %s-%s to %s failed: %s", diskimage.name, build.id,
                      provider.name, exc)
            return failed
        if provider.post_upload_hook:
            if not self._run_hook(provider, external_id, path):
                try:
                    self.builder.adapter(provider).delete_image(external_id)
                except Exception as exc:
                    log.error("Could not delete image %s after its post-upload hook "
                              "failed: %s", external_id, exc)
                return failed
        seconds = time.monotonic() - started
        log.info("Upload %s of %s-%s to %s ready in %.1fs: %s", upload.id,
                 diskimage.name, build.id, provider.name, seconds, external_id)
        self.builder.stats.upload_finished(diskimage.name, provider.name, seconds)
        return ImageUpload(image_name=upload.image_name, build_id=upload.build_id,
                           provider_name=upload.provider_name, id=upload.id,
                           state=UploadState.READY, external_id=external_id,
                           external_name=external_name, format=provider.image_type,
                           username=build.username, python_path=build.python_path,
                           shell_type=build.shell_type)

    @staticmethod
    def _run_hook(provider: Provider, external_id: str, path: str) -> bool:
        argv = [provider.post_upload_hook, provider.name, external_id, path]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.error("post-upload-hook %s could not run: %s", argv[0], exc)
            return False
        output = (done.stdout + done.stderr).strip()
        if done.returncode != 0:
            log.error("post-upload-hook %s exited %d: %s", argv[0], done.returncode,
                      output)
            return False
        log.info("post-upload-hook %s: %s", argv[0], output)
        return True


# -- cleanup ------------------------------------------------------------------

class CleanupWorker(BuilderWorker):
    settle = 0.2

    def __init__(self, builder: Builder, interval: float):
        super().__init__(builder, "CleanupWorker.0", interval)

    def run_once(self) -> None:
        config = self.builder.current_config()
        recent = self.recent_uploads()
        for image in self.store.image_names():
            if self.should_stop:
                return
            try:
                self.clean_image(config, image, recent)
            except Exception:
                log.exception("Cleanup of image %s failed", image)
        for image, build_id in sorted(local.scan(self.builder.images_dir)):
            try:
                self.clean_local(config, image, build_id)
            except Exception:
                log.exception("Local cleanup of %s-%s failed", image, build_id)
        self.builder.stats.status(self.builder, self.store)

    def recent_uploads(self) -> set[str]:
        """Paths of the two newest ready uploads per (image, provider) among
        ready builds: what the launchers boot and fall back to."""
        newest: dict[tuple[str, str], list[ImageUpload]] = {}
        for image in self.store.image_names():
            for build in self.store.get_builds(image):
                if build.state != BuildState.READY:
                    continue
                for provider in self.store.upload_providers(image, build.id):
                    ready = [u for u in self.store.get_uploads(image, build.id, provider)
                             if u.state == UploadState.READY]
                    newest.setdefault((image, provider), []).extend(ready[:2])
        recent = set()
        for uploads in newest.values():
            uploads.sort(key=lambda u: u.state_time, reverse=True)
            recent.update(u.path for u in uploads[:2])
        return recent

    def clean_image(self, config: Config, image: str, recent: set[str]) -> None:
        diskimage = config.diskimages.get(image)
        builds = self.store.get_builds(image)
        # Retention: the current and the previous ready build; none of a
        # diskimage that left the configuration.
        ready = [b for b in builds if b.state == BuildState.READY]
        keep = {b.id for b in ready[:2]} if diskimage is not None else set()
        providers = image_providers(config)
        build_lock_path = paths.image_build_lock(image)
        for build in builds:
            for provider in providers:
                uploads = self.store.get_uploads(image, build.id, provider.name)
                if image not in provider.diskimages:
                    for upload in uploads:
                        self.delete_upload(config, upload)
                elif build.id in keep:
                    for upload in uploads:
                        if upload.state == UploadState.UPLOADING:
                            self.orphaned_upload(upload)
                        elif upload.state in (UploadState.DELETING, UploadState.FAILED):
                            self.delete_upload(config, upload)
            if build.state != BuildState.DELETING:
                if build.id in keep:
                    continue
                if build.state == BuildState.BUILDING and \
                        is_locked(self.builder.client, build_lock_path):
                    continue  # in progress
            for provider in providers:
                for upload in self.store.get_uploads(image, build.id, provider.name):
                    if upload.path not in recent:
                        self.delete_upload(config, upload)
            remaining = [u for provider in self.store.upload_providers(image, build.id)
                         for u in self.store.get_uploads(image, build.id, provider)]
            if build.state != BuildState.DELETING and all(
                    u.state == UploadState.DELETING for u in remaining):
                if not self.mark_build_deleting(image, build.id):
                    return
            if not remaining and not self.store.has_upload_records(image, build.id):
                log.info("Deleting build record %s-%s", image, build.id)
                self.store.delete_build(image, build.id)

    def mark_build_deleting(self, image: str, build_id: str) -> bool:
        lock = Lock(self.builder.client, paths.build_lock(image, build_id))
        if not lock.acquire(blocking=False):
            return False
        try:
            build = self.store.get_build(image, build_id)
            if build is None or build.state == BuildState.DELETING:
                return True
            # In progress after all (the record changed since it was listed).
            if build.state == BuildState.BUILDING and \
                    is_locked(self.builder.client, paths.image_build_lock(image)):
                return True
            log.info("Build %s-%s: marking it deleting", image, build_id)
            build.state = BuildState.DELETING
            build.state_time = time.time()
            self.store.update_build(build)
            return True
        finally:
            lock.release()

    def orphaned_upload(self, upload: ImageUpload) -> None:
        """An ``uploading`` record of a kept build whose uploader is gone
        (nobody holds its upload lock) is removed; nothing reached a known
        cloud image."""
        client = self.builder.client
        if is_locked(client, paths.upload_lock(upload.image_name, upload.build_id,
                                               upload.provider_name)):
            return
        current = self.store.get_upload(upload.image_name, upload.build_id,
                                        upload.provider_name, upload.id)
        if current is None or current.state != UploadState.UPLOADING:
            return
        log.info("Removing orphaned upload record %s", upload.path)
        self.store.delete_upload(current)

    def delete_upload(self, config: Config, upload: ImageUpload) -> None:
        """Mark deleting, delete the cloud image, then the record."""
        client = self.builder.client
        number_lock = paths.upload_number_lock(upload.image_name, upload.build_id,
                                               upload.provider_name, upload.id)
        if upload.state != UploadState.DELETING:
            if upload.state == UploadState.UPLOADING and is_locked(
                    client, paths.upload_lock(upload.image_name, upload.build_id,
                                              upload.provider_name)):
                return  # a live upload
            lock = Lock(client, number_lock)
            if not lock.acquire(blocking=False):
                return
            try:
                current = self.store.get_upload(upload.image_name, upload.build_id,
                                                upload.provider_name, upload.id)
                if current is None:
                    return
                current.state = UploadState.DELETING
                current.state_time = time.time()
                self.store.store_upload(current)
                upload = current
            finally:
                lock.release()
        if upload.external_id:
            provider = config.providers.get(upload.provider_name)
            if provider is None:
                return  # not ours to delete any more (erase handles it)
            try:
                self.builder.adapter(provider).delete_image(upload.external_id)
                log.info("Deleted image %s of upload %s from %s", upload.external_id,
                         upload.path, provider.name)
            except NotFound:
                pass
            except Exception as exc:
                log.warning("Deleting image %s from %s failed (retried next pass): %s",
                            upload.external_id, provider.name, exc)
                return
        lock = Lock(client, number_lock)
        if not lock.acquire(blocking=False):
            return
        try:
            self.store.delete_upload(upload)
        finally:
            lock.release()

    def clean_local(self, config: Config, image: str, build_id: str) -> None:
        build = self.store.get_build(image, build_id)
        if build is None or build.state == BuildState.DELETING:
            local.delete_build(self.builder.images_dir, image, build_id)
            return
        if build.state != BuildState.READY:
            return
        diskimage = config.diskimages.get(image)
        if diskimage is None or not diskimage.delete_after_upload:
            return
        keep_formats = set(diskimage.keep_formats)
        for provider in image_providers(config):
            if image not in provider.diskimages:
                continue
            if not any(u.state == UploadState.READY for u in
                       self.store.get_uploads(image, build_id, provider.name)):
                keep_formats.add(provider.image_type)
        files = local.image_files(self.builder.images_dir, image, build_id)
        for fmt, path in files.items():
            if fmt not in keep_formats:
                log.info("Deleting %s: uploaded everywhere (delete-after-upload)", path)
                local.delete_file(path)
