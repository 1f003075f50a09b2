"""The ``azure`` driver's adapter: the contract of ``drivers/base.py`` over
Azure Resource Manager. The state machines are in ``machines.py``, the
resources' bodies in ``resources.py``, diskimage uploads in ``images.py``
and the ARM client in ``api.py``."""

from __future__ import annotations

import logging
import threading

from nodepool.config.model import ProviderDiskImage
from nodepool.drivers.azure.api import ArmApi, Lro, last_part, tags_of
from nodepool.drivers.azure.config import AzureDiskImage, AzureLabel, AzureProvider
from nodepool.drivers.azure.images import Uploader
from nodepool.drivers.azure.machines import AzureCreate, AzureDelete
from nodepool.drivers.azure import resources as bodies
from nodepool.drivers.base import (
    META_NODE_ID, Adapter, Instance, NotFound, Resource, RuntimeConfigurationError,
    cloud_image_found,
)
from nodepool.drivers.ratelimit import cloud_executor
from nodepool.resources import Resources

log = logging.getLogger("nodepool.drivers.azure")

VM = "Microsoft.Compute/virtualMachines"
NIC = "Microsoft.Network/networkInterfaces"
PIP = "Microsoft.Network/publicIPAddresses"
DISK = "Microsoft.Compute/disks"
IMAGE = "Microsoft.Compute/images"
LOCATIONS = "Microsoft.Compute/locations"
# Leak cleanup's resource types (alphanumeric, for metric names) by ARM kind.
RESOURCE_TYPES = {VM: "instance", NIC: "nic", PIP: "pip", DISK: "disk", IMAGE: "image"}


class VmSizes:
    """Cores and memory of the location's VM sizes, asked of ARM once."""

    def __init__(self, api: ArmApi, location: str):
        self.api = api
        self.location = location
        self._known: dict[str, dict] | None = None
        self._lock = threading.Lock()

    def get(self, name: str) -> dict:
        """The size's description; blocking the first time."""
        with self._lock:
            if self._known is None:
                path = f"{self.api.subscription}/providers/{LOCATIONS}/{self.location}/vmSizes"
                self._known = {s["name"].lower(): s for s in self.api.list(path, LOCATIONS)}
            found = self._known.get(name.lower())
        if found is None:
            raise RuntimeConfigurationError(f"unknown VM size {name!r} in {self.location}")
        return found

    def known(self, name: str) -> dict | None:
        with self._lock:
            return (self._known or {}).get(name.lower())

    @staticmethod
    def resources(size: dict) -> Resources:
        return Resources({"cores": int(size["numberOfCores"]),
                          "ram": int(size["memoryInMB"]), "instances": 1})


