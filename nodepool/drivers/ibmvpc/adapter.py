"""The ``ibmvpc`` driver's adapter: the contract of ``drivers/base.py`` over
IBM Cloud VPC (IBM's Python SDK). The state machines are in ``machines.py``,
diskimage uploads in ``images.py``, names and metadata in ``naming.py`` and
the API plumbing in ``api.py``."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from nodepool.config.model import ProviderDiskImage
from nodepool.drivers.base import (
    META_NODE_ID, Adapter, ImageUnavailable, Instance, NotFound, Resource,
    RuntimeConfigurationError, cloud_image_found,
)
from nodepool.drivers.ibmvpc import naming
from nodepool.drivers.ibmvpc.api import IbmApi
from nodepool.drivers.ibmvpc.config import IbmVpcCloudImage, IbmVpcLabel, IbmVpcProvider
from nodepool.drivers.ibmvpc.images import Uploader
from nodepool.drivers.ibmvpc.machines import IbmVpcCreate, IbmVpcDelete
from nodepool.drivers.listing import SharedListing
from nodepool.drivers.ratelimit import cloud_executor
from nodepool.resources import Resources

log = logging.getLogger("nodepool.drivers.ibmvpc")


@dataclass
class Account:
    """What launches refer to by name, looked up once: the VPC, subnets,
    SSH keys, instance profiles and resource groups (ours made if missing)."""

    vpc: dict
    subnets: dict[str, dict]
    keys: dict[str, dict]
    profiles: dict[str, dict]
    groups: dict[str, dict] = field(default_factory=dict)

    def group_name(self, reference: dict | None) -> str | None:
        """A resource group reference's name (image listings give only its id)."""
        reference = reference or {}
        if reference.get("name"):
            return reference["name"]
        return next((g["name"] for g in self.groups.values()
                     if g.get("id") == reference.get("id")), None)


def profile_resources(profile: dict | None) -> Resources:
    """Cores and RAM (MB; profiles say GB) of an instance profile."""
    if not profile:
        return Resources({"instances": 1})
    return Resources({"cores": int((profile.get("vcpu_count") or {}).get("value", 0)),
                      "ram": int((profile.get("memory") or {}).get("value", 0)) * 1024,
                      "instances": 1})


