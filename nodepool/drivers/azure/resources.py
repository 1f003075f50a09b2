"""The ARM bodies of a node's resources (public IPs, NIC, VM), what image
a VM boots, and the addresses a described VM has."""

from __future__ import annotations

import secrets
import threading
import time
from typing import Any

from nodepool.drivers.azure.api import ArmApi, tags_of
from nodepool.drivers.azure.config import AzureCloudImage, AzureLabel, AzureProvider
from nodepool.drivers.base import ImageUnavailable

# The launcher's OpenStack-style "groups" entry means nothing to Azure.
SKIPPED_METADATA = ("groups",)
# A filter's newest matching image is looked up again after this many seconds.
IMAGE_TTL = 300.0


def pip_name(hostname: str, version: str) -> str:
    return f"{hostname}-pip-{version}"


def disk_name(hostname: str) -> str:
    return f"{hostname}-disk"


def tags(metadata: dict[str, str], extra: dict[str, Any] | None = None) -> dict[str, str]:
    """The node's metadata as ARM tags (every resource of a node carries
    them, so each can be recognised as a leak on its own)."""
    found = {str(k): str(v) for k, v in (extra or {}).items()}
    found.update({k: v for k, v in metadata.items() if k not in SKIPPED_METADATA})
    return found


def public_ip(provider: AzureProvider, version: str, metadata: dict[str, str]) -> dict:
    # Standard SKU (static): the only one ARM still offers for new addresses.
    return {"location": provider.location, "tags": tags(metadata),
            "sku": {"name": "Standard"},
            "properties": {"publicIPAllocationMethod": "Static",
                           "publicIPAddressVersion": version}}


def nic(provider: AzureProvider, label: AzureLabel, subnet_id: str,
        public_ips: dict[str, str], metadata: dict[str, str]) -> dict:
    configurations = []
    for version, wanted in (("IPv4", label.ipv4), ("IPv6", label.ipv6)):
        if not wanted:
            continue
        properties: dict[str, Any] = {"privateIPAddressVersion": version,
                                      "subnet": {"id": subnet_id},
                                      "primary": not configurations}
        if version in public_ips:
            properties["publicIPAddress"] = {"id": public_ips[version]}
        configurations.append({"name": f"nodepool-{version.lower()}-ip-config",
                               "properties": properties})
    return {"location": provider.location, "tags": tags(metadata),
            "properties": {"ipConfigurations": configurations}}


def vm(provider: AzureProvider, label: AzureLabel, hostname: str, image: dict,
       nic_id: str, metadata: dict[str, str]) -> dict:
    """The VM: the label's size and data, the image's login, the node's tags."""
    login = image["login"]
    os_profile: dict[str, Any] = {"computerName": hostname,
                                  "adminUsername": login["username"]}
    password = login.get("password")
    if login.get("generate_password"):
        password = secrets.token_urlsafe(24) + "aA1!"
    if password:
        os_profile["adminPassword"] = password
    if login.get("key"):
        os_profile["linuxConfiguration"] = {
            "disablePasswordAuthentication": not password,
            "ssh": {"publicKeys": [{
                "path": f"/home/{login['username']}/.ssh/authorized_keys",
                "keyData": login["key"]}]}}
    if label.custom_data:
        os_profile["customData"] = label.custom_data
    os_disk: dict[str, Any] = {"name": disk_name(hostname), "createOption": "FromImage",
                               "caching": "ReadWrite",
                               "managedDisk": {"storageAccountType": "Standard_LRS"}}
    if label.volume_size:
        os_disk["diskSizeGB"] = label.volume_size
    properties: dict[str, Any] = {
        "hardwareProfile": {"vmSize": label.vm_size},
        "storageProfile": {"imageReference": image["reference"], "osDisk": os_disk},
        "osProfile": os_profile,
        "networkProfile": {"networkInterfaces": [{"id": nic_id,
                                                  "properties": {"primary": True}}]},
    }
    if label.user_data:
        properties["userData"] = label.user_data
    return {"location": provider.location,
            "tags": tags(metadata, label.instance_properties),
            "properties": properties}


