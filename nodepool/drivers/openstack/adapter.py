"""The ``openstack`` driver, over openstacksdk.

Every API call runs on the adapter's bounded executor; state machines only
submit calls and look at their futures, so ``advance()`` never blocks the
launcher's runners. Server state is read from one shared listing refreshed at
most once per second (not one GET per server per tick), and flavors, limits
and AZs are cached.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from nodepool.drivers.base import (
    Adapter, Instance, LaunchError, LaunchStatusError, NotFound, QuotaError,
    Resource, RuntimeConfigurationError, StateMachine,
)
from nodepool.drivers.openstack.config import OpenStackLabel, OpenStackProvider
from nodepool.resources import Resources

log = logging.getLogger("nodepool.drivers.openstack")

LISTING_TTL = 1.0
# Up to this many servers building, each is polled on its own (fast for a
# lone request); beyond it they share one listing (cheap for a burst).
DIRECT_POLL_LIMIT = 10
LIMITS_TTL = 60.0
IMAGE_TTL = 300.0
# A call the cloud rate-limits (413/429) is retried this many times, waiting
# Retry-After or an exponential backoff, before its error counts.
RATE_LIMIT_RETRIES = 6
RATE_LIMIT_MAX_WAIT = 10.0
# How long a delete waits for the server's boot volumes to go before it
# gives up on them (the leak cleanup then removes them by their tag).
VOLUME_WAIT = 120.0


class RateLimitedExecutor(ThreadPoolExecutor):
    """An executor whose calls start at least ``rate`` seconds apart (the
    provider's ``rate``: the minimum time between API calls)."""

    def __init__(self, rate: float, **kwargs):
        super().__init__(**kwargs)
        self.rate = max(0.0, rate or 0.0)
        self._next = 0.0
        self._slot_lock = threading.Lock()

    def _wait_turn(self) -> None:
        if not self.rate:
            return
        with self._slot_lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.rate
        if start > now:
            time.sleep(start - now)

    def submit(self, fn, *args, **kwargs):
        def limited():
            for attempt in range(RATE_LIMIT_RETRIES + 1):
                self._wait_turn()
                try:
                    return fn(*args, **kwargs)
                except Exception as exc:
                    wait = rate_limit_wait(exc, attempt)
                    if wait is None or attempt == RATE_LIMIT_RETRIES:
                        raise
                    log.warning("Rate limited by the cloud (%s); retrying in %.1fs",
                                getattr(exc, "status_code", "?"), wait)
                    time.sleep(wait)
        return super().submit(limited)


def rate_limit_wait(exc: Exception, attempt: int) -> float | None:
    """Seconds to wait before retrying a call the cloud refused for rate
    limiting (HTTP 413 or 429), or None for any other error."""
    if getattr(exc, "status_code", None) not in (413, 429):
        return None
    backoff = 0.2 * (2 ** attempt)
    response = getattr(exc, "response", None)
    header = response.headers.get("Retry-After") if response is not None else None
    try:
        backoff = max(backoff, float(header))
    except (TypeError, ValueError):
        pass
    return min(backoff, RATE_LIMIT_MAX_WAIT)


def api_metrics_config(provider: OpenStackProvider) -> dict | None:
    """statsd settings for openstacksdk's own API timers, named
    ``nodepool.task.<provider>.<service>.<METHOD>.<operation>``."""
    host = os.environ.get("STATSD_HOST")
    if not host:
        return None
    from nodepool.stats import api_task_prefix
    prefix = api_task_prefix(provider.name)
    if os.environ.get("STATSD_PREFIX"):
        prefix = f"{os.environ['STATSD_PREFIX']}.{prefix}"
    return {"host": host, "port": int(os.environ.get("STATSD_PORT", 8125)),
            "prefix": prefix}


def is_quota_message(message: str) -> bool:
    text = (message or "").lower()
    return ("quota exceeded" in text or "number of ports exceeded" in text
            or ("exceeds" in text and "quota" in text))


@dataclass
class ServerView:
    """The fields of a Nova server the driver reads, from the API's JSON.
    (openstacksdk's resource objects cost tens of milliseconds of CPU each,
    which dominated the launcher's time on a cloud of a few hundred servers.)"""

    id: str
    status: str
    metadata: dict
    addresses: dict
    flavor: dict
    availability_zone: str | None
    host_id: str | None
    attached_volumes: list
    fault: dict | None

    @classmethod
    def from_json(cls, data: dict) -> "ServerView":
        return cls(id=data["id"], status=data.get("status") or "",
                   metadata=dict(data.get("metadata") or {}),
                   addresses=data.get("addresses") or {},
                   flavor=data.get("flavor") or {},
                   availability_zone=data.get("OS-EXT-AZ:availability_zone"),
                   host_id=data.get("hostId"),
                   attached_volumes=list(
                       data.get("os-extended-volumes:volumes_attached") or []),
                   fault=data.get("fault"))


def list_json(proxy, path: str, key: str, params: dict | None = None,
              microversion: str | None = None) -> list[dict]:
    """Every item of a listing as plain JSON, following ``<key>_links``
    pagination. Goes through the SDK's proxy, so API timers still fire."""
    items: list[dict] = []
    url, query = path, dict(params or {})
    for _ in range(10_000):  # bounded: a cloud that pages forever is broken
        response = proxy.get(url, params=query or None, microversion=microversion)
        _raise_for_status(response)
        body = response.json()
        items.extend(body.get(key) or [])
        nexts = [link["href"] for link in body.get(f"{key}_links") or []
                 if link.get("rel") == "next"]
        if not nexts:
            return items
        url, query = nexts[0], None
    raise LaunchError(f"listing {path} did not end")


def get_json(proxy, path: str, key: str, microversion: str | None = None) -> dict | None:
    """One item as plain JSON, or None when the cloud says 404."""
    response = proxy.get(path, microversion=microversion)
    if response.status_code == 404:
        return None
    _raise_for_status(response)
    return response.json().get(key)


def _raise_for_status(response) -> None:
    from openstack import exceptions
    exceptions.raise_from_response(response)


class ServerListing:
    """All servers, refreshed in the background at most every LISTING_TTL."""

    def __init__(self, adapter: "OpenStackAdapter"):
        self.adapter = adapter
        self.servers: dict[str, object] = {}
        self.fetched_at = 0.0
        self.future: Future | None = None
        self.lock = threading.Lock()

    def _fetch(self) -> dict[str, ServerView]:
        return {s.id: s for s in self.adapter.servers()}

    def refresh(self) -> None:
        """Start a refresh if the listing is stale and none is running."""
        with self.lock:
            if self.future is not None:
                if not self.future.done():
                    return
                try:
                    self.servers = self.future.result()
                    self.fetched_at = time.monotonic()
                except Exception as exc:
                    log.warning("Provider %s: listing servers failed: %s",
                                self.adapter.provider.name, exc)
                self.future = None
            if time.monotonic() - self.fetched_at >= LISTING_TTL:
                self.future = self.adapter.executor.submit(self._fetch)

    def get(self, server_id: str):
        self.refresh()
        return self.servers.get(server_id)

    def fresh_since(self, moment: float) -> bool:
        return self.fetched_at > moment


class OpenStackCreate(StateMachine):
    def __init__(self, adapter: "OpenStackAdapter", hostname: str, label: OpenStackLabel,
                 image_id: str | None, metadata: dict[str, str], az: str | None):
        super().__init__()
        self.adapter = adapter
        self.hostname = hostname
        self.label = label
        self.image_id = image_id
        self.metadata = metadata
        self.az = az
        self.future: Future | None = None
        self.created_at = 0.0

    def _create(self):
        """Submit the create (Nova's JSON body, built here); returns the id."""
        adapter = self.adapter
        flavor = adapter.flavor_for(self.label)
        image_id = self.image_id or adapter.cloud_image_id(self.label)
        body: dict = {"name": self.hostname, "flavorRef": flavor.id,
                      "metadata": self.metadata}
        if self.label.boot_from_volume:
            # Nova makes the boot volume from the image and deletes it with
            # the server, so a deleted node leaves no volume behind.
            mapping = {"boot_index": 0, "uuid": image_id, "source_type": "image",
                       "destination_type": "volume",
                       "volume_size": self.label.volume_size,
                       "delete_on_termination": True}
            if self.label.volume_type:
                mapping["volume_type"] = self.label.volume_type
            body["block_device_mapping_v2"] = [mapping]
        else:
            body["imageRef"] = image_id
        networks = self.label.networks
        body["networks"] = [{"uuid": adapter.network_id(n)} for n in networks] \
            if networks else "auto"
        pool = adapter.pool_of(self.label)
        if pool is not None and pool.security_groups:
            body["security_groups"] = [{"name": g} for g in pool.security_groups]
        config_drive = adapter.config_drive_for(self.label)
        if config_drive is not None:
            body["config_drive"] = config_drive
        if self.az:
            body["availability_zone"] = self.az
        if self.label.key_name:
            body["key_name"] = self.label.key_name
        if self.label.userdata:
            body["user_data"] = base64.b64encode(self.label.userdata.encode()).decode()
        try:
            response = adapter.conn.compute.post(
                "/servers", json={"server": body},
                microversion=adapter.compute_microversion)
            _raise_for_status(response)
            return response.json()["server"]
        except Exception as exc:
            if is_quota_message(str(exc)):
                raise QuotaError(str(exc)) from None
            raise

    def advance(self) -> Instance | None:
        try:
            return self._advance()
        except Exception:
            self.adapter.building.discard(self)
            raise

    def _current(self):
        """This server as last seen, or None while no fresh view exists."""
        adapter = self.adapter
        if len(adapter.building) <= DIRECT_POLL_LIMIT:
            if self.future is None:
                self.future = adapter.executor.submit(adapter.server, self.external_id)
                return None
            if not self.future.done():
                return None
            future, self.future = self.future, None
            try:
                return future.result()
            except Exception as exc:
                log.debug("Polling server %s failed: %s", self.external_id, exc)
                return None
        listing = adapter.listing
        server = listing.get(self.external_id)
        if server is None or not listing.fresh_since(self.created_at):
            return None
        return server

    def _advance(self) -> Instance | None:
        if self.state == "floating-ip":
            if not self.future.done():
                self.poll_delay = 0.05
                return None
            address = self.future.result()  # a failure fails the attempt
            instance = self.adapter.instance(self.server)
            instance.public_ipv4 = address
            instance.interface_ip = address
            self.complete = True
            self.adapter.building.discard(self)
            return instance
        if self.state == "start":
            self.future = self.adapter.executor.submit(self._create)
            self.state = "creating"
        if self.state == "creating":
            if not self.future.done():
                self.poll_delay = 0.05
                return None
            created = self.future.result()  # raises create errors
            self.future = None
            self.external_id = created["id"]
            self.created_at = time.monotonic()
            self.state = "building"
            self.adapter.building.add(self)
        server = self._current()
        if server is None:
            self.poll_delay = 0.1
            return None
        if server.status == "ERROR":
            fault = (server.fault or {}).get("message", "") if isinstance(
                server.fault, dict) else str(server.fault or "")
            if is_quota_message(fault):
                raise QuotaError(fault)
            raise LaunchStatusError(f"server {server.id} went to ERROR: {fault}")
        if server.status != "ACTIVE":
            self.poll_delay = 0.25
            return None
        instance = self.adapter.instance(server)
        pool = self.adapter.pool_of(self.label)
        # A floating IP only when the node has no public address it would use.
        if pool is not None and pool.auto_floating_ip and not instance.public_ipv4 \
                and not (instance.public_ipv6 and self.adapter.provider.ipv6_preferred):
            self.state = "floating-ip"
            self.server = server
            self.future = self.adapter.executor.submit(self.adapter.attach_floating_ip,
                                                       server)
            self.poll_delay = 0.05
            return None
        self.complete = True
        self.adapter.building.discard(self)
        return instance


class OpenStackDelete(StateMachine):
    """Floating IPs, then the server, then (boot-from-volume) any boot volume
    Nova left behind. Volumes are tagged with the node's metadata before the
    server goes, so a crash mid-way leaves them findable by the leak cleanup."""

    def __init__(self, adapter: "OpenStackAdapter", external_id: str):
        super().__init__()
        self.adapter = adapter
        self.external_id = external_id
        self.future: Future | None = None
        self.requested_at = 0.0
        self.volumes: list[str] = []
        self.volume_deadline = 0.0

    def _delete(self):
        adapter = self.adapter
        server = adapter.listing.get(self.external_id) if \
            adapter.listing.fetched_at else None
        if server is None:
            server = adapter.server(self.external_id)
            if server is None:
                raise NotFound(self.external_id)
        self.volumes = [v["id"] for v in (server.attached_volumes or [])
                        if isinstance(v, dict) and v.get("id")]
        tags = {k: v for k, v in (server.metadata or {}).items()
                if k.startswith("nodepool_")}
        for volume_id in self.volumes:
            adapter.conn.block_storage.set_volume_metadata(volume_id, **tags)
        # Floating IPs first, or they outlive the server (a leak that costs).
        adapter.release_floating_ips(self.external_id)
        response = adapter.conn.compute.delete(f"/servers/{self.external_id}")
        if response.status_code == 404:
            raise NotFound(self.external_id)
        _raise_for_status(response)

    def _remove_volumes(self) -> list[str]:
        """Delete detached boot volumes; returns those still present."""
        import openstack.exceptions
        conn = self.adapter.conn
        remaining = []
        for volume_id in self.volumes:
            try:
                volume = conn.block_storage.get_volume(volume_id)
            except openstack.exceptions.NotFoundException:
                continue
            if volume.status in ("available", "error"):
                log.info("Deleting boot volume %s left by server %s", volume_id,
                         self.external_id)
                conn.block_storage.delete_volume(volume_id, ignore_missing=True)
            remaining.append(volume_id)
        return remaining

    def advance(self) -> Instance | None:
        if self.state == "start":
            self.future = self.adapter.executor.submit(self._delete)
            self.state = "deleting"
        if self.state == "deleting":
            if not self.future.done():
                self.poll_delay = 0.05
                return None
            self.future.result()  # NotFound means done; other errors retry
            self.requested_at = time.monotonic()
            self.state = "waiting"
        if self.state == "waiting":
            listing = self.adapter.listing
            listing.refresh()
            if not listing.fresh_since(self.requested_at):
                self.poll_delay = 0.2
                return None
            if listing.get(self.external_id) is not None:
                self.poll_delay = 0.5
                return None
            if not self.volumes:
                self.complete = True
                return None
            self.state = "volumes"
            self.volume_deadline = time.monotonic() + VOLUME_WAIT
            self.future = None
        if self.future is None:
            self.future = self.adapter.executor.submit(self._remove_volumes)
        if not self.future.done():
            self.poll_delay = 0.1
            return None
        future, self.future = self.future, None
        self.volumes = future.result()
        if not self.volumes:
            self.complete = True
        elif time.monotonic() > self.volume_deadline:
            log.warning("Server %s: boot volumes %s still present after %ss; the "
                        "leak cleanup will remove them", self.external_id,
                        self.volumes, VOLUME_WAIT)
            self.complete = True
        else:
            self.poll_delay = 1.0
        return None


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
                     metadata: dict[str, str]) -> str:
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

    def azs(self) -> list[str]:
        if self._azs is None:
            self._azs = [z.name for z in self.conn.compute.availability_zones()
                         if (z.state or {}).get("available", True)]
        return list(self._azs)
