"""Diskimages for the builder: the file is staged in a Cloud Object Storage
bucket (S3's REST API, authorised with the provider's IAM token), a VPC
image is made from its ``cos://`` address, and the staged object goes.
Blocking: an upload worker calls it."""

from __future__ import annotations

import logging
import os
import re
import time
from typing import TYPE_CHECKING
from xml.etree import ElementTree

import requests

from nodepool.drivers.base import DriverError
from nodepool.drivers.ibmvpc import naming

if TYPE_CHECKING:  # pragma: no cover
    from nodepool.drivers.ibmvpc.adapter import IbmVpcAdapter

log = logging.getLogger("nodepool.drivers.ibmvpc")

HTTP_TIMEOUT = 300.0
IMAGE_POLL = 1.0
S3_NS = re.compile(r"^\{[^}]*\}")


class UploadFailed(DriverError):
    pass


def _local(tag: str) -> str:
    return S3_NS.sub("", tag)


class Uploader:
    def __init__(self, adapter: "IbmVpcAdapter"):
        self.adapter = adapter
        self.session = requests.Session()

    @property
    def storage(self) -> dict[str, str] | None:
        return self.adapter.provider.object_storage

    def _request(self, method: str, path: str, **kwargs) -> requests.Response:
        storage = self.storage or {}
        url = f"{storage['endpoint'].rstrip('/')}/{storage['bucket-name']}{path}"
        token = self.adapter.api.clients.token()
        self.adapter.api.calls.writes.wait()
        reply = self.session.request(method, url, timeout=HTTP_TIMEOUT,
                                     headers={"Authorization": f"Bearer {token}"}, **kwargs)
        if reply.status_code >= 300 and not (method == "DELETE" and reply.status_code == 404):
            raise UploadFailed(f"object storage {method} {path or '/'}: "
                               f"{reply.status_code} {reply.text[:200]}")
        return reply

    def location(self) -> str:
        """The bucket's region (its location constraint less the storage class)."""
        reply = self._request("GET", "?location")
        constraint = (ElementTree.fromstring(reply.content).text or "").strip()
        return constraint.rsplit("-", 1)[0] if constraint.count("-") > 1 else constraint

    def staged_objects(self) -> list[str]:
        """Keys of the bucket's objects that are uploads of ours."""
        if not self.storage:
            return []
        reply = self._request("GET", "?list-type=2&prefix=npimage")
        return [element.text or "" for element in ElementTree.fromstring(reply.content).iter()
                if _local(element.tag) == "Key"]

    def delete_object(self, key: str) -> None:
        self._request("DELETE", f"/{key}")

    def upload(self, image_name: str, filename: str, image_format: str,
               provider_image) -> str:
        """Stage the file, make a VPC image of it in ``npimages_<provider>``
        and wait until it is available; returns the image's id."""
        adapter = self.adapter
        if not self.storage:
            raise UploadFailed(f"provider {adapter.provider.name} has no object-storage")
        key = f"{image_name}.{image_format}"
        href = f"cos://{self.location()}/{self.storage['bucket-name']}/{key}"
        with open(filename, "rb") as handle:
            self._request("PUT", f"/{key}", data=handle)
        log.info("Staged %s (%d bytes) as %s", filename, os.path.getsize(filename), href)
        try:
            account = adapter.account()
            group = adapter.ensure_group(account, naming.image_group(adapter.provider.name))
            image = adapter.api.vpc("create_image", {
                "name": image_name, "file": {"href": href},
                "resource_group": {"id": group["id"]},
                "operating_system": {"name": getattr(provider_image, "operating_system",
                                                     None) or "debian-12-amd64"}})
            self._wait_available(image, adapter.provider.image_upload_timeout)
        finally:
            # The image holds its own copy; the staged object is no longer needed.
            try:
                self.delete_object(key)
            except Exception as exc:
                log.warning("Could not delete staged object %s (the leak cleanup "
                            "will): %s", key, exc)
        log.info("Image %s available: %s", image_name, image["id"])
        return image["id"]

    def _wait_available(self, image: dict, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while image.get("status") != "available":
            if image.get("status") in ("failed", "deleting", "unusable"):
                raise UploadFailed(f"image {image.get('name')} is {image.get('status')}")
            if time.monotonic() > deadline:
                raise UploadFailed(f"image {image.get('name')} not available within "
                                   f"{timeout:.0f}s")
            time.sleep(IMAGE_POLL)
            image = self.adapter.api.vpc("get_image", image["id"])