class AzureAdapter(Adapter):
    provider: AzureProvider

    def __init__(self, provider: AzureProvider):
        super().__init__(provider)
        from nodepool.stats import make_client
        self.api = ArmApi(provider, make_client())
        self.executor = cloud_executor("azure", provider.name, provider.rate)
        self.sizes = VmSizes(self.api, provider.location)
        self.images = bodies.ImageChooser(self.api, provider)
        self.uploader = Uploader(self.api, provider)
        self._group_ready = False

    def reconfigure(self, provider: AzureProvider) -> None:
        super().reconfigure(provider)
        self.images.provider = self.uploader.provider = provider

    def stop(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.api.session.close()

    # -- the resources of one node (blocking: run on the executor) -------------------

    def ensure_group(self) -> None:
        """The provider's resource group, created (in resource-group-location)
        the first time it is found missing."""
        if self._group_ready:
            return
        path = self.api.group_path()
        try:
            self.api.get(path, "resourceGroups")
        except NotFound:
            log.info("Provider %s: creating resource group %s in %s", self.provider.name,
                     self.provider.resource_group, self.provider.resource_group_location)
            self.api.request("PUT", path, "resourceGroups",
                             {"location": self.provider.resource_group_location,
                              "tags": {"nodepool_provider_name": self.provider.name}})
        self._group_ready = True

    @staticmethod
    def public_ip_versions(label: AzureLabel) -> list[str]:
        return [v for v, wanted in (("IPv4", label.public_ipv4),
                                    ("IPv6", label.public_ipv6)) if wanted]

    def create_public_ip(self, hostname: str, version: str, metadata: dict) -> Lro:
        return self.api.begin("PUT", self.api.resource_path(
            PIP, bodies.pip_name(hostname, version)), PIP,
            bodies.public_ip(self.provider, version, metadata))

    def create_nic(self, hostname: str, label: AzureLabel, metadata: dict) -> Lro:
        pips = {v: self.api.resource_path(PIP, bodies.pip_name(hostname, v))
                for v in self.public_ip_versions(label)}
        body = bodies.nic(self.provider, label, self.subnet_id(), pips, metadata)
        return self.api.begin("PUT", self.api.resource_path(NIC, f"{hostname}-nic"),
                              NIC, body)

    def create_vm(self, hostname: str, label: AzureLabel, image_id: str | None,
                  metadata: dict[str, str]) -> Lro:
        image = self.images.reference(label, image_id)
        body = bodies.vm(self.provider, label, hostname, image,
                         self.api.resource_path(NIC, f"{hostname}-nic"), metadata)
        lro = self.api.begin("PUT", self.api.resource_path(VM, hostname), VM, body)
        log.info("Node %s: creating VM %s (%s, %s)", metadata.get(META_NODE_ID),
                 hostname, label.name, label.vm_size)
        return lro

    def tag_disk(self, hostname: str, metadata: dict[str, str]) -> Lro:
        return self.api.begin("PATCH", self.api.resource_path(
            DISK, bodies.disk_name(hostname)), DISK, {"tags": bodies.tags(metadata)})

    def describe(self, hostname: str, label: AzureLabel | None = None) -> Instance:
        """The VM and the addresses of its NIC and public IPs, fresh."""
        vm = self.api.get(self.api.resource_path(VM, hostname), VM)
        nic = self.api.get(self.api.resource_path(NIC, f"{hostname}-nic"), NIC)
        pips = {}
        for version in self.public_ip_versions(label) if label else ("IPv4", "IPv6"):
            try:
                pip = self.api.get(self.api.resource_path(
                    PIP, bodies.pip_name(hostname, version)), PIP)
                pips[pip["id"].lower()] = pip
            except NotFound:
                pass
        return self.instance(vm, {nic["id"].lower(): nic}, pips, label)

    def node_resources(self, hostname: str) -> list[tuple[str, str, str]]:
        """(step, kind, name) of what a node is made of, in deletion order."""
        return [("vm", VM, hostname), ("nic", NIC, f"{hostname}-nic"),
                ("pip-IPv4", PIP, bodies.pip_name(hostname, "IPv4")),
                ("pip-IPv6", PIP, bodies.pip_name(hostname, "IPv6")),
                ("disk", DISK, bodies.disk_name(hostname))]

    def delete(self, kind: str, name: str) -> Lro:
        try:
            return self.api.begin("DELETE", self.api.resource_path(kind, name), kind)
        except NotFound:
            return Lro(f"DELETE {name}", None, "done")

    def subnet_id(self) -> str:
        provider = self.provider
        if provider.subnet_id:
            return provider.subnet_id
        network = provider.network or {}
        group = network.get("resource-group") or provider.resource_group
        return (f"{self.api.group_path(group)}/providers/Microsoft.Network/"
                f"virtualNetworks/{network.get('network')}/subnets/"
                f"{network.get('subnet', 'default')}")

    # -- instances -------------------------------------------------------------------

    def pool_label(self, pool_name: str | None) -> AzureLabel | None:
        """Any label of a pool (they share its network settings)."""
        pool = self.provider.pools.get(pool_name or "")
        if pool is None:
            return None
        return next(iter(pool.labels.values()), None)  # type: ignore[return-value]

    def instance(self, vm: dict, nics: dict[str, dict], pips: dict[str, dict],
                 label: AzureLabel | None = None) -> Instance:
        """A VM as the launcher sees it (its size if known already: never a
        blocking call here)."""
        tags = tags_of(vm)
        if label is None:
            label = self.pool_label(tags.get("nodepool_pool_name"))
        props = vm.get("properties") or {}
        addresses = bodies.addresses(props, nics, pips)
        private4, private6, public4, public6 = (addresses.get(k) for k in (
            "private4", "private6", "public4", "public6"))
        if label is not None and label.use_internal_ip:
            interface = private4 or private6 or public4 or public6
        else:
            interface = public4 or public6 or private4 or private6
        size = self.sizes.known((props.get("hardwareProfile") or {}).get("vmSize") or "")
        return Instance(
            external_id=vm["name"], interface_ip=interface, public_ipv4=public4,
            public_ipv6=public6, private_ipv4=private4, private_ipv6=private6,
            cloud="Azure", region=vm.get("location") or self.provider.location,
            az=",".join(vm.get("zones") or []) or None, metadata=tags,
            resources=dict(VmSizes.resources(size)) if size else None,
            deleted=props.get("provisioningState") == "Deleting")

    def create_state_machine(self, hostname, label, image_external_id, metadata,
                             request, az):
        return AzureCreate(self, hostname, label, image_external_id, metadata, az)

    def delete_state_machine(self, external_id):
        return AzureDelete(self, external_id)

    def _list(self, kind: str) -> list[dict]:
        try:
            return self.api.list(self.api.resource_path(kind), kind)
        except NotFound:  # no resource group yet: nothing in it
            return []

    def list_instances(self) -> list[Instance]:
        vms = self._list(VM)
        for size in {(v.get("properties") or {}).get("hardwareProfile", {}).get("vmSize")
                     for v in vms} - {None}:
            try:
                self.sizes.get(size)
            except Exception as exc:
                log.debug("No size of VM size %s: %s", size, exc)
        nics = {n["id"].lower(): n for n in self._list(NIC)}
        pips = {p["id"].lower(): p for p in self._list(PIP)}
        return [self.instance(vm, nics, pips) for vm in vms]

    # -- leaks -------------------------------------------------------------------------

    def list_resources(self) -> list[Resource]:
        """VMs, NICs, public IPs, disks and images of the resource group."""
        return [Resource(RESOURCE_TYPES[kind], item["name"], tags_of(item))
                for kind in (VM, NIC, PIP, DISK, IMAGE) for item in self._list(kind)]

    def delete_resource(self, resource: Resource) -> None:
        """Started, not waited for: the next cleanup pass sees whether it went."""
        kind = next(k for k, t in RESOURCE_TYPES.items() if t == resource.type)
        if kind == VM:
            # A leaked VM takes its NIC, addresses and disk with it.
            for _, part, name in self.node_resources(resource.id):
                self._delete_now(part, name)
            return
        self.api.begin("DELETE", self.api.resource_path(kind, resource.id), kind)

    def _delete_now(self, kind: str, name: str) -> None:
        """Delete and wait (a VM must be gone before its NIC can go)."""
        self.api.wait(self.delete(kind, name), kind, timeout=900)

    # -- quota ---------------------------------------------------------------------------

    def quota_for_label(self, label: AzureLabel) -> Resources:
        return VmSizes.resources(self.sizes.get(label.vm_size))

    def quota_limits(self) -> Resources:
        """The location's regional vCPU and VM count limits."""
        path = f"{self.api.subscription}/providers/{LOCATIONS}/{self.provider.location}/usages"
        names = {"cores": "cores", "virtualMachines": "instances"}
        limits = Resources(default=float("inf"))
        for usage in self.api.list(path, LOCATIONS):
            name = names.get((usage.get("name") or {}).get("value"))
            if name is not None and usage.get("limit") is not None:
                limits[name] = float(usage["limit"])
        return limits

    def capacity_key(self, label: AzureLabel) -> str:
        return label.vm_size

    def label_ready(self, label: AzureLabel) -> bool:
        return cloud_image_found(self, label, lambda: self.images.reference(label, None))

    # -- images ------------------------------------------------------------------------------

    def upload_image(self, image_name: str, filename: str, image_format: str,
                     metadata: dict[str, str],
                     provider_image: ProviderDiskImage | None = None) -> str:
        self.ensure_group()
        tags = dict(provider_image.meta if isinstance(provider_image, AzureDiskImage)
                    else {})
        tags.update(metadata)
        return self.uploader.upload(image_name, filename, tags)

    def delete_image(self, external_id: str) -> None:
        self._delete_now(IMAGE, last_part(external_id))

    def list_images(self) -> list[dict]:
        return [{"id": i["id"], "name": i["name"], "properties": tags_of(i)}
                for i in self._list(IMAGE)]
