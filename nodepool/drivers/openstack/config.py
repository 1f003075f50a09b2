"""The ``openstack`` driver: configuration schema, typed config, capabilities."""

from __future__ import annotations

import string
from dataclasses import dataclass, field

import voluptuous as v

from nodepool.config import schema as s
from nodepool.config.model import (
    CloudImage, Pool, PoolLabel, Provider, ProviderDiskImage, default_port,
)
from nodepool.drivers.openstack import clouds

IMAGE_NAME_FIELDS = {"image_name", "timestamp", "upload_id"}


@dataclass
class OpenStackLabel(PoolLabel):
    min_ram: int = 0
    flavor_name: str | None = None
    key_name: str | None = None
    console_log: bool = False
    boot_from_volume: bool = False
    volume_size: int = 50
    volume_type: str | None = None
    userdata: str | None = None
    networks: list[str] = field(default_factory=list)


@dataclass
class OpenStackPool(Pool):
    networks: list[str] = field(default_factory=list)
    security_groups: list[str] = field(default_factory=list)
    auto_floating_ip: bool = True


@dataclass
class OpenStackProvider(Provider):
    cloud: str | None = None
    region_name: str | None = None
    rate: float = 1.0
    clean_floating_ips: bool = False
    port_cleanup_interval: int = 600
    # Hand out a server's IPv6 address as interface_ip when it has one.
    ipv6_preferred: bool = False