class IbmVpcAdapter(Adapter):
    provider: IbmVpcProvider

    def __init__(self, provider: IbmVpcProvider):
        super().__init__(provider)
        from nodepool.stats import make_client
        self.api = IbmApi(provider, make_client())
        self.executor = cloud_executor("ibmvpc", provider.name, provider.rate)
        self.instances = SharedListing(lambda: self._by_name("list_instances", "instances"),
                                       f"ibmvpc-{provider.name}")
        self.uploader = Uploader(self)
        self._account: Account | None = None
        self._lock = threading.Lock()

    def stop(self) -> None:
        self.instances.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)

    # -- the account (blocking) ---------------------------------------------------------

    def account(self) -> Account:
        with self._lock:
            if self._account is None:
                self._account = self._look_up()
            return self._account

    def _look_up(self) -> Account:
        api, provider = self.api, self.provider
        vpc = next((v for v in api.pages("list_vpcs", "vpcs")
                    if provider.vpc in (v.get("name"), v.get("id"))), None)
        if vpc is None:
            raise RuntimeConfigurationError(f"no VPC {provider.vpc!r} in {provider.region}")
        subnets = {s["name"]: s for s in api.pages("list_subnets", "subnets")}
        account = Account(
            vpc=vpc, subnets=subnets,
            keys={k["name"]: k for k in api.pages("list_keys", "keys")},
            profiles={p["name"]: p for p in
                      api.vpc("list_instance_profiles").get("profiles") or []},
            groups={g["name"]: g for g in api.call("manager", "list_resource_groups")
                    .get("resources") or []})
        for pool in provider.pools.values():
            self.ensure_group(account, naming.pool_group(provider.name, pool.name))
        return account

    def ensure_group(self, account: Account, name: str) -> dict:
        if name not in account.groups:
            log.info("Provider %s: creating resource group %s", self.provider.name, name)
            made = self.api.call("manager", "create_resource_group", name=name)
            account.groups[name] = dict(made, name=name)
        return account.groups[name]

    # -- one node's parts (blocking: run on the executor) -------------------------------------

    def create_floating_ip(self, hostname: str, label: IbmVpcLabel) -> dict:
        group = self.account().groups[naming.pool_group(self.provider.name, label.pool_name)]
        return self.api.vpc("create_floating_ip", {
            "name": hostname, "zone": {"name": label.zone},
            "resource_group": {"id": group["id"]}})

    def create_instance(self, hostname: str, label: IbmVpcLabel, image_id: str | None,
                        metadata: dict[str, str]) -> dict:
        account = self.account()
        subnet = account.subnets.get(label.subnet) or next(
            (s for s in account.subnets.values() if s.get("id") == label.subnet), None)
        if subnet is None:
            raise RuntimeConfigurationError(f"no subnet {label.subnet!r} in the VPC")
        if (subnet.get("zone") or {}).get("name", label.zone) != label.zone:
            raise RuntimeConfigurationError(f"subnet {label.subnet!r} is not in zone "
                                            f"{label.zone!r}")
        cloud = self.provider.cloud_images.get(label.cloud_image or "")
        keys = []
        for name in getattr(cloud, "keys", None) or []:
            if name not in account.keys:
                raise RuntimeConfigurationError(f"no VPC SSH key {name!r}")
            keys.append({"id": account.keys[name]["id"]})
        group = account.groups[naming.pool_group(self.provider.name, label.pool_name)]
        body = {
            "name": hostname, "profile": {"name": label.profile},
            "image": self.image_reference(label, image_id),
            "vpc": {"id": account.vpc["id"]}, "zone": {"name": label.zone},
            "resource_group": {"id": group["id"]}, "keys": keys,
            "primary_network_interface": {"name": "eth0", "subnet": {"id": subnet["id"]}},
            "boot_volume_attachment": {"delete_volume_on_instance_delete": True,
                                       "volume": {"name": f"{hostname}-boot",
                                                  "profile": {"name": "general-purpose"}}},
        }
        if label.user_data:
            body["user_data"] = label.user_data
        made = self.api.vpc("create_instance", body)
        log.info("Node %s: creating instance %s (%s, %s)", metadata.get(META_NODE_ID),
                 hostname, label.name, label.profile)
        return made

    def attach_floating_ip(self, vm: dict, fip: dict) -> dict:
        return self.api.vpc("add_instance_network_interface_floating_ip", vm["id"],
                            vm["primary_network_interface"]["id"], fip["id"])

    def floating_ips(self) -> dict[str, dict]:
        return self._by_name("list_floating_ips", "floating_ips")

    def delete_floating_ip(self, name: str) -> None:
        """The node's floating IP, if it has one (found by its name)."""
        found = self.floating_ips().get(name)
        if found is not None:
            try:
                self.api.vpc("delete_floating_ip", found["id"])
            except NotFound:
                pass

    def delete_instance(self, name: str) -> bool:
        """Start deleting the instance of that name; False if there is none."""
        found = self.instances.fetch().get(name)
        if found is None:
            return False
        try:
            self.api.vpc("delete_instance", found["id"])
        except NotFound:
            return False
        return True

    # -- images ------------------------------------------------------------------------------

    def image_reference(self, label: IbmVpcLabel, image_id: str | None) -> dict:
        """What an instance boots (blocking: a name or filter lists images)."""
        if label.diskimage:
            if not image_id:
                raise ImageUnavailable(f"no upload of diskimage {label.diskimage}")
            return {"id": image_id}
        image = self.provider.cloud_images[label.cloud_image or ""]
        assert isinstance(image, IbmVpcCloudImage)
        if image.image_id:
            return {"id": image.image_id}
        if image.image_href:
            return {"href": image.image_href}
        images = self.api.pages("list_images", "images")
        found = [i for i in images if matches(i, image)]
        if not found:
            raise ImageUnavailable(f"no image matches cloud-image {image.name!r}")
        return {"id": found[0]["id"]}

    def label_ready(self, label: IbmVpcLabel) -> bool:
        return cloud_image_found(self, label, lambda: self.image_reference(label, None))

    def upload_image(self, image_name: str, filename: str, image_format: str,
                     metadata: dict[str, str],
                     provider_image: ProviderDiskImage | None = None) -> str:
        return self.uploader.upload(image_name, filename, image_format, provider_image)

    def delete_image(self, external_id: str) -> None:
        try:
            self.api.vpc("delete_image", external_id)
        except NotFound:
            pass

    def list_images(self) -> list[dict]:
        account = self.account()
        return [{"id": i["id"], "name": i["name"], "properties": naming.metadata(
            i["name"], account.group_name(i.get("resource_group")))}
            for i in self.api.pages("list_images", "images", visibility="private")]

    # -- instances ---------------------------------------------------------------------------

    def _by_name(self, method: str, items: str) -> dict[str, dict]:
        return {i["name"]: i for i in self.api.pages(method, items)}

    def instance(self, vm: dict, fip: dict | None, label: IbmVpcLabel | None = None
                 ) -> Instance:
        """An instance as the launcher sees it (its size if its profile is
        known already: never a blocking call here)."""
        account = self._account
        group = account.group_name(vm.get("resource_group")) if account else \
            (vm.get("resource_group") or {}).get("name")
        metadata = naming.metadata(vm["name"], group)
        if label is None:
            pool = self.provider.pools.get(metadata.get("nodepool_pool_name", ""))
            label = next(iter(pool.labels.values()), None) if pool else None  # type: ignore
        nic = vm.get("primary_network_interface") or {}
        private = (nic.get("primary_ip") or {}).get("address") or \
            nic.get("primary_ipv4_address")
        if fip is not None and (fip.get("target") or {}).get("id") != nic.get("id"):
            fip = None
        public = fip.get("address") if fip else None
        if label is not None and label.use_internal_ip:
            interface = private or public
        else:
            interface = public or private
        profile = account.profiles.get((vm.get("profile") or {}).get("name")) \
            if account else None
        return Instance(
            external_id=vm["name"], interface_ip=interface, public_ipv4=public,
            private_ipv4=private, cloud="IBM", region=self.provider.region,
            az=(vm.get("zone") or {}).get("name"), metadata=metadata,
            resources=dict(profile_resources(profile)) if profile else None,
            deleted=vm.get("status") == "deleting")

    def create_state_machine(self, hostname, label, image_external_id, metadata,
                             request, az):
        return IbmVpcCreate(self, hostname, label, image_external_id, metadata, az)

    def delete_state_machine(self, external_id):
        return IbmVpcDelete(self, external_id)

    def list_instances(self) -> list[Instance]:
        self.account()
        fips = self.floating_ips()
        return [self.instance(vm, fips.get(name))
                for name, vm in self.instances.fetch().items()]

    # -- leaks --------------------------------------------------------------------------------

    def list_resources(self) -> list[Resource]:
        """Instances, floating IPs and uploads (images and staged objects)."""
        account = self.account()
        found = []
        for kind, items in (("instance", self.instances.fetch().values()),
                            ("fip", self.floating_ips().values()),
                            ("image", self.api.pages("list_images", "images",
                                                     visibility="private"))):
            for item in items:
                group = account.group_name(item.get("resource_group"))
                # An instance is known by its name (the node's external id).
                ident = item["name"] if kind == "instance" else item["id"]
                found.append(Resource(kind, ident, naming.metadata(item["name"], group)))
        group = naming.image_group(self.provider.name)
        found += [Resource("object", key, naming.metadata(key, group))
                  for key in self.uploader.staged_objects()]
        return found

    def delete_resource(self, resource: Resource) -> None:
        """Started, not waited for: the next cleanup pass sees whether it went."""
        if resource.type == "object":
            self.uploader.delete_object(resource.id)
            return
        if resource.type == "instance":
            self.delete_instance(resource.id)
            return
        method = {"fip": "delete_floating_ip", "image": "delete_image"}[resource.type]
        self.api.vpc(method, resource.id)

    # -- quota ----------------------------------------------------------------------------------

    def quota_for_label(self, label: IbmVpcLabel) -> Resources:
        profile = self.account().profiles.get(label.profile)
        if profile is None:
            raise RuntimeConfigurationError(f"unknown instance profile {label.profile!r}")
        return profile_resources(profile)

    def quota_limits(self) -> Resources:
        """The provider's ``quota`` (the VPC API does not tell account limits)."""
        limits = Resources(default=float("inf"))
        for key, value in self.provider.quota.items():
            limits[key] = float(value)
        return limits

    def capacity_key(self, label: IbmVpcLabel) -> str:
        return label.profile


def matches(image: dict, wanted: IbmVpcCloudImage) -> bool:
    """Whether a listed image is the one a cloud image names (image-name)
    or describes (image-filter)."""
    if wanted.image_name:
        return image.get("name") == wanted.image_name
    spec = wanted.image_filter or {}
    have_os = image.get("operating_system") or {}
    for key, value in (spec.get("operating-system") or {}).items():
        if have_os.get(key.replace("-", "_")) != value:
            return False
    return all(image.get(key.replace("-", "_")) == spec[key]
               for key in ("owner-type", "status") if key in spec)
