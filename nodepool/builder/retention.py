"""Retention and cleanup: keep the current and the previous ready build of
each diskimage (and the two newest ready uploads per provider, which the
launchers boot and fall back to), delete the rest in the clouds, in
ZooKeeper and on disk; remove everything of diskimages and providers that
left the configuration; clear records orphaned by a builder that died."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from nodepool.builder import local
from nodepool.builder.base import BuilderWorker, image_providers
from nodepool.config.model import Config
from nodepool.drivers import NotFound
from nodepool.zk import paths
from nodepool.zk.locks import Lock, is_locked
from nodepool.zk.image_records import ImageUpload
from nodepool.zk.records import BuildState, UploadState

if TYPE_CHECKING:
    from nodepool.builder.builder import Builder

log = logging.getLogger("nodepool.builder.retention")


class CleanupWorker(BuilderWorker):
    """One per builder: a retention and cleanup pass on image changes and
    every cleanup interval, ending with the builder's gauges."""

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
