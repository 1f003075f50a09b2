"""The ``gce`` driver's adapter: the contract of ``drivers/base.py`` over the
Compute Engine v1 API (google-api-python-client). The state machines are in
``machines.py`` and the API plumbing in ``api.py``."""

from __future__ import annotations

import logging
import threading
import time

from nodepool.drivers.base import (
    META_NODE_ID, Adapter, Instance, LaunchError, NotFound, Resource,
    RuntimeConfigurationError, cloud_image_found,
)
from nodepool.drivers.gce.api import GceApi, last_part, metadata_dict, metadata_items
from nodepool.drivers.gce.config import GceCloudImage, GceLabel, GceProvider
from nodepool.drivers.gce.machines import GceCreate, GceDelete
from nodepool.drivers.listing import SharedListing
from nodepool.drivers.ratelimit import cloud_executor
from nodepool.resources import Resources

log = logging.getLogger("nodepool.drivers.gce")

# A family's newest image is looked up again after this many seconds.
IMAGE_TTL = 300.0
# The launcher's OpenStack-style "groups" entry means nothing to GCE.
SKIPPED_METADATA = ("groups",)


class MachineTypes:
    """guestCpus and memoryMb of machine types, asked of GCE once each."""

    def __init__(self, api: GceApi, zone: str):
        self.api = api
        self.zone = zone
        self._known: dict[str, dict] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> dict:
        """The machine type's description; blocking the first time."""
        with self._lock:
            known = self._known.get(name)
        if known is not None:
            return known
        try:
            found = self.api.call("machineTypes", "get", zone=self.zone, machineType=name)
        except NotFound:
            raise RuntimeConfigurationError(
                f"unknown machine type {name!r} in zone {self.zone}") from None
        with self._lock:
            self._known[name] = found
        return found

    def known(self, name: str) -> dict | None:
        with self._lock:
            return self._known.get(name)

    @staticmethod
    def resources(machine_type: dict) -> Resources:
        return Resources({"cores": int(machine_type["guestCpus"]),
                          "ram": int(machine_type["memoryMb"]), "instances": 1})


