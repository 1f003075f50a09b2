"""Builds: when an image is due (no ready build, formats missing,
``rebuild-age`` reached, or ``nodepool image-build`` asked for one), and
running disk-image-create (:mod:`nodepool.builder.dib`) for it under the
image's cluster-wide build lock."""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING

from nodepool.builder import dib, local
from nodepool.builder.base import (
    BUILDING, IDLE, PAUSED, BuilderWorker, newest_ready,
)
from nodepool.config.model import Config, DiskImage
from nodepool.zk.image_records import ImageBuild
from nodepool.zk.records import BuildState

if TYPE_CHECKING:
    from nodepool.builder.builder import Builder

log = logging.getLogger("nodepool.builder.build")


class BuildWorker(BuilderWorker):
    """Checks every diskimage each pass; ``status`` (image -> IDLE, BUILDING
    or PAUSED) feeds the builder's gauges."""

    def __init__(self, builder: Builder, index: int, interval: float):
        super().__init__(builder, f"BuildWorker.{index}", interval)
        self.status: dict[str, int] = {}
        # Diskimage -> when its last build failed here. A failed build's own
        # record wakes the workers; without this it would be retried at once.
        self._failed_at: dict[str, float] = {}

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
        failed_at = self._failed_at.get(diskimage.name)
        if failed_at is not None and time.monotonic() - failed_at < self.interval:
            return False  # retried on a later periodic pass
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
        if ready:
            self._failed_at.pop(name, None)
        else:
            self._failed_at[name] = time.monotonic()
        if not self.store.update_build(final):
            log.error("Build %s-%s: its record is gone (removed while this builder "
                      "was away); deleting the local files", name, record.id)
            local.delete_build(builder.images_dir, name, record.id)
            return None
        return final
