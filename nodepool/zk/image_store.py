"""The image half of :class:`nodepool.zk.store.Store`: builds, uploads,
pause flags, build requests and their locks under ``/nodepool/images``.

A mixin so that one ``Store`` still serves every record; it uses the
store's ``client`` and ``kazoo``.
"""

from __future__ import annotations

import logging
import uuid
from typing import Container

from kazoo.client import KazooClient
from kazoo.exceptions import NodeExistsError, NoNodeError

from nodepool.zk import paths
from nodepool.zk.client import ZooKeeperClient
from nodepool.zk.image_records import ImageBuild, ImageUpload
from nodepool.zk.locks import Lock
from nodepool.zk.records import BuildState, CorruptRecord

log = logging.getLogger("nodepool.zk.store")


class ImageRecords:
    """Image build and upload records (spec 2.4-2.5)."""

    client: ZooKeeperClient
    kazoo: KazooClient

    def image_names(self) -> list[str]:
        try:
            return sorted(self.kazoo.get_children(paths.IMAGES))
        except NoNodeError:
            return []

    def store_build(self, build: ImageBuild) -> str:
        """Create (new uuid id) or overwrite a build record; returns its id."""
        if build.id is None:
            build.id = uuid.uuid4().hex
            self.kazoo.create(paths.build(build.image_name, build.id),
                              build.to_json(), makepath=True)
            build.version = 0
        else:
            path = paths.build(build.image_name, build.id)
            try:
                stat = self.kazoo.set(path, build.to_json())
                build.version = stat.version
            except NoNodeError:
                self.kazoo.create(path, build.to_json(), makepath=True)
                build.version = 0
        return build.id

    def update_build(self, build: ImageBuild) -> bool:
        """Overwrite an existing build record; False if it no longer exists
        (never re-creates one that a cleanup removed)."""
        try:
            stat = self.kazoo.set(paths.build(build.image_name, build.id),
                                  build.to_json())
        except NoNodeError:
            return False
        build.version = stat.version
        return True

    def get_build(self, image_name: str, build_id: str) -> ImageBuild | None:
        return self.client.read_record(
            paths.build(image_name, build_id),
            lambda data, version: ImageBuild.from_json(image_name, build_id, data,
                                                       version),
            "build record")

    def build_ids(self, image_name: str) -> list[str]:
        try:
            children = self.kazoo.get_children(paths.image_builds(image_name))
        except NoNodeError:
            return []
        return [c for c in children if c != paths.LOCK_DIR]

    def get_builds(self, image_name: str) -> list[ImageBuild]:
        """All builds of an image, newest state_time first."""
        ids = self.build_ids(image_name)
        builds = []
        for build_id, result in zip(ids, self.client.get_many(
                paths.build(image_name, b) for b in ids)):
            if result is None:
                continue
            try:
                build = ImageBuild.from_json(image_name, build_id, *result[:1],
                                             version=result[1].version)
            except CorruptRecord as exc:
                log.warning("Corrupt build record %s-%s: %s", image_name, build_id, exc)
                continue
            if build is not None:
                builds.append(build)
        return sorted(builds, key=lambda b: b.state_time, reverse=True)

    def delete_build(self, image_name: str, build_id: str) -> None:
        try:
            self.kazoo.delete(paths.build(image_name, build_id), recursive=True)
        except NoNodeError:
            pass

    def store_upload(self, upload: ImageUpload) -> str:
        """Create (sequential id) or overwrite an upload record; returns its id."""
        if upload.id is None:
            path = self.kazoo.create(
                paths.uploads(upload.image_name, upload.build_id,
                              upload.provider_name) + "/",
                upload.to_json(), sequence=True, makepath=True)
            upload.id = path.rsplit("/", 1)[1]
            upload.version = 0
        else:
            stat = self.kazoo.set(upload.path, upload.to_json())
            upload.version = stat.version
        return upload.id

    def get_upload(self, image_name: str, build_id: str, provider: str,
                   upload_id: str) -> ImageUpload | None:
        return self.client.read_record(
            paths.upload(image_name, build_id, provider, upload_id),
            lambda data, version: ImageUpload.from_json(
                image_name, build_id, provider, upload_id, data, version),
            "upload record")

    def upload_ids(self, image_name: str, build_id: str, provider: str) -> list[str]:
        try:
            children = self.kazoo.get_children(paths.uploads(image_name, build_id,
                                                             provider))
        except NoNodeError:
            return []
        return [c for c in children if c != paths.LOCK_DIR]

    def get_uploads(self, image_name: str, build_id: str,
                    provider: str) -> list[ImageUpload]:
        base = paths.uploads(image_name, build_id, provider)
        ids = self.upload_ids(image_name, build_id, provider)
        uploads = []
        for upload_id, result in zip(ids, self.client.get_many(
                f"{base}/{u}" for u in ids)):
            if result is None:
                continue
            try:
                upload = ImageUpload.from_json(image_name, build_id, provider,
                                               upload_id, result[0], result[1].version)
            except CorruptRecord as exc:
                log.warning("Corrupt upload record %s/%s: %s", base, upload_id, exc)
                continue
            if upload is not None:
                uploads.append(upload)
        return sorted(uploads, key=lambda u: u.state_time, reverse=True)

    def upload_providers(self, image_name: str, build_id: str) -> list[str]:
        try:
            return sorted(self.kazoo.get_children(
                paths.build_providers(image_name, build_id)))
        except NoNodeError:
            return []

    def delete_upload(self, upload: ImageUpload) -> None:
        try:
            self.kazoo.delete(upload.path, recursive=True)
        except NoNodeError:
            pass

    def has_upload_records(self, image_name: str, build_id: str) -> bool:
        """Whether any upload znode (any state, even empty) is left under the
        build, for any provider."""
        providers = self.upload_providers(image_name, build_id)
        listings = self.client.get_children_many(
            paths.uploads(image_name, build_id, p) for p in providers)
        return any(c != paths.LOCK_DIR for children in listings
                   for c in children or ())

    def erase_provider_uploads(self, image_name: str, build_id: str,
                               provider: str) -> None:
        """Remove every upload record of one provider under a build."""
        try:
            self.kazoo.delete(f"{paths.build_providers(image_name, build_id)}/"
                              f"{provider}", recursive=True)
        except NoNodeError:
            pass

    # Raw record text, as nodepool.builder.transfer backs it up and restores it.

    def read_text(self, path: str) -> str | None:
        try:
            return self.kazoo.get(path)[0].decode("utf-8")
        except NoNodeError:
            return None

    def write_text(self, path: str, text: str) -> None:
        """Overwrite the znode, or create it with its parents."""
        raw = text.encode("utf-8")
        try:
            self.kazoo.create(path, raw, makepath=True)
        except NodeExistsError:
            self.kazoo.set(path, raw)

    def advance_upload_numbers(self, image_name: str, build_id: str, provider: str,
                               number: int, keep: Container[str]) -> None:
        """Take sequence numbers in the upload directory until ``number`` is
        taken, deleting the znodes made that are not in ``keep``."""
        parent = paths.uploads(image_name, build_id, provider)
        self.kazoo.ensure_path(parent)
        while True:
            created = self.kazoo.create(parent + "/", b"", sequence=True)
            if created not in keep:
                self.kazoo.delete(created)
            if int(created.rsplit("/", 1)[1]) >= number:
                return

    def pause_image(self, image_name: str) -> None:
        try:
            self.kazoo.create(paths.image_pause(image_name), b"", makepath=True)
        except NodeExistsError:
            pass

    def unpause_image(self, image_name: str) -> None:
        try:
            self.kazoo.delete(paths.image_pause(image_name))
        except NoNodeError:
            pass

    def is_image_paused(self, image_name: str) -> bool:
        return self.kazoo.exists(paths.image_pause(image_name)) is not None

    def request_build(self, image_name: str) -> None:
        try:
            self.kazoo.create(paths.image_build_request(image_name), b"",
                              makepath=True)
        except NodeExistsError:
            pass

    def build_requested_at(self, image_name: str) -> float | None:
        stat = self.kazoo.exists(paths.image_build_request(image_name))
        return None if stat is None else stat.ctime / 1000.0

    def build_request_status(self, image_name: str) -> str | None:
        """None without a ``request-build`` flag; ``building`` while a build
        started after the request holds the image build lock; else
        ``pending``."""
        requested_at = self.build_requested_at(image_name)
        if requested_at is None:
            return None
        from nodepool.zk.locks import is_locked
        if is_locked(self.client, paths.image_build_lock(image_name)) and any(
                b.state == BuildState.BUILDING and b.state_time >= requested_at
                for b in self.get_builds(image_name)):
            return "building"
        return "pending"

    def remove_build_request(self, image_name: str) -> None:
        try:
            self.kazoo.delete(paths.image_build_request(image_name))
        except NoNodeError:
            pass

    def lock_image_build(self, image_name: str, blocking: bool = False,
                         timeout: float | None = None) -> Lock | None:
        lock = Lock(self.client, paths.image_build_lock(image_name))
        return lock if lock.acquire(blocking=blocking, timeout=timeout) else None

    def lock_upload(self, image_name: str, build_id: str, provider: str,
                    blocking: bool = False, timeout: float | None = None) -> Lock | None:
        lock = Lock(self.client, paths.upload_lock(image_name, build_id, provider))
        return lock if lock.acquire(blocking=blocking, timeout=timeout) else None
