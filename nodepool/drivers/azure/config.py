"""The ``azure`` driver's configuration: upstream Nodepool's keys, validated
with voluptuous and built into dataclasses."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import voluptuous as v

from nodepool.config import schema as s
from nodepool.config.model import (
    CloudImage, Pool, PoolLabel, Provider, ProviderDiskImage, default_port,
)

# The ways a cloud image names what to boot; exactly one per image.
IMAGE_SPECS = ("image-reference", "image-id", "image-filter",
               "community-gallery-image", "shared-gallery-image")
# The keys that authenticate with OIDC federation instead of an auth file.
FEDERATION_KEYS = ("subscription-id", "tenant-id", "client-id", "federated-token-file")


@dataclass
class AzureCloudImage(CloudImage):
    password: str | None = None
    generate_password: bool = False
    # A public key installed for ``username`` (default: zuul-public-key).
    key: str | None = None
    # {"publisher", "offer", "sku", "version"} of a marketplace image.
    image_reference: dict[str, str] | None = None
    # {"location", "name", "tags"}: the newest image of ours that matches.
    image_filter: dict[str, Any] | None = None
    # {"gallery-name", "name", "version"}
    community_gallery_image: dict[str, str] | None = None
    shared_gallery_image: dict[str, str] | None = None


@dataclass
class AzureDiskImage(ProviderDiskImage):
    # Overrides of the diskimage's own login details.
    username: str | None = None
    python_path: str | None = None
    shell_type: str | None = None
    key: str | None = None


@dataclass
class NetworkSettings:
    """A pool's addresses: private ones of each family, public ones, and
    which is the node's ``interface_ip``."""

    ipv4: bool = True
    ipv6: bool = False
    public_ipv4: bool = True
    public_ipv6: bool = False
    use_internal_ip: bool = False


@dataclass
class AzureLabel(NetworkSettings, PoolLabel):
    vm_size: str = ""
    # Base64, as ARM takes them (upstream encodes them at load too).
    user_data: str | None = None
    custom_data: str | None = None
    volume_size: int | None = None
    # The pool's network settings (NetworkSettings) are copied to each of
    # its labels, so a launch needs only its label.
    pool_name: str = ""


@dataclass
class AzurePool(NetworkSettings, Pool):
    pass


@dataclass
class AzureProvider(Provider):
    location: str = ""
    resource_group: str = ""
    resource_group_location: str = ""
    # A service principal's credentials file (az ad sp create-for-rbac --sdk-auth) ...
    auth_path: str | None = None
    # ... or OIDC federation with a token file.
    subscription_id: str | None = None
    tenant_id: str | None = None
    client_id: str | None = None
    federated_token_file: str | None = None
    # The subnet every NIC goes on: a full resource id (subnet-id, or built
    # from ``network`` with the subscription once it is known).
    subnet_id: str | None = None
    network: dict[str, str] | None = None
    zuul_public_key: str | None = None
    # API operations per second (mutating calls; reads may go ten times as fast).
    rate: float = 1.0
    public_ipv4: bool = True
    public_ipv6: bool = False
    use_internal_ip: bool = False
    host_key_checking: bool = True


def encoded(text: str | None) -> str | None:
    """User and custom data as ARM wants them: base64 of the UTF-8 text."""
    if not text:
        return None
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


