"""The ``openstack`` driver's adapter, over openstacksdk: one connection per
provider; flavors, limits, AZs and image ids are cached; the state machines
are in ``machines.py`` and the API plumbing in ``api.py``."""

from __future__ import annotations

import logging
import time

from nodepool.drivers.base import (
    Adapter, Instance, LaunchError, NotFound, Resource, RuntimeConfigurationError,
)
from nodepool.drivers.openstack.api import (
    IMAGE_TTL, LIMITS_TTL, RateLimitedExecutor, ServerListing, ServerView,
    _raise_for_status, api_metrics_config, get_json, list_json,
)
from nodepool.drivers.openstack.config import OpenStackLabel, OpenStackProvider
from nodepool.drivers.openstack.machines import OpenStackCreate, OpenStackDelete
from nodepool.resources import Resources

log = logging.getLogger("nodepool.drivers.openstack")

CONSOLE_TIMEOUT = 30.0


class OpenStackAdapter(Adapter):
    provider: OpenStackProvider

    def __init__(self, provider: OpenStackProvider):
        super().__init__(provider)
        import openstack.connection
        import openstack.exceptions
        from openstack.config import loader
        from nodepool.drivers import DriverUnavailable
        try:
            config = loader.OpenStackConfig(statsd_config=api_metrics_config(provider))
            region = config.get_one(cloud=provider.cloud,
                                    region_name=provider.region_name)
            self.conn = openstack.connection.Connection(config=region)
        except openstack.exceptions.ConfigException as exc:
            raise DriverUnavailable(f"provider {provider.name}: {exc} (check "
                                    "clouds.yaml)") from None
        self.executor = RateLimitedExecutor(provider.rate, max_workers=10,
                                            thread_name_prefix=f"os-{provider.name}")
        self.listing = ServerListing(self)
        # Create state machines whose server is being built.
        self.building: set = set()
        self._flavors = None
        self._limits: tuple[float, Resources] | None = None
        self._azs: list[str] | None = None
        self._image_ids: dict[str, tuple[float, str]] = {}
        self._external_network: str | None = None
        self._networks: dict[str, str] = {}
        self._suspect_fips: set[str] = set()
        self._down_ports: dict[str, float] = {}
        self._has_volumes: bool | None = None
        self._microversion: str | None = None

    def stop(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    # -- raw listings ----------------------------------------------------------

    @property
    def compute_microversion(self) -> str | None:
        """The newest compute microversion both we and the cloud know (the
        embedded flavor of a server listing needs 2.47 or later)."""
        if self._microversion is None:
            from openstack import utils
            self._microversion = utils.maximum_supported_microversion(
                self.conn.compute, "2.79") or ""
        return self._microversion or None

    def servers(self) -> list[ServerView]:
        return [ServerView.from_json(s) for s in list_json(
            self.conn.compute, "/servers/detail", "servers",
            microversion=self.compute_microversion)]

    def server(self, server_id: str) -> ServerView | None:
        data = get_json(self.conn.compute, f"/servers/{server_id}", "server",
                        microversion=self.compute_microversion)
        return ServerView.from_json(data) if data else None

    def ports(self, **params) -> list[dict]:
        return list_json(self.conn.network, "/ports", "ports", params)

    def floating_ips(self, **params) -> list[dict]:
        return list_json(self.conn.network, "/floatingips", "floatingips", params)

    def volumes(self) -> list[dict]:
        return list_json(self.conn.block_storage, "/volumes/detail", "volumes")

    @staticmethod
    def delete_json(proxy, path: str) -> bool:
        """DELETE; False when it was already gone."""
        response = proxy.delete(path)
        if response.status_code == 404:
            return False
        _raise_for_status(response)
        return True

    # -- lookups (called on the executor or at decision time) -------------------

    def flavors(self):
        if self._flavors is None:
            self._flavors = sorted(self.conn.compute.flavors(details=True),
                                   key=lambda f: (f.ram, f.name))
        return self._flavors

    def flavor_for(self, label: OpenStackLabel):
        """By name (exact, or substring when min-ram is set too), else the
        smallest with at least min-ram."""
        candidates = self.flavors()
        if label.flavor_name:
            exact = [f for f in candidates if f.name == label.flavor_name]
            if exact and not label.min_ram:
                return exact[0]
            candidates = [f for f in candidates if label.flavor_name in f.name]
        for flavor in candidates:
            if flavor.ram >= (label.min_ram or 0):
                return flavor
        raise RuntimeConfigurationError(
            f"no flavor matches flavor-name={label.flavor_name!r} "
            f"min-ram={label.min_ram}")

    def cloud_image_id(self, label: OpenStackLabel) -> str:
        """The cloud's id of a label's cloud image (looked up by name once)."""
        image = self.provider.cloud_images.get(label.cloud_image or "")
        if image is None:
            raise LaunchError(f"label {label.name} has no image")
        if image.image_id:
            return image.image_id
        name = image.image_name or image.name
        cached = self._image_ids.get(name)
        if cached is not None and time.monotonic() - cached[0] < IMAGE_TTL:
            return cached[1]
        found = self.conn.image.find_image(name, ignore_missing=True)
        if found is None:
            raise LaunchError(f"cloud image {name!r} not found in {self.provider.name}")
        self._image_ids[name] = (time.monotonic(), found.id)
        return found.id

    def pool_of(self, label: OpenStackLabel):
        for pool in self.provider.pools.values():
            if pool.labels.get(label.name) is label:
                return pool
        return None

    def network_id(self, name_or_id: str) -> str:
        """A network given by name or id, as an id (looked up once)."""
        if name_or_id not in self._networks:
            network = self.conn.network.find_network(name_or_id, ignore_missing=True)
            if network is None:
                raise RuntimeConfigurationError(f"network {name_or_id!r} not found")
            self._networks[name_or_id] = network.id
        return self._networks[name_or_id]

    def config_drive_for(self, label: OpenStackLabel) -> bool | None:
        if label.diskimage:
            image = self.provider.diskimages.get(label.diskimage)
        else:
            image = self.provider.cloud_images.get(label.cloud_image or "")
        return image.config_drive if image is not None else None

    def external_network_id(self) -> str:
        if self._external_network is None:
            networks = list(self.conn.network.networks(is_router_external=True))
            if not networks:
                raise LaunchError("no external network for floating IPs")
            self._external_network = networks[0].id
        return self._external_network

    def attach_floating_ip(self, server) -> str:
        """Create a floating IP on the server's port; returns its address
        (blocking: runs on the executor)."""
        ports = self.ports(device_id=server.id)
        if not ports:
            raise LaunchError(f"server {server.id} has no port for a floating IP")
        response = self.conn.network.post("/floatingips", json={"floatingip": {
            "floating_network_id": self.external_network_id(),
            "port_id": ports[0]["id"]}})
        _raise_for_status(response)
        return response.json()["floatingip"]["floating_ip_address"]

    def release_floating_ips(self, server_id: str) -> None:
        for port in self.ports(device_id=server_id):
            for fip in self.floating_ips(port_id=port["id"]):
                self.delete_json(self.conn.network, f"/floatingips/{fip['id']}")

    def instance(self, server) -> Instance:
        private = public = public6 = None
        for addresses in (server.addresses or {}).values():
            for address in addresses:
                kind = address.get("OS-EXT-IPS:type")
                if address.get("version") == 6:
                    public6 = public6 or address.get("addr")
                elif kind == "floating":
                    public = public or address.get("addr")
                else:
                    private = private or address.get("addr")
        flavor = server.flavor or {}
        if self.provider.ipv6_preferred:
            interface = public6 or public or private
        else:
            interface = public or public6 or private
        return Instance(
            external_id=server.id, interface_ip=interface,
            public_ipv4=public, private_ipv4=private, public_ipv6=public6,
            cloud=self.provider.cloud, region=self.provider.region_name,
            az=server.availability_zone, host_id=server.host_id,
            metadata=dict(server.metadata or {}),
            resources={"cores": flavor.get("vcpus", 0), "instances": 1,
                       "ram": flavor.get("ram", 0)})

    # -- the contract ----------------------------------------------------------------

    def create_state_machine(self, hostname, label, image_external_id, metadata,
                             request, az):
        return OpenStackCreate(self, hostname, label, image_external_id, metadata, az)

    def delete_state_machine(self, external_id):
        return OpenStackDelete(self, external_id)

    def list_instances(self) -> list[Instance]:
        return [self.instance(s) for s in self.servers()]

    def list_resources(self) -> list[Resource]:
        found = [Resource("instance", s.id, dict(s.metadata)) for s in self.servers()]
        for image in self.conn.image.images(owner=None):
            properties = {k: str(v) for k, v in (image.properties or {}).items()}
            if "nodepool_build_id" in properties:
                found.append(Resource("image", image.id, properties))
        if self.has_volumes:
            # Boot volumes are tagged when their server is deleted; attached
            # ones still belong to a server and go with it.
            for volume in self.volumes():
                metadata = dict(volume.get("metadata") or {})
                if "nodepool_node_id" in metadata and volume.get("status") in (
                        "available", "error"):
                    found.append(Resource("volume", volume["id"], metadata))
        return found

    def delete_resource(self, resource: Resource) -> None:
        if resource.type == "instance":
            self.conn.compute.delete_server(resource.id, ignore_missing=True)
        elif resource.type == "image":
            self.conn.image.delete_image(resource.id, ignore_missing=True)
        elif resource.type == "volume":
            self.conn.block_storage.delete_volume(resource.id, ignore_missing=True)

    def cleanup_leaks(self, report) -> None:
        """OpenStack's own leak kinds, each deleted only when seen leaked on
        two checks: unattached floating IPs (``clean-floating-ips``) and DOWN
        compute ports (seen DOWN ``port-cleanup-interval`` apart).
        ``report(plural_kind, count)`` feeds the leaked counters."""
        now = time.monotonic()
        if self.provider.clean_floating_ips:
            unattached = {f["id"] for f in self.floating_ips() if not f.get("port_id")}
            removed = 0
            for fip_id in unattached & self._suspect_fips:
                self.conn.network.delete_ip(fip_id, ignore_missing=True)
                removed += 1
            self._suspect_fips = unattached - self._suspect_fips
            if removed:
                report("floatingips", removed)
        interval = self.provider.port_cleanup_interval
        if interval > 0:
            down = {p["id"] for p in self.ports(status="DOWN")
                    if (p.get("device_owner") or "").startswith("compute:")}
            removed = 0
            for port_id in down:
                first_seen = self._down_ports.setdefault(port_id, now)
                if now - first_seen >= interval:
                    self.conn.network.delete_port(port_id, ignore_missing=True)
                    self._down_ports.pop(port_id, None)
                    removed += 1
            for port_id in set(self._down_ports) - down:
                del self._down_ports[port_id]
            if removed:
                report("ports", removed)

    def console_log(self, external_id) -> str | None:
        """The server's console output (Nova's ``os-getConsoleOutput``
        action), or None when the cloud has none to give. Blocking: the
        launcher calls it off its runner threads, and the call itself takes
        its turn on the rate-limited executor."""
        import openstack.exceptions
        try:
            output = self.executor.submit(
                self.conn.compute.get_server_console_output, external_id
            ).result(timeout=CONSOLE_TIMEOUT)
        except openstack.exceptions.SDKException as exc:
            log.warning("Provider %s: no console log of server %s: %s",
                        self.provider.name, external_id, exc)
            return None
        text = output.get("output") if isinstance(output, dict) else None
        return text if isinstance(text, str) else None

    def label_ready(self, label: OpenStackLabel) -> bool:
        if not label.cloud_image:
            return True
        try:
            self.cloud_image_id(label)
            return True
        except Exception as exc:
            log.warning("Provider %s: label %s: %s", self.provider.name, label.name,
                        exc)
            return False

    # -- images for the builder ----------------------------------------------------

    def upload_image(self, image_name: str, filename: str, image_format: str,
                     metadata: dict[str, str], provider_image=None) -> str:
        """Upload and wait until the cloud says active; returns the image id.
        Blocking: the builder calls it from an upload worker."""
        image = self.conn.image.create_image(
            name=image_name, filename=filename, disk_format=image_format,
            container_format="bare", meta={k: str(v) for k, v in metadata.items()},
            wait=False)
        deadline = time.monotonic() + self.provider.image_upload_timeout
        while True:
            current = self.conn.image.get_image(image.id)
            if current.status == "active":
                return current.id
            if current.status in ("killed", "deleted", "deactivated"):
                raise LaunchError(f"image {image.id} went {current.status}")
            if time.monotonic() > deadline:
                raise LaunchError(f"image {image.id} not active after "
                                  f"{self.provider.image_upload_timeout}s")
            time.sleep(0.5)

    def delete_image(self, external_id: str) -> None:
        import openstack.exceptions
        try:
            self.conn.image.delete_image(external_id, ignore_missing=False)
        except openstack.exceptions.NotFoundException:
            raise NotFound(external_id) from None

    def list_images(self) -> list[dict]:
        """Every image the credentials see (for alien-image-list)."""
        return [{"id": i.id, "name": i.name,
                 "properties": {k: str(v) for k, v in (i.properties or {}).items()}}
                for i in self.conn.image.images()]

    @property
    def has_volumes(self) -> bool:
        """Whether the cloud's catalog has Cinder (block-storage)."""
        if self._has_volumes is None:
            self._has_volumes = bool(self.conn.has_service("block-storage"))
        return self._has_volumes

    def quota_limits(self) -> Resources:
        """Nova's limits (cores, instances, RAM) and, with Cinder, volumes
        and volume GB less what volumes not attached to our servers use
        (the launcher subtracts unmanaged servers itself)."""
        now = time.monotonic()
        if self._limits is None or now - self._limits[0] > LIMITS_TTL:
            absolute = self.conn.compute.get_limits().absolute
            limits = {"cores": absolute.total_cores, "instances": absolute.instances,
                      "ram": absolute.total_ram}
            if self.has_volumes:
                limits.update(self._volume_limits())
            self._limits = (now, Resources(
                {k: v for k, v in limits.items() if v is not None and v >= 0},
                default=float("inf")))
        return self._limits[1].copy()

    def _volume_limits(self) -> dict:
        absolute = self.conn.block_storage.get_limits().absolute
        volumes = absolute.max_total_volumes
        gigabytes = absolute.max_total_volume_gigabytes
        if volumes is None or volumes < 0:
            volumes = None
        if gigabytes is None or gigabytes < 0:
            gigabytes = None
        if volumes is None and gigabytes is None:
            return {}
        ours = {s.id for s in self.servers()
                if s.metadata.get("nodepool_provider_name") == self.provider.name}
        for volume in self.volumes():
            if any(a.get("server_id") in ours for a in volume.get("attachments") or []):
                continue  # counted by its node's resources
            if volumes is not None:
                volumes -= 1
            if gigabytes is not None:
                gigabytes -= volume.get("size") or 0
        return {"volumes": volumes, "volume-gb": gigabytes}

    def quota_for_label(self, label: OpenStackLabel) -> Resources:
        flavor = self.flavor_for(label)
        need = Resources({"cores": flavor.vcpus, "instances": 1, "ram": flavor.ram})
        if label.boot_from_volume:
            need.update({"volumes": 1, "volume-gb": label.volume_size})
        return need

    def capacity_key(self, label: OpenStackLabel) -> str:
        """The flavor: what Nova runs out of ("No valid host")."""
        return self.flavor_for(label).name

    def azs(self) -> list[str]:
        if self._azs is None:
            self._azs = [z.name for z in self.conn.compute.availability_zones()
                         if (z.state or {}).get("available", True)]
        return list(self._azs)
