"""The ``ibmvpc`` driver's configuration: upstream Nodepool's keys, validated
with voluptuous and built into dataclasses."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import voluptuous as v

from nodepool.config import schema as s
from nodepool.config.model import (
    CloudImage, Pool, PoolLabel, Provider, ProviderDiskImage, default_port,
)

# The ways a cloud image names what to boot; exactly one per image.
IMAGE_SPECS = ("image-href", "image-id", "image-name", "image-filter")
# Provider and pool names end up in resource group names (np_<provider>_<pool>),
# where the underscore is the separator.
NO_UNDERSCORE = re.compile(r"^[^_]+$")
# Uploads are named so leak cleanup can read their build and upload ids back
# (upstream: npimage<upload id>; the build id is ours, for the launcher's
# leak check, which knows an upload by both).
IMAGE_NAME_FORMAT = "npimage{build_id}-{upload_id}"
QUOTA_KEYS = ("instances", "cores", "ram")


@dataclass
class IbmVpcCloudImage(CloudImage):
    # Names of VPC SSH keys installed for ``username``.
    keys: list[str] = field(default_factory=list)
    image_href: str | None = None
    # {"operating-system": {...}, "owner-type", "status"}: the first image
    # the VPC lists that matches.
    image_filter: dict[str, Any] | None = None


@dataclass
class IbmVpcDiskImage(ProviderDiskImage):
    # The VPC operating system the upload is registered as (e.g. debian-12-amd64).
    operating_system: str = ""
    username: str | None = None
    python_path: str | None = None
    shell_type: str | None = None


@dataclass
class NetworkSettings:
    """Where a pool's instances go and how they are reached."""

    zone: str = ""
    subnet: str = ""
    public_ipv4: bool = False
    use_internal_ip: bool = False


@dataclass
class IbmVpcLabel(NetworkSettings, PoolLabel):
    profile: str = ""
    user_data: str | None = None
    # The pool's settings (NetworkSettings) are copied here, so a launch
    # needs only its label.
    pool_name: str = ""


@dataclass
class IbmVpcPool(NetworkSettings, Pool):
    pass


@dataclass
class IbmVpcProvider(Provider):
    region: str = ""
    vpc: str = ""
    zone: str | None = None
    subnet: str | None = None
    # IBM's env-style credentials file (VPC_AUTH_TYPE, VPC_APIKEY, ...);
    # None: the SDK's usual places (environment, ibm-credentials.env).
    credentials_file: str | None = None
    # {"instance-name", "endpoint", "bucket-name"}: where uploads are staged.
    object_storage: dict[str, str] | None = None
    # Known account limits (the VPC API does not tell them).
    quota: dict[str, int] = field(default_factory=dict)
    rate: float = 1.0