def addresses(vm_properties: dict, nics: dict[str, dict], pips: dict[str, dict]
              ) -> dict[str, str]:
    """private4/private6/public4/public6 of a VM, from its NICs and their
    public IPs (as listed or fetched, by lower-case resource id)."""
    found: dict[str, str] = {}
    for ref in (vm_properties.get("networkProfile") or {}).get("networkInterfaces") or []:
        nic_data = nics.get(str(ref.get("id")).lower()) or {}
        for config in (nic_data.get("properties") or {}).get("ipConfigurations") or []:
            props = config.get("properties") or {}
            family = "6" if props.get("privateIPAddressVersion") == "IPv6" else "4"
            if props.get("privateIPAddress"):
                found.setdefault("private" + family, props["privateIPAddress"])
            pip_ref = (props.get("publicIPAddress") or {}).get("id")
            address = ((pips.get(str(pip_ref).lower()) or {}).get("properties")
                       or {}).get("ipAddress")
            if address:
                found.setdefault("public" + ("6" if ":" in address else "4"), address)
    return found


class ImageChooser:
    """The ``imageReference`` and login of what a label boots: its cloud
    image (marketplace reference, image id, gallery image, or the newest of
    our images a filter matches) or its diskimage's upload."""

    def __init__(self, api: ArmApi, provider: AzureProvider):
        self.api = api
        self.provider = provider
        self._filtered: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()

    def reference(self, label: AzureLabel, image_id: str | None) -> dict:
        """Blocking (a filter may list images)."""
        if label.diskimage:
            image = self.provider.diskimages[label.diskimage]
            if not image_id:
                raise ImageUnavailable(f"no upload of diskimage {label.diskimage}")
            return {"reference": {"id": image_id},
                    "login": {"username": getattr(image, "username", None) or "zuul",
                              "key": getattr(image, "key", None)}}
        cloud = self.provider.cloud_images[label.cloud_image or ""]
        assert isinstance(cloud, AzureCloudImage)
        login = {"username": cloud.username, "password": cloud.password,
                 "generate_password": cloud.generate_password, "key": cloud.key}
        return {"reference": self._cloud_reference(cloud), "login": login}

    def _cloud_reference(self, image: AzureCloudImage) -> dict:
        if image.image_reference:
            return dict(image.image_reference)
        if image.image_id:
            return {"id": image.image_id}
        for key, gallery, field in (
                ("sharedGalleryImageId", image.shared_gallery_image, "SharedGalleries"),
                ("communityGalleryImageId", image.community_gallery_image,
                 "CommunityGalleries")):
            if gallery:
                return {key: f"/{field}/{gallery['gallery-name']}/Images/"
                             f"{gallery['name']}/Versions/{gallery.get('version', 'latest')}"}
        return {"id": self._filtered_image(image)}

    def _filtered_image(self, image: AzureCloudImage) -> str:
        """The newest (last by name, as builds are named by time) image of
        the subscription that matches the filter's location, name and tags."""
        wanted = image.image_filter or {}
        key = repr(sorted(wanted.items()))
        with self._lock:
            cached = self._filtered.get(key)
        if cached is not None and time.monotonic() - cached[0] < IMAGE_TTL:
            return cached[1]
        kind = "Microsoft.Compute/images"
        found = [i for i in self.api.list(f"{self.api.subscription}/providers/{kind}", kind)
                 if matches(i, wanted)]
        if not found:
            raise ImageUnavailable(f"no image matches the image-filter of cloud-image "
                                   f"{image.name!r} ({wanted})")
        chosen = max(found, key=lambda i: i["name"])["id"]
        with self._lock:
            self._filtered[key] = (time.monotonic(), chosen)
        return chosen


def matches(image: dict, wanted: dict) -> bool:
    if wanted.get("location") and image.get("location") != wanted["location"]:
        return False
    if wanted.get("name") and image.get("name") != wanted["name"]:
        return False
    have = tags_of(image)
    return all(have.get(k) == str(v) for k, v in (wanted.get("tags") or {}).items())