class AzureConfig:
    """Schema and typed config of an azure provider."""

    name = "azure"

    def provider_keys(self) -> dict:
        gallery_image = {v.Required("gallery-name"): s.NonEmptyStr,
                         v.Required("name"): s.NonEmptyStr, "version": s.Str}
        cloud_image = {
            v.Required("name"): s.NonEmptyStr,
            v.Required("username"): s.NonEmptyStr,
            "password": s.Str,
            "generate-password": s.Bool,
            "key": s.Str,
            "image-reference": {v.Required(k): s.NonEmptyStr
                                for k in ("sku", "publisher", "version", "offer")},
            "image-id": s.NonEmptyStr,
            "image-filter": {"location": s.Str, "name": s.Str, "tags": s.StrMap},
            "community-gallery-image": gallery_image,
            "shared-gallery-image": gallery_image,
            **s.image_connection,
        }
        diskimage = {
            v.Required("name"): s.NonEmptyStr,
            "username": s.Str,
            "key": s.Str,
            "pause": s.Bool,
            "tags": s.Map,
            **s.image_connection,
        }
        label = {
            v.Required("name"): s.NonEmptyStr,
            "cloud-image": s.Str,
            "diskimage": s.Str,
            v.Required("hardware-profile"): {v.Required("vm-size"): s.NonEmptyStr},
            "tags": s.Map,
            "dynamic-tags": s.Map,
            "user-data": s.Str,
            "custom-data": s.Str,
            "volume-size": s.Int,
        }
        network = {
            "ipv4": s.Bool,
            "ipv6": s.Bool,
            "public-ipv4": s.Bool,
            "public-ipv6": s.Bool,
            "use-internal-ip": s.Bool,
            "host-key-checking": s.Bool,
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
            v.Required("location"): s.NonEmptyStr,
            v.Required("resource-group"): s.NonEmptyStr,
            v.Required("resource-group-location"): s.NonEmptyStr,
            "auth-path": s.NonEmptyStr,
            **{key: s.NonEmptyStr for key in FEDERATION_KEYS},
            "subnet-id": s.NonEmptyStr,
            "network": v.Any(s.NonEmptyStr, {"resource-group": s.NonEmptyStr,
                                             "network": s.NonEmptyStr,
                                             "subnet": s.NonEmptyStr},
                             msg="expected a network name or a mapping of "
                                 "resource-group, network and subnet"),
            "cloud-images": s.ListOf(cloud_image),
            "diskimages": s.ListOf(diskimage),
            "post-upload-hook": s.Str,
            "rate": s.FloatLike,
            "boot-timeout": s.IntTimeout,
            "launch-timeout": s.IntTimeout,
            "launch-retries": s.Int,
            # Upstream's deprecated default of every cloud image's key.
            "zuul-public-key": s.Str,
        })
        return keys

    def build(self, raw: dict, ctx: s.BuildContext) -> AzureProvider:
        rate = s.operations_per_second(raw, ctx, 1.0)
        network = raw.get("network")
        if isinstance(network, str):
            network = {"network": network}
        provider = AzureProvider(
            name=raw["name"], driver=self.name,
            max_concurrency=raw.get("max-concurrency", -1),
            priority=raw.get("priority"), rate=rate,
            location=raw["location"], resource_group=raw["resource-group"],
            resource_group_location=raw["resource-group-location"],
            auth_path=raw.get("auth-path"),
            subscription_id=raw.get("subscription-id"), tenant_id=raw.get("tenant-id"),
            client_id=raw.get("client-id"),
            federated_token_file=raw.get("federated-token-file"),
            subnet_id=raw.get("subnet-id"), network=network,
            zuul_public_key=raw.get("zuul-public-key"),
            boot_timeout=raw.get("boot-timeout", 120),
            launch_timeout=raw.get("launch-timeout", 3600),
            launch_retries=raw.get("launch-retries", 3),
            image_type="vhd", post_upload_hook=raw.get("post-upload-hook"),
            public_ipv4=raw.get("public-ipv4", True),
            public_ipv6=raw.get("public-ipv6", False),
            use_internal_ip=raw.get("use-internal-ip", False),
            host_key_checking=raw.get("host-key-checking", True),
        )
        self._check_credentials(raw, ctx)
        if "subnet-id" not in raw and "network" not in raw:
            ctx.problem((), "either 'subnet-id' or 'network' is required (the "
                        "subnet of every node's network interface)")
        self._build_cloud_images(raw, provider, ctx)
        self._build_diskimages(raw, provider, ctx)
        for index, pool_raw in enumerate(raw.get("pools", [])):
            pool = self._build_pool(pool_raw, raw, provider, ctx, ("pools", index))
            ctx.add_pool(provider.pools, pool, index)
        return provider

    @staticmethod
    def _check_credentials(raw: dict, ctx: s.BuildContext) -> None:
        federation = [k for k in FEDERATION_KEYS if k in raw]
        if "auth-path" in raw:
            if federation:
                ctx.problem((federation[0],), "either 'auth-path' or the OIDC "
                            "federation keys, not both")
        elif not federation:
            ctx.problem((), "'auth-path' (a service principal's credentials "
                        "file) or OIDC federation ("
                        + ", ".join(FEDERATION_KEYS) + ") is required")
        else:
            for key in FEDERATION_KEYS:
                if key not in raw:
                    ctx.problem((key,), "required with OIDC federation")

    def _build_cloud_images(self, raw, provider, ctx) -> None:
        for index, item in enumerate(raw.get("cloud-images", [])):
            name = item["name"]
            where = ("cloud-images", index)
            s.check_cloud_image(ctx, where, item, provider, IMAGE_SPECS)
            connection_type = item.get("connection-type", "ssh")
            provider.cloud_images[name] = AzureCloudImage(
                name=name, image_id=item.get("image-id"),
                username=item["username"], password=item.get("password"),
                generate_password=item.get("generate-password", False),
                key=item.get("key", provider.zuul_public_key),
                image_reference=item.get("image-reference"),
                image_filter=item.get("image-filter"),
                community_gallery_image=item.get("community-gallery-image"),
                shared_gallery_image=item.get("shared-gallery-image"),
                python_path=item.get("python-path", "auto"),
                shell_type=item.get("shell-type"),
                connection_type=connection_type,
                connection_port=item.get("connection-port", default_port(connection_type)))

    def _build_diskimages(self, raw, provider, ctx) -> None:
        for index, item in enumerate(raw.get("diskimages", [])):
            name = item["name"]
            s.check_diskimage_reference(ctx, ("diskimages", index, "name"), name)
            connection_type = item.get("connection-type", "ssh")
            provider.diskimages[name] = AzureDiskImage(
                name=name, pause=item.get("pause", False),
                meta=dict(item.get("tags", {})),
                connection_type=connection_type,
                connection_port=item.get("connection-port", default_port(connection_type)),
                # The VM's admin account: the diskimage's user unless given.
                username=item.get("username", getattr(
                    ctx.diskimages.get(name), "username", None)),
                python_path=item.get("python-path"),
                shell_type=item.get("shell-type"),
                key=item.get("key", provider.zuul_public_key))

    def _build_pool(self, raw, provider_raw, provider, ctx, where) -> AzurePool:
        def inherited(key, default=None):
            return raw.get(key, provider_raw.get(key, default))

        public_ipv4 = inherited("public-ipv4", True)
        public_ipv6 = inherited("public-ipv6", False)
        # A public address needs a private one of its family (upstream's rule).
        ipv4 = bool(inherited("ipv4") or public_ipv4)
        ipv6 = bool(inherited("ipv6") or public_ipv6)
        if not (ipv4 or ipv6):
            ipv4 = True
        pool = AzurePool(
            name=raw["name"], max_servers=raw.get("max-servers"),
            priority=raw.get("priority"), node_attributes=raw.get("node-attributes"),
            max_cores=raw.get("max-cores"), max_ram=raw.get("max-ram"),
            max_resources=dict(raw.get("max-resources", {})),
            ipv4=ipv4, ipv6=ipv6, public_ipv4=public_ipv4, public_ipv6=public_ipv6,
            use_internal_ip=inherited("use-internal-ip", False),
            host_key_checking=inherited("host-key-checking", True),
        )
        ctx.add_labels(pool, raw.get("labels", []), lambda item, here:
                       self._build_label(item, pool, provider, ctx, here), where)
        return pool

    def _build_label(self, raw, pool: AzurePool, provider, ctx, where) -> AzureLabel:
        s.check_label_references(ctx, where, raw, provider)
        name, image, cloud_image = raw["name"], raw.get("diskimage"), raw.get("cloud-image")
        size = raw.get("volume-size")
        if size is not None and size <= 0:
            ctx.problem(where + ("volume-size",), f"must be a positive number of GB, "
                        f"got {size!r}")
        return AzureLabel(
            name=name, diskimage=image, cloud_image=cloud_image,
            instance_properties=dict(raw.get("tags", {})),
            dynamic_instance_properties=dict(raw.get("dynamic-tags", {})),
            host_key_checking=pool.host_key_checking,
            vm_size=raw["hardware-profile"]["vm-size"],
            user_data=encoded(raw.get("user-data")),
            custom_data=encoded(raw.get("custom-data")),
            volume_size=size, pool_name=pool.name,
            ipv4=pool.ipv4, ipv6=pool.ipv6, public_ipv4=pool.public_ipv4,
            public_ipv6=pool.public_ipv6, use_internal_ip=pool.use_internal_ip)