class IbmVpcConfig:
    """Schema and typed config of an ibmvpc provider."""

    name = "ibmvpc"

    def provider_keys(self) -> dict:
        os_filter = {"architecture": s.Str, "dedicated-host-only": s.Bool,
                     "display-name": s.Str, "family": s.Str, "href": s.Str,
                     "name": s.Str, "vendor": s.Str, "version": s.Str}
        cloud_image = {
            v.Required("name"): s.NonEmptyStr,
            v.Required("username"): s.NonEmptyStr,
            "keys": s.ListOf(s.NonEmptyStr),
            "image-href": s.NonEmptyStr,
            "image-id": s.NonEmptyStr,
            "image-name": s.NonEmptyStr,
            "image-filter": {"operating-system": os_filter, "owner-type": s.Str,
                             "status": s.Str},
            **s.image_connection,
        }
        diskimage = {
            v.Required("name"): s.NonEmptyStr,
            v.Required("operating-system"): s.NonEmptyStr,
            "pause": s.Bool,
            **s.image_connection,
        }
        label = {
            v.Required("name"): s.NonEmptyStr,
            "cloud-image": s.Str,
            "diskimage": s.Str,
            v.Required("profile"): s.NonEmptyStr,
            "user-data": s.Str,
        }
        network = {
            "public-ipv4": s.Bool,
            "use-internal-ip": s.Bool,
            "host-key-checking": s.Bool,
            "zone": s.NonEmptyStr,
            "subnet": s.NonEmptyStr,
        }
        pool = dict(s.pool_common)
        pool.update(network)
        pool.update({
            v.Required("labels"): s.ListOf(label),
            # Ours, not upstream's: the launcher's limits, as in our other
            # drivers' pools.
            "max-cores": s.Int,
            "max-ram": s.Int,
            "max-resources": {v.Extra: s.Int},
        })
        keys = dict(s.provider_common)
        keys.update(network)
        keys.update({
            v.Required("pools"): s.ListOf(pool),
            v.Required("vpc"): s.NonEmptyStr,
            v.Required("region"): s.NonEmptyStr,
            "cloud-images": s.ListOf(cloud_image),
            "diskimages": s.ListOf(diskimage),
            "quota": {key: s.Int for key in QUOTA_KEYS},
            "post-upload-hook": s.Str,
            "rate": s.FloatLike,
            "boot-timeout": s.IntTimeout,
            "launch-timeout": s.IntTimeout,
            "launch-retries": s.Int,
            "credentials-file": s.NonEmptyStr,
            "object-storage": {v.Required(k): s.NonEmptyStr
                               for k in ("instance-name", "endpoint", "bucket-name")},
        })
        return keys

    def build(self, raw: dict, ctx: s.BuildContext) -> IbmVpcProvider:
        rate = s.operations_per_second(raw, ctx, 1.0)
        if not NO_UNDERSCORE.match(raw["name"]):
            ctx.problem(("name",), "may not contain '_' (it separates the parts "
                        "of the resource group names nodepool uses)")
        provider = IbmVpcProvider(
            name=raw["name"], driver=self.name,
            max_concurrency=raw.get("max-concurrency", -1),
            priority=raw.get("priority"), rate=rate,
            region=raw["region"], vpc=raw["vpc"],
            zone=raw.get("zone"), subnet=raw.get("subnet"),
            credentials_file=raw.get("credentials-file"),
            object_storage=raw.get("object-storage"),
            quota=dict(raw.get("quota", {})),
            boot_timeout=raw.get("boot-timeout", 120),
            launch_timeout=raw.get("launch-timeout", 3600),
            launch_retries=raw.get("launch-retries", 3),
            image_type="qcow2", image_name_format=IMAGE_NAME_FORMAT,
            post_upload_hook=raw.get("post-upload-hook"),
        )
        self._build_cloud_images(raw, provider, ctx)
        self._build_diskimages(raw, provider, ctx)
        if provider.diskimages and not provider.object_storage:
            ctx.problem(("diskimages",), "uploads need 'object-storage' (the "
                        "bucket images are staged in)")
        for index, pool_raw in enumerate(raw.get("pools", [])):
            pool = self._build_pool(pool_raw, raw, provider, ctx, ("pools", index))
            ctx.add_pool(provider.pools, pool, index)
        return provider

    def _build_cloud_images(self, raw, provider, ctx) -> None:
        for index, item in enumerate(raw.get("cloud-images", [])):
            name = item["name"]
            where = ("cloud-images", index)
            s.check_cloud_image(ctx, where, item, provider, IMAGE_SPECS)
            connection_type = item.get("connection-type", "ssh")
            provider.cloud_images[name] = IbmVpcCloudImage(
                name=name, image_id=item.get("image-id"),
                image_name=item.get("image-name"), image_href=item.get("image-href"),
                image_filter=item.get("image-filter"),
                username=item["username"], keys=list(item.get("keys", [])),
                python_path=item.get("python-path", "auto"),
                shell_type=item.get("shell-type"),
                connection_type=connection_type,
                connection_port=item.get("connection-port", default_port(connection_type)))

    def _build_diskimages(self, raw, provider, ctx) -> None:
        for index, item in enumerate(raw.get("diskimages", [])):
            name = item["name"]
            s.check_diskimage_reference(ctx, ("diskimages", index, "name"), name)
            connection_type = item.get("connection-type", "ssh")
            provider.diskimages[name] = IbmVpcDiskImage(
                name=name, pause=item.get("pause", False),
                operating_system=item["operating-system"],
                connection_type=connection_type,
                connection_port=item.get("connection-port", default_port(connection_type)),
                username=getattr(ctx.diskimages.get(name), "username", None),
                python_path=item.get("python-path"),
                shell_type=item.get("shell-type"))

    def _build_pool(self, raw, provider_raw, provider, ctx, where) -> IbmVpcPool:
        def inherited(key, default=None):
            return raw.get(key, provider_raw.get(key, default))

        if not NO_UNDERSCORE.match(raw["name"]):
            ctx.problem(where + ("name",), "may not contain '_' (it separates the "
                        "parts of the resource group names nodepool uses)")
        for key in ("zone", "subnet"):
            if not inherited(key):
                ctx.problem(where, f"'{key}' is required (in the pool or its provider)")
        pool = IbmVpcPool(
            name=raw["name"], max_servers=raw.get("max-servers"),
            priority=raw.get("priority"), node_attributes=raw.get("node-attributes"),
            max_cores=raw.get("max-cores"), max_ram=raw.get("max-ram"),
            max_resources=dict(raw.get("max-resources", {})),
            zone=inherited("zone", ""), subnet=inherited("subnet", ""),
            public_ipv4=inherited("public-ipv4", False),
            use_internal_ip=inherited("use-internal-ip", False),
            host_key_checking=inherited("host-key-checking", True),
        )
        ctx.add_labels(pool, raw.get("labels", []), lambda item, here:
                       self._build_label(item, pool, provider, ctx, here), where)
        return pool

    def _build_label(self, raw, pool: IbmVpcPool, provider, ctx, where) -> IbmVpcLabel:
        s.check_label_references(ctx, where, raw, provider)
        return IbmVpcLabel(
            name=raw["name"], diskimage=raw.get("diskimage"),
            cloud_image=raw.get("cloud-image"),
            host_key_checking=pool.host_key_checking,
            profile=raw["profile"], user_data=raw.get("user-data"),
            pool_name=pool.name, zone=pool.zone, subnet=pool.subnet,
            public_ipv4=pool.public_ipv4, use_internal_ip=pool.use_internal_ip)