class GceAdapter(Adapter):
    provider: GceProvider

    def __init__(self, provider: GceProvider):
        super().__init__(provider)
        from nodepool.stats import make_client
        self.api = GceApi(provider, make_client())
        self.executor = cloud_executor("gce", provider.name, provider.rate)
        self.listing = SharedListing(self._list_all, f"gce-{provider.name}")
        self.types = MachineTypes(self.api, provider.zone)
        self._images: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()

    def stop(self) -> None:
        self.listing.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)

    # -- instances -------------------------------------------------------------

    def _list_all(self) -> dict[str, dict]:
        return {i["name"]: i for i in self.api.pages(
            "instances", "list", zone=self.provider.zone, maxResults=500)}

    def pool_label(self, pool_name: str | None) -> GceLabel | None:
        """Any label of a pool (they share its network settings)."""
        pool = self.provider.pools.get(pool_name or "")
        if pool is None:
            return None
        return next(iter(pool.labels.values()), None)  # type: ignore[return-value]

    def instance(self, data: dict, label: GceLabel | None = None) -> Instance:
        """A GCE instance as the launcher sees it (its size if its machine
        type is known already: never a blocking call here)."""
        metadata = metadata_dict(data.get("metadata"))
        if label is None:
            label = self.pool_label(metadata.get("nodepool_pool_name"))
        private = public = None
        for nic in (data.get("networkInterfaces") or [])[:1]:
            private = nic.get("networkIP")
            for access in nic.get("accessConfigs") or []:
                public = public or access.get("natIP")
        if label is not None and label.use_internal_ip:
            interface = private or public
        else:
            interface = public or private
        machine_type = self.types.known(last_part(data.get("machineType")))
        zone = last_part(data.get("zone")) or self.provider.zone
        return Instance(
            external_id=data["name"], interface_ip=interface, public_ipv4=public,
            private_ipv4=private, cloud="Google", region=self.provider.region, az=zone,
            metadata=metadata,
            resources=dict(MachineTypes.resources(machine_type)) if machine_type else None,
            deleted=data.get("status") == "TERMINATED")

    def create_state_machine(self, hostname, label, image_external_id, metadata,
                             request, az):
        return GceCreate(self, hostname, label, metadata)

    def delete_state_machine(self, external_id):
        return GceDelete(self, external_id)

    def list_instances(self) -> list[Instance]:
        found = self.listing.fetch().values()
        for name in {last_part(i.get("machineType")) for i in found}:
            try:
                self.types.get(name)
            except Exception as exc:
                log.debug("No size of machine type %s: %s", name, exc)
        return [self.instance(i) for i in found]

    def launch(self, hostname: str, label: GceLabel, metadata: dict[str, str]) -> dict:
        """instances.insert (blocking: runs on the executor); returns its
        Operation."""
        provider = self.provider
        image = provider.cloud_images[label.cloud_image or ""]
        machine_type = self.types.get(label.instance_type)
        items = {k: v for k, v in label.instance_properties.items()}
        items.update({k: v for k, v in metadata.items() if k not in SKIPPED_METADATA})
        if isinstance(image, GceCloudImage) and image.key:
            items["ssh-keys"] = f"{image.username}:{image.key}"
        interface = {"network": label.network,
                     "accessConfigs": [{"type": "ONE_TO_ONE_NAT",
                                        "name": "External NAT"}]}
        if label.subnetwork:
            interface["subnetwork"] = label.subnetwork
        body = {
            "name": hostname,
            "machineType": machine_type.get("selfLink")
            or f"zones/{provider.zone}/machineTypes/{label.instance_type}",
            "disks": [{"boot": True, "autoDelete": True, "initializeParams": {
                "sourceImage": self.image_source(image),
                "diskType": f"zones/{provider.zone}/diskTypes/{label.volume_type}",
                "diskSizeGb": str(label.volume_size)}}],
            "networkInterfaces": [interface],
            "serviceAccounts": [],
            "metadata": metadata_items(items),
        }
        operation = self.api.call("instances", "insert", zone=provider.zone, body=body)
        log.info("Node %s: inserting instance %s (%s)", metadata.get(META_NODE_ID),
                 hostname, label.name)
        return operation

    def delete_instance(self, name: str) -> dict:
        return self.api.call("instances", "delete", zone=self.provider.zone,
                             instance=name)

    # -- images ------------------------------------------------------------------

    def image_source(self, image: GceCloudImage) -> str:
        """What a boot disk is made from: the cloud image's image-id (a bare
        name is looked for in image-project, else this project), or the
        newest image of its family (looked up once a while)."""
        if image.image_id:
            if "/" in image.image_id:
                return image.image_id
            project = image.image_project or self.provider.project
            return f"projects/{project}/global/images/{image.image_id}"
        key = f"{image.image_project}/{image.image_family}"
        with self._lock:
            cached = self._images.get(key)
        if cached is not None and time.monotonic() - cached[0] < IMAGE_TTL:
            return cached[1]
        found = self.api.call("images", "getFromFamily", project=image.image_project,
                              family=image.image_family)
        link = found.get("selfLink")
        if not link:
            raise LaunchError(f"image family {key} has no image")
        with self._lock:
            self._images[key] = (time.monotonic(), link)
        return link

    def label_ready(self, label: GceLabel) -> bool:
        return cloud_image_found(self, label, lambda: self.image_source(
            self.provider.cloud_images[label.cloud_image or ""]))

    # -- leaks ---------------------------------------------------------------------

    def list_resources(self) -> list[Resource]:
        return [Resource("instance", name, metadata_dict(data.get("metadata")))
                for name, data in self.listing.fetch().items()]

    def delete_resource(self, resource: Resource) -> None:
        if resource.type == "instance":
            self.delete_instance(resource.id)

    # -- quota -------------------------------------------------------------------------

    def quota_for_label(self, label: GceLabel) -> Resources:
        return MachineTypes.resources(self.types.get(label.instance_type))

    def quota_limits(self) -> Resources:
        """The region's CPUS and INSTANCES quotas."""
        region = self.api.call("regions", "get", region=self.provider.region)
        names = {"CPUS": "cores", "INSTANCES": "instances"}
        limits = Resources(default=float("inf"))
        for quota in region.get("quotas") or []:
            name = names.get(quota.get("metric"))
            if name is not None and quota.get("limit") is not None:
                limits[name] = float(quota["limit"])
        return limits

    def capacity_key(self, label: GceLabel) -> str:
        return label.instance_type

    def console_log(self, external_id) -> str | None:
        reply = self.api.call("instances", "getSerialPortOutput",
                              zone=self.provider.zone, instance=external_id)
        return reply.get("contents")
