"""Uploads: each image-managing provider gets the newest ready build of
each of its diskimages, one upload per (build, provider) cluster-wide under
the upload lock, with an optional post-upload hook."""

from __future__ import annotations

import logging
import subprocess
import time
from typing import TYPE_CHECKING

from nodepool.builder import local
from nodepool.builder.base import (
    IDLE, PAUSED, UPLOADING, BuilderError, BuilderWorker, image_providers,
    newest_ready,
)
from nodepool.config.model import Config, DiskImage, Provider, ProviderDiskImage
from nodepool.drivers import DriverUnavailable
from nodepool.zk.image_records import ImageBuild, ImageUpload
from nodepool.zk.records import BuildState, UploadState

if TYPE_CHECKING:
    from nodepool.builder.builder import Builder

log = logging.getLogger("nodepool.builder.upload")


class UploadWorker(BuilderWorker):
    """Checks every (provider, diskimage) each pass; ``status`` ((image,
    provider) -> IDLE, UPLOADING or PAUSED) feeds the builder's gauges."""

    def __init__(self, builder: Builder, index: int, interval: float):
        super().__init__(builder, f"UploadWorker.{index}", interval)
        self.status: dict[tuple[str, str], int] = {}
        # (image, build id, provider) -> when its last upload failed. Every
        # record written wakes the workers, so without this a failing upload
        # would be retried at once, over and over, against the cloud.
        self._failed_at: dict[tuple[str, str, str], float] = {}

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
        attempt = (name, build.id, provider.name)
        failed_at = self._failed_at.get(attempt)
        if failed_at is not None and time.monotonic() - failed_at < self.interval:
            return False  # retried on a later periodic pass
        lock = self.store.lock_upload(name, build.id, provider.name)
        if lock is None:
            return False
        try:
            if self.should_stop:
                return False
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
            if result.state == UploadState.READY:
                self._failed_at.pop(attempt, None)
                return True
            self._failed_at[attempt] = time.monotonic()
            return False
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
            image_name=diskimage.name, upload_id=upload.id, build_id=build.id,
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
                {k: str(v) for k, v in metadata.items()},
                provider_image=provider_image)
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