class OpenStackConfig:
    """Schema and typed config of an openstack provider (the Driver in the
    package's ``__init__`` adds capabilities and the adapter)."""

    name = "openstack"
    provider_class: type[OpenStackProvider] = OpenStackProvider

    def provider_keys(self) -> dict:
        provider_diskimage = {
            v.Required("name"): s.NonEmptyStr,
            "pause": s.Bool,
            "meta": s.Map,
            "config-drive": s.Bool,
            "connection-type": s.Str,
            "connection-port": s.Port,
        }
        cloud_image = {
            v.Required("name"): s.NonEmptyStr,
            "image-id": s.Str,
            "image-name": s.Str,
            "config-drive": s.Bool,
            "username": s.Str,
            **s.image_connection,
        }
        label = {
            v.Required("name"): s.NonEmptyStr,
            "diskimage": s.Str,
            "cloud-image": s.Str,
            "min-ram": s.Int,
            "flavor-name": s.Str,
            "key-name": s.Str,
            "console-log": s.Bool,
            "boot-from-volume": s.Bool,
            "volume-size": s.Int,
            "volume-type": s.Str,
            # Upstream takes any mapping for both (values need not be strings).
            "instance-properties": s.Map,
            "dynamic-instance-properties": s.Map,
            "userdata": s.Str,
            "networks": s.ListOf(s.Str),
            "host-key-checking": s.Bool,
        }
        pool = dict(s.pool_common)
        pool.update({
            "labels": s.ListOf(label),
            "max-cores": s.Int,
            "max-ram": s.Int,
            "max-volumes": s.Int,
            "max-volume-gb": s.Int,
            "max-resources": {v.Extra: s.Int},
            "ignore-provider-quota": s.Bool,
            "availability-zones": s.ListOf(s.Str),
            "networks": s.ListOf(s.Str),
            "security-groups": s.ListOf(s.Str),
            "auto-floating-ip": s.Bool,
            "host-key-checking": s.Bool,
        })
        keys = dict(s.provider_common)
        keys.update({
            v.Required("cloud"): s.NonEmptyStr,
            "region-name": s.Str,
            "boot-timeout": s.IntTimeout,
            "launch-timeout": s.IntTimeout,
            "launch-retries": s.Int,
            "image-upload-timeout": s.IntTimeout,
            # Upstream coerces with float(), so rate: '1.0' is accepted.
            "rate": s.FloatLike,
            "image-name-format": s.Str,
            "post-upload-hook": s.Str,
            "clean-floating-ips": s.Bool,
            "ipv6-preferred": s.Bool,
            "port-cleanup-interval": s.Int,
            # Deprecated upstream keys: accepted and ignored.
            "nodepool-id": s.Str,
            "hostname-format": s.Str,
            "upload-script": s.Str,
            "diskimages": s.ListOf(provider_diskimage),
            "cloud-images": s.ListOf(cloud_image),
            "pools": s.ListOf(pool),
        })
        return keys

    def schema(self) -> v.Schema:
        return v.Schema(self.provider_keys())

    def default_image_type(self, raw: dict) -> str:
        return clouds.image_format(raw.get("cloud"))

    def build(self, raw: dict, ctx: s.BuildContext) -> OpenStackProvider:
        provider = self.provider_class(
            name=raw["name"], driver=self.name,
            max_concurrency=raw.get("max-concurrency", -1),
            priority=raw.get("priority"),
            cloud=raw["cloud"], region_name=raw.get("region-name"),
            boot_timeout=raw.get("boot-timeout", 60),
            launch_timeout=raw.get("launch-timeout", 3600),
            launch_retries=raw.get("launch-retries", 3),
            image_upload_timeout=raw.get("image-upload-timeout", 3600),
            rate=s.FloatLike(raw.get("rate", 1.0)),
            image_name_format=raw.get("image-name-format", "{image_name}-{timestamp}"),
            post_upload_hook=raw.get("post-upload-hook"),
            clean_floating_ips=raw.get("clean-floating-ips", False),
            port_cleanup_interval=raw.get("port-cleanup-interval", 600),
            ipv6_preferred=raw.get("ipv6-preferred", False),
            image_type=self.default_image_type(raw),
        )
        self._check_image_name_format(provider.image_name_format, ctx)
        self._build_diskimages(raw, provider, ctx)
        self._build_cloud_images(raw, provider, ctx)
        for index, pool_raw in enumerate(raw.get("pools", [])):
            ctx.add_pool(provider.pools,
                         self._build_pool(pool_raw, provider, ctx, ("pools", index)),
                         index)
        return provider

    @staticmethod
    def _check_image_name_format(fmt: str, ctx: s.BuildContext) -> None:
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(fmt) if f}
        except ValueError as exc:
            ctx.problem(("image-name-format",), f"invalid format string: {exc}")
            return
        unknown = {f.split(".")[0].split("[")[0] for f in fields} - IMAGE_NAME_FIELDS
        if unknown:
            ctx.problem(("image-name-format",),
                        f"unknown placeholder(s) {sorted(unknown)}; allowed: "
                        f"{sorted(IMAGE_NAME_FIELDS)}")

    def _build_diskimages(self, raw, provider, ctx) -> None:
        for index, item in enumerate(raw.get("diskimages", [])):
            name = item["name"]
            where = ("diskimages", index, "name")
            if name in provider.diskimages:
                ctx.warn(where, f"duplicate diskimage {name!r} in this provider: "
                         "this later entry replaces the earlier one")
            if name in ctx.abstract_diskimages:
                ctx.problem(where, f"diskimage {name!r} is abstract and cannot be "
                            "uploaded")
            elif name not in ctx.diskimages:
                ctx.problem(where, f"unknown diskimage {name!r} (not defined in "
                            "the top-level diskimages)")
            connection_type = item.get("connection-type", "ssh")
            provider.diskimages[name] = ProviderDiskImage(
                name=name, pause=item.get("pause", False), meta=item.get("meta", {}),
                config_drive=item.get("config-drive"),
                connection_type=connection_type,
                connection_port=item.get("connection-port",
                                         default_port(connection_type)))

    def _build_cloud_images(self, raw, provider, ctx) -> None:
        for index, item in enumerate(raw.get("cloud-images", [])):
            name = item["name"]
            if name in provider.cloud_images:
                ctx.warn(("cloud-images", index, "name"), f"duplicate cloud-image "
                         f"{name!r}: this later entry replaces the earlier one")
            if "image-id" in item and "image-name" in item:
                ctx.problem(("cloud-images", index),
                            "'image-id' and 'image-name' are mutually exclusive")
            connection_type = item.get("connection-type", "ssh")
            provider.cloud_images[name] = CloudImage(
                name=name, image_id=item.get("image-id"),
                image_name=item.get("image-name"),
                config_drive=item.get("config-drive"),
                username=item.get("username"),
                python_path=item.get("python-path", "auto"),
                shell_type=item.get("shell-type"),
                connection_type=connection_type,
                connection_port=item.get("connection-port",
                                         default_port(connection_type)))

    def _build_pool(self, raw, provider, ctx, where) -> Pool:
        pool = OpenStackPool(
            name=raw["name"], max_servers=raw.get("max-servers"),
            priority=raw.get("priority"), node_attributes=raw.get("node-attributes"),
            max_cores=raw.get("max-cores"), max_ram=raw.get("max-ram"),
            max_volumes=raw.get("max-volumes"), max_volume_gb=raw.get("max-volume-gb"),
            max_resources=dict(raw.get("max-resources", {})),
            ignore_provider_quota=raw.get("ignore-provider-quota", False),
            availability_zones=list(raw.get("availability-zones", [])),
            networks=list(raw.get("networks", [])),
            security_groups=list(raw.get("security-groups", [])),
            auto_floating_ip=raw.get("auto-floating-ip", True),
            host_key_checking=raw.get("host-key-checking", True),
        )
        ctx.add_labels(pool, raw.get("labels", []), lambda item, here: self._build_label(
            item, pool, provider, ctx, here), where)
        return pool

    def _build_label(self, raw, pool, provider, ctx, where) -> PoolLabel | None:
        """The pool label, or None when it cannot be launched in this
        provider (a warning says why)."""
        name = raw["name"]
        if name not in ctx.labels:
            ctx.problem(where + ("name",), f"label {name!r} is not defined in the "
                        "top-level labels")
        has_diskimage = "diskimage" in raw
        has_cloud_image = "cloud-image" in raw
        if has_diskimage == has_cloud_image:
            ctx.problem(where, "exactly one of 'diskimage' or 'cloud-image' is "
                        "required")
        if "min-ram" not in raw and "flavor-name" not in raw:
            ctx.problem(where, "one of 'min-ram' or 'flavor-name' is required")
        launchable = True
        if has_diskimage:
            image = raw["diskimage"]
            if image in ctx.abstract_diskimages:
                ctx.problem(where + ("diskimage",), f"diskimage {image!r} is abstract "
                            "and cannot be booted")
            elif image not in ctx.diskimages:
                ctx.problem(where + ("diskimage",), f"unknown diskimage {image!r}")
            elif image not in provider.diskimages:
                # Upstream accepts this and then waits forever for an upload
                # that never comes; we keep the file loadable but do not offer
                # the label here.
                ctx.warn(where + ("diskimage",),
                         f"diskimage {image!r} is not listed in provider "
                         f"{provider.name!r}'s diskimages, so it is never uploaded "
                         f"there: label {name!r} is not launched in provider "
                         f"{provider.name!r} pool {pool.name!r}")
                launchable = False
        if has_cloud_image and raw["cloud-image"] not in provider.cloud_images:
            ctx.problem(where + ("cloud-image",),
                        f"unknown cloud-image {raw['cloud-image']!r} (not in this "
                        "provider's cloud-images)")
        if not launchable:
            return None
        return OpenStackLabel(
            name=name, diskimage=raw.get("diskimage"),
            cloud_image=raw.get("cloud-image"), min_ram=raw.get("min-ram", 0),
            flavor_name=raw.get("flavor-name"), key_name=raw.get("key-name"),
            console_log=raw.get("console-log", False),
            boot_from_volume=raw.get("boot-from-volume", False),
            volume_size=raw.get("volume-size", 50),
            volume_type=raw.get("volume-type"),
            instance_properties=dict(raw.get("instance-properties", {})),
            dynamic_instance_properties=dict(
                raw.get("dynamic-instance-properties", {})),
            userdata=raw.get("userdata"),
            networks=list(raw.get("networks", pool.networks)),
            host_key_checking=raw.get("host-key-checking", pool.host_key_checking),
        )
