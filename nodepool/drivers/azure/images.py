"""Diskimages for the builder: the VHD goes into a managed disk made for
upload (written page by page through the disk's write SAS), a managed image
is made from that disk, and the disk goes. Blocking: an upload worker calls
it."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from nodepool.drivers.base import DriverError

if TYPE_CHECKING:  # pragma: no cover
    from nodepool.drivers.azure.api import ArmApi
    from nodepool.drivers.azure.config import AzureProvider

log = logging.getLogger("nodepool.drivers.azure")

DISK = "Microsoft.Compute/disks"
IMAGE = "Microsoft.Compute/images"
# Page blob writes: at most 4 MiB each, on 512-byte boundaries.
CHUNK = 4 * 1024 * 1024
SAS_SECONDS = 24 * 3600
UPLOAD_TIMEOUT = 60.0


class UploadFailed(DriverError):
    pass


class Uploader:
    def __init__(self, api: "ArmApi", provider: "AzureProvider"):
        self.api = api
        self.provider = provider

    def upload(self, image_name: str, filename: str, tags: dict[str, str]) -> str:
        """Upload the VHD and make an image of it; returns the image's id.
        Both the disk and the image carry the upload's tags, so whatever an
        interrupted upload leaves is found as a leak."""
        api = self.api
        size = os.path.getsize(filename)
        if size % 512:
            raise UploadFailed(f"{filename}: {size} bytes is not a whole number of "
                               "512-byte sectors (not a fixed-size VHD)")
        disk_path = api.resource_path(DISK, image_name)
        api.wait(api.begin("PUT", disk_path, DISK, {
            "location": self.provider.location, "tags": tags,
            "sku": {"name": "Standard_LRS"},
            "properties": {"osType": "Linux", "creationData": {
                "createOption": "Upload", "uploadSizeBytes": size}}}), DISK)
        try:
            granted = api.wait(api.begin("POST", disk_path + "/beginGetAccess", DISK, {
                "access": "Write", "durationInSeconds": SAS_SECONDS}), DISK) or {}
            sas = granted.get("accessSAS") or (
                (granted.get("properties") or {}).get("output") or {}).get("accessSAS")
            if not sas:
                raise UploadFailed(f"no write access to disk {image_name}: {granted}")
            written = self._write_pages(filename, sas)
            api.wait(api.begin("POST", disk_path + "/endGetAccess", DISK), DISK)
            log.info("Uploaded %s (%d of %d bytes not blank) to disk %s", filename,
                     written, size, image_name)
            image = api.wait(api.begin("PUT", api.resource_path(IMAGE, image_name), IMAGE, {
                "location": self.provider.location, "tags": tags,
                "properties": {"hyperVGeneration": "V2", "storageProfile": {"osDisk": {
                    "osType": "Linux", "osState": "Generalized",
                    "managedDisk": {"id": disk_path}}}}}), IMAGE)
        finally:
            # The image holds its own copy; the upload disk is no longer needed.
            try:
                api.wait(api.begin("DELETE", disk_path, DISK), DISK, timeout=900)
            except Exception as exc:
                log.warning("Could not delete upload disk %s (the leak cleanup "
                            "will): %s", image_name, exc)
        log.info("Image %s created: %s", image_name, image["id"])
        return image["id"]

    def _write_pages(self, filename: str, sas: str) -> int:
        """Put each non-blank chunk of the file (a new disk reads as zeros)."""
        written = 0
        offset = 0
        separator = "&" if "?" in sas else "?"
        with open(filename, "rb") as handle:
            while True:
                data = handle.read(CHUNK)
                if not data:
                    return written
                if data.strip(b"\0"):
                    self.api.calls.writes.wait()
                    reply = self.api.session.put(
                        f"{sas}{separator}comp=page", data=data, timeout=UPLOAD_TIMEOUT,
                        headers={"x-ms-page-write": "update", "x-ms-version": "2021-08-06",
                                 "x-ms-range": f"bytes={offset}-{offset + len(data) - 1}"})
                    if reply.status_code != 201:
                        raise UploadFailed(f"page write at {offset} refused: "
                                           f"{reply.status_code} {reply.text[:200]}")
                    written += len(data)
                offset += len(data)
