"""The ``gce`` driver's configuration: upstream Nodepool's keys, validated
with voluptuous and built into dataclasses."""

from __future__ import annotations

from dataclasses import dataclass

import voluptuous as v

from nodepool.config import schema as s
from nodepool.config.model import CloudImage, Pool, PoolLabel, Provider, default_port

# GCE's default network for instances; upstream attaches every instance to it.
DEFAULT_NETWORK = "global/networks/default"


@dataclass
class GceCloudImage(CloudImage):
    # The image family's newest image in image_project, unless image_id names one.
    image_project: str | None = None
    image_family: str | None = None
    # A public key written into the instance's ``ssh-keys`` metadata for ``username``.
    key: str | None = None


@dataclass
class GceLabel(PoolLabel):
    instance_type: str = ""
    # Upstream's defaults: a 10 GB standard persistent disk.
    volume_type: str = "pd-standard"
    volume_size: int = 10
    # The pool's network settings, copied here so a launch needs only its label.
    pool_name: str = ""
    use_internal_ip: bool = False
    network: str = DEFAULT_NETWORK
    subnetwork: str | None = None


@dataclass
class GcePool(Pool):
    use_internal_ip: bool = False
    network: str = DEFAULT_NETWORK
    subnetwork: str | None = None


@dataclass
class GceProvider(Provider):
    project: str = ""
    region: str = ""
    zone: str = ""
    # API operations per second (mutating calls; reads may go ten times as fast).
    rate: float = 2.0


class GceConfig:
    """Schema and typed config of a gce provider."""

    name = "gce"

    def provider_keys(self) -> dict:
        cloud_image = {
            v.Required("name"): s.NonEmptyStr,
            "image-id": s.Str,
            "image-project": s.Str,
            "image-family": s.Str,
            "username": s.Str,
            "key": s.Str,
            **s.image_connection,
        }
        label = {
            v.Required("name"): s.NonEmptyStr,
            v.Required("cloud-image"): s.Str,
            v.Required("instance-type"): s.NonEmptyStr,
            "volume-type": s.NonEmptyStr,
            "volume-size": s.Int,
        }
        pool = dict(s.pool_common)
        pool.update({
            v.Required("labels"): s.ListOf(label),
            "host-key-checking": s.Bool,
            "use-internal-ip": s.Bool,
            # Ours, not upstream's: the launcher's limits, as in our other
            # drivers' pools, and the interface's network (upstream always
            # uses the default one).
            "max-cores": s.Int,
            "max-ram": s.Int,
            "max-resources": {v.Extra: s.Int},
            "network": s.NonEmptyStr,
            "subnetwork": s.NonEmptyStr,
        })
        keys = dict(s.provider_common)
        keys.update({
            v.Required("project"): s.NonEmptyStr,
            v.Required("region"): s.NonEmptyStr,
            v.Required("zone"): s.NonEmptyStr,
            v.Required("pools"): s.ListOf(pool),
            "cloud-images": s.ListOf(cloud_image),
            # Upstream takes an int or a float.
            "rate": s.FloatLike,
            # Upstream accepts it and does nothing with it; so do we.
            "rate-limit": s.Int,
            "boot-timeout": s.IntTimeout,
            "launch-timeout": s.IntTimeout,
            "launch-retries": s.Int,
        })
        return keys

    def build(self, raw: dict, ctx: s.BuildContext) -> GceProvider:
        rate = s.operations_per_second(raw, ctx, 2.0)
        zone, region = raw["zone"], raw["region"]
        if not zone.startswith(region + "-"):
            ctx.problem(("zone",), f"zone {zone!r} is not in region {region!r} (a "
                        "zone's name is its region's and a suffix, e.g. "
                        f"{region}-a)")
        provider = GceProvider(
            name=raw["name"], driver=self.name,
            max_concurrency=raw.get("max-concurrency", -1),
            priority=raw.get("priority"),
            project=raw["project"], region=region, zone=zone, rate=rate,
            boot_timeout=raw.get("boot-timeout", 60),
            launch_timeout=raw.get("launch-timeout", 3600),
            launch_retries=raw.get("launch-retries", 3),
        )
        self._build_cloud_images(raw, provider, ctx)
        for index, pool_raw in enumerate(raw.get("pools", [])):
            pool = self._build_pool(pool_raw, provider, ctx, ("pools", index))
            ctx.add_pool(provider.pools, pool, index)
        return provider

    def _build_cloud_images(self, raw, provider, ctx) -> None:
        for index, item in enumerate(raw.get("cloud-images", [])):
            name = item["name"]
            where = ("cloud-images", index)
            family, project = item.get("image-family"), item.get("image-project")
            if "image-id" not in item:
                if family is None:
                    ctx.problem(where, "either 'image-id' or 'image-family' (with "
                                "'image-project') is required")
                elif project is None:
                    ctx.problem(where + ("image-family",), "needs 'image-project', "
                                "the project that publishes the family")
            if "key" in item and "username" not in item:
                ctx.problem(where + ("key",), "needs 'username', the account the "
                            "key is installed for")
            s.check_cloud_image(ctx, where, item, provider)
            connection_type = item.get("connection-type", "ssh")
            provider.cloud_images[name] = GceCloudImage(
                name=name, image_id=item.get("image-id"),
                image_project=project, image_family=family,
                username=item.get("username"), key=item.get("key"),
                python_path=item.get("python-path", "auto"),
                shell_type=item.get("shell-type"),
                connection_type=connection_type,
                connection_port=item.get("connection-port", default_port(connection_type)))

    def _build_pool(self, raw, provider, ctx, where) -> GcePool:
        pool = GcePool(
            name=raw["name"], max_servers=raw.get("max-servers"),
            priority=raw.get("priority"), node_attributes=raw.get("node-attributes"),
            max_cores=raw.get("max-cores"), max_ram=raw.get("max-ram"),
            max_resources=dict(raw.get("max-resources", {})),
            use_internal_ip=raw.get("use-internal-ip", False),
            host_key_checking=raw.get("host-key-checking", True),
            network=raw.get("network", DEFAULT_NETWORK),
            subnetwork=raw.get("subnetwork"),
        )
        ctx.add_labels(pool, raw.get("labels", []), lambda item, here:
                       self._build_label(item, pool, provider, ctx, here), where)
        return pool

    def _build_label(self, raw, pool: GcePool, provider, ctx, where) -> GceLabel:
        s.check_label_references(ctx, where, raw, provider, diskimages=False)
        name, cloud_image = raw["name"], raw["cloud-image"]
        size = raw.get("volume-size", 10)
        if size <= 0:
            ctx.problem(where + ("volume-size",), f"must be a positive number of GB, "
                        f"got {size!r}")
        return GceLabel(
            name=name, cloud_image=cloud_image,
            host_key_checking=pool.host_key_checking,
            instance_type=raw["instance-type"],
            volume_type=raw.get("volume-type", "pd-standard"), volume_size=size,
            pool_name=pool.name, use_internal_ip=pool.use_internal_ip,
            network=pool.network, subnetwork=pool.subnetwork)
