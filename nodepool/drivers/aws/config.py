"""The ``aws`` driver's configuration: upstream Nodepool's keys, validated
with voluptuous and built into dataclasses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import voluptuous as v

from nodepool.config import schema as s
from nodepool.config.model import (
    CloudImage, Pool, PoolLabel, Provider, ProviderDiskImage, default_port,
)

IMAGE_FORMATS = ("ova", "vhd", "vhdx", "vmdk", "raw")
IMPORT_METHODS = ("snapshot", "image")
ALLOCATION_STRATEGIES = ("prioritized", "price-capacity-optimized",
                         "capacity-optimized", "diversified", "lowest-price")


@dataclass
class AwsCloudImage(CloudImage):
    # [{"Name": ..., "Values": [...]}], as DescribeImages takes them.
    image_filters: list[dict[str, Any]] | None = None


@dataclass
class AwsDiskImage(ProviderDiskImage):
    # Overrides of the diskimage's own login details (upstream deprecates
    # ``username`` here; it still applies).
    username: str | None = None
    python_path: str | None = None
    shell_type: str | None = None
    architecture: str = "x86_64"
    ena_support: bool = True
    volume_size: int | None = None
    volume_type: str = "gp3"
    import_method: str = "snapshot"
    imds_support: str | None = None
    iops: int | None = None
    throughput: int | None = None


@dataclass
class Fleet:
    instance_types: list[str]
    allocation_strategy: str


@dataclass
class AwsLabel(PoolLabel):
    # Exactly one of instance_type and fleet.
    instance_type: str | None = None
    fleet: Fleet | None = None
    key_name: str = ""
    ebs_optimized: bool = False
    volume_type: str | None = None
    volume_size: int | None = None
    iops: int | None = None
    throughput: int | None = None
    userdata: str | None = None
    # {"name": ...} or {"arn": ...}
    iam_instance_profile: dict[str, str] | None = None
    use_spot: bool = False
    imdsv2: str | None = None
    dedicated_host: bool = False
    # The pool's network settings, copied here so a launch needs only its label.
    pool_name: str = ""
    subnet_id: str | None = None
    security_group_id: str | None = None
    public_ipv4: bool = True
    public_ipv6: bool = False
    use_internal_ip: bool = False
    availability_zone: str | None = None


@dataclass
class AwsPool(Pool):
    subnet_id: str | None = None
    security_group_id: str | None = None
    public_ipv4: bool = True
    public_ipv6: bool = False
    use_internal_ip: bool = False


@dataclass
class AwsProvider(Provider):
    region_name: str = ""
    profile_name: str | None = None
    # API operations per second (mutating calls; reads may go ten times as fast).
    rate: float = 2.0
    object_storage_bucket: str | None = None
    # None: the first refused import fails the upload (as upstream).
    image_import_timeout: int | None = None


class AwsConfig:
    """Schema and typed config of an aws provider."""

    name = "aws"

    def provider_keys(self) -> dict:
        cloud_image = {
            v.Required("name"): s.NonEmptyStr,
            v.Required("username"): s.Str,
            "image-id": s.Str,
            "image-filters": s.ListOf({
                v.Required(v.Any("name", "Name")): s.Str,
                v.Required(v.Any("values", "Values")): s.ListOf(s.Str)}),
            **s.image_connection,
        }
        diskimage = {
            v.Required("name"): s.NonEmptyStr,
            "username": s.Str,
            "pause": s.Bool,
            **s.image_connection,
            "architecture": s.Str,
            "ena-support": s.Bool,
            "volume-size": s.Int,
            "volume-type": s.Str,
            "import-method": OneOf(IMPORT_METHODS),
            "imds-support": OneOf(("v2.0",), null=True),
            "iops": s.Int,
            "throughput": s.Int,
            "tags": s.Map,
        }
        label = {
            v.Required("name"): s.NonEmptyStr,
            "cloud-image": s.Str,
            "diskimage": s.Str,
            "instance-type": s.Str,
            "fleet": {v.Required("instance-types"): s.ListOf(s.Str),
                      v.Required("allocation-strategy"): OneOf(ALLOCATION_STRATEGIES)},
            v.Required("key-name"): s.Str,
            "ebs-optimized": s.Bool,
            "volume-type": s.Str,
            "volume-size": s.Int,
            "iops": s.Int,
            "throughput": s.Int,
            "userdata": s.Str,
            "iam-instance-profile": {"name": s.Str, "arn": s.Str},
            "tags": s.Map,
            "dynamic-tags": s.Map,
            "use-spot": s.Bool,
            "imdsv2": OneOf(("required", "optional"), null=True),
            "dedicated-host": s.Bool,
        }
        limits = {
            "max-cores": s.Int,
            "max-ram": s.Int,
            "max-resources": {v.Extra: s.Int},
        }
        network = {
            "public-ipv4": s.Bool,
            "public-ipv6": s.Bool,
            "use-internal-ip": s.Bool,
            "host-key-checking": s.Bool,
        }
        pool = dict(s.pool_common)
        pool.update(limits)
        pool.update(network)
        pool.update({
            v.Required("labels"): s.ListOf(label),
            "security-group-id": s.Str,
            "subnet-id": s.Str,
            # Upstream's deprecated alias of public-ipv4.
            "public-ip-address": s.Bool,
            "availability-zone": s.Str,
        })
        keys = dict(s.provider_common)
        keys.update(limits)
        keys.update(network)
        keys.update({
            v.Required("region-name"): s.NonEmptyStr,
            v.Required("pools"): s.ListOf(pool),
            "profile-name": s.Str,
            # Upstream takes an int or a float.
            "rate": s.FloatLike,
            "boot-timeout": s.IntTimeout,
            "launch-timeout": s.IntTimeout,
            "launch-retries": s.Int,
            "max-servers": s.Int,
            "object-storage": {v.Required("bucket-name"): s.NonEmptyStr},
            "image-format": OneOf(IMAGE_FORMATS),
            "image-import-timeout": s.IntTimeout,
            "post-upload-hook": s.Str,
            "cloud-images": s.ListOf(cloud_image),
            "diskimages": s.ListOf(diskimage),
            # Deprecated upstream keys: accepted and ignored.
            "hostname-format": s.Str,
        })
        return keys

    def build(self, raw: dict, ctx: s.BuildContext) -> AwsProvider:
        rate = s.operations_per_second(raw, ctx, 2.0)
        provider = AwsProvider(
            name=raw["name"], driver=self.name,
            max_concurrency=raw.get("max-concurrency", -1),
            priority=raw.get("priority"),
            region_name=raw["region-name"], profile_name=raw.get("profile-name"),
            rate=rate,
            boot_timeout=raw.get("boot-timeout", 180),
            launch_timeout=raw.get("launch-timeout", 3600),
            launch_retries=raw.get("launch-retries", 3),
            image_type=raw.get("image-format", "raw"),
            image_import_timeout=raw.get("image-import-timeout"),
            post_upload_hook=raw.get("post-upload-hook"),
            object_storage_bucket=(raw.get("object-storage") or {}).get("bucket-name"),
        )
        self._build_cloud_images(raw, provider, ctx)
        self._build_diskimages(raw, provider, ctx)
        if provider.diskimages and not provider.object_storage_bucket:
            ctx.problem(("object-storage",), "required to upload diskimages (the "
                        "bucket images are imported from)")
        for index, pool_raw in enumerate(raw.get("pools", [])):
            pool = self._build_pool(pool_raw, raw, provider, ctx, ("pools", index))
            ctx.add_pool(provider.pools, pool, index)
        return provider

    def _build_cloud_images(self, raw, provider, ctx) -> None:
        for index, item in enumerate(raw.get("cloud-images", [])):
            name = item["name"]
            where = ("cloud-images", index)
            if "image-id" in item and "image-filters" in item:
                ctx.problem(where, "'image-id' and 'image-filters' are mutually "
                            "exclusive")
            s.check_cloud_image(ctx, where, item, provider)
            filters = None
            if "image-filters" in item:
                # DescribeImages wants Name/Values; upstream accepts either case.
                filters = [{"Name": f.get("Name", f.get("name")),
                            "Values": list(f.get("Values", f.get("values")))}
                           for f in item["image-filters"]]
            connection_type = item.get("connection-type", "ssh")
            provider.cloud_images[name] = AwsCloudImage(
                name=name, image_id=item.get("image-id"), image_filters=filters,
                username=item["username"],
                python_path=item.get("python-path", "auto"),
                shell_type=item.get("shell-type"),
                connection_type=connection_type,
                connection_port=item.get("connection-port", default_port(connection_type)))

    def _build_diskimages(self, raw, provider, ctx) -> None:
        for index, item in enumerate(raw.get("diskimages", [])):
            name = item["name"]
            where = ("diskimages", index)
            s.check_diskimage_reference(ctx, where + ("name",), name)
            method = item.get("import-method", "snapshot")
            if item.get("imds-support") == "v2.0" and method == "image":
                ctx.problem(where + ("imds-support",), "v2.0 needs import-method "
                            "snapshot (an image import cannot set it)")
            connection_type = item.get("connection-type", "ssh")
            provider.diskimages[name] = AwsDiskImage(
                name=name, pause=item.get("pause", False),
                meta=dict(item.get("tags", {})),
                connection_type=connection_type,
                connection_port=item.get("connection-port", default_port(connection_type)),
                username=item.get("username"), python_path=item.get("python-path"),
                shell_type=item.get("shell-type"),
                architecture=item.get("architecture", "x86_64"),
                ena_support=item.get("ena-support", True),
                volume_size=item.get("volume-size"),
                volume_type=item.get("volume-type", "gp3"),
                import_method=method, imds_support=item.get("imds-support"),
                iops=item.get("iops"), throughput=item.get("throughput"))

    def _build_pool(self, raw, provider_raw, provider, ctx, where) -> AwsPool:
        def inherited(key, default=None):
            return raw.get(key, provider_raw.get(key, default))

        max_resources = dict(provider_raw.get("max-resources", {}))
        max_resources.update(raw.get("max-resources", {}))
        az = raw.get("availability-zone")
        pool = AwsPool(
            name=raw["name"], max_servers=inherited("max-servers"),
            priority=raw.get("priority"), node_attributes=raw.get("node-attributes"),
            max_cores=inherited("max-cores"), max_ram=inherited("max-ram"),
            max_resources=max_resources,
            availability_zones=[az] if az else [],
            subnet_id=raw.get("subnet-id"),
            security_group_id=raw.get("security-group-id"),
            public_ipv4=raw.get("public-ip-address", inherited("public-ipv4", True)),
            public_ipv6=inherited("public-ipv6", False),
            use_internal_ip=inherited("use-internal-ip", False),
            host_key_checking=inherited("host-key-checking", True),
        )
        ctx.add_labels(pool, raw.get("labels", []), lambda item, here:
                       self._build_label(item, pool, provider, ctx, here), where)
        return pool

    def _build_label(self, raw, pool: AwsPool, provider, ctx, where) -> AwsLabel | None:
        s.check_label_references(ctx, where, raw, provider)
        name = raw["name"]
        if ("instance-type" in raw) == ("fleet" in raw):
            ctx.problem(where, "exactly one of 'instance-type' or 'fleet' is required")
        image, cloud_image = raw.get("diskimage"), raw.get("cloud-image")
        profile = raw.get("iam-instance-profile")
        if profile is not None and len(profile) != 1:
            ctx.problem(where + ("iam-instance-profile",), "give exactly one of "
                        "'name' or 'arn'")
        dedicated = raw.get("dedicated-host", False)
        if dedicated and raw.get("use-spot", False):
            ctx.problem(where + ("dedicated-host",), "spot instances cannot run on "
                        "dedicated hosts (use-spot is set)")
        if dedicated and not pool.availability_zones:
            ctx.problem(where + ("dedicated-host",), "needs the pool's "
                        "availability-zone")
        fleet = raw.get("fleet")
        return AwsLabel(
            name=name, diskimage=image, cloud_image=cloud_image,
            instance_properties=dict(raw.get("tags", {})),
            dynamic_instance_properties=dict(raw.get("dynamic-tags", {})),
            host_key_checking=pool.host_key_checking,
            instance_type=raw.get("instance-type"),
            fleet=Fleet(list(fleet["instance-types"]), fleet["allocation-strategy"])
            if fleet else None,
            key_name=raw["key-name"], ebs_optimized=raw.get("ebs-optimized", False),
            volume_type=raw.get("volume-type"), volume_size=raw.get("volume-size"),
            iops=raw.get("iops"), throughput=raw.get("throughput"),
            userdata=raw.get("userdata"), iam_instance_profile=profile,
            use_spot=raw.get("use-spot", False), imdsv2=raw.get("imdsv2"),
            dedicated_host=dedicated, pool_name=pool.name,
            subnet_id=pool.subnet_id, security_group_id=pool.security_group_id,
            public_ipv4=pool.public_ipv4, public_ipv6=pool.public_ipv6,
            use_internal_ip=pool.use_internal_ip,
            availability_zone=pool.availability_zones[0]
            if pool.availability_zones else None)


def OneOf(choices: tuple[str, ...], null: bool = False):
    """A string among ``choices`` (or null, if allowed: upstream's "unset"),
    with an error that lists them."""
    def validate(value):
        if value is None and null:
            return value
        if value not in choices:
            raise v.Invalid(f"expected one of {', '.join(choices)}; got {value!r}")
        return value
    return validate
