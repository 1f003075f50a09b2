"""The ``fake`` driver: an in-memory simulated cloud.

Behaves like a small OpenStack cloud (flavors, AZs, images, quota, server
metadata) with configurable boot delay and failure injection, so tests, demos
and benchmarks exercise every launcher path without a real cloud. Nothing
here sleeps or starts threads: servers become ACTIVE when their boot time has
passed, and state machines ask to be polled again at that moment.

Clouds are shared by name within a process, so several launchers in one test
see the same servers, as they would with a real cloud.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from nodepool.drivers.base import (
    META_BUILD_ID, Adapter,
    Instance, LaunchError, LaunchStatusError, NotFound, QuotaError, Resource,
    RuntimeConfigurationError, StateMachine,
)
from nodepool.drivers.fake.config import FakeProvider
from nodepool.drivers.openstack.config import OpenStackLabel
from nodepool.resources import Resources

FLAVORS = {
    "Fake Flavor": {"vcpus": 4, "ram": 8192},
    "Unreal Flavor": {"vcpus": 4, "ram": 8192},
}
DEFAULT_IMAGES = {"fake-image-id": "Fake Precise"}
AZS = ["az1", "az2"]


@dataclass
class Settings:
    """Knobs of the simulation (config ``simulation`` or set by tests)."""

    boot_delay: float = 0.0
    delete_delay: float = 0.0
    upload_delay: float = 0.0
    max_cores: int = 100
    max_instances: int = 20
    max_ram: int = 1_000_000
    max_volumes: int = 100
    # Failure injection: counters decrement as failures are served.
    fail_creates: int = 0
    error_servers: int = 0
    quota_error_servers: int = 0
    fail_deletes: int = 0
    fail_uploads: int = 0
    fail_image_deletes: int = 0
    never_active: bool = False
    # Address reported for servers. With "fake" nothing listens, so the
    # adapter reports a fixed host key; a real loopback address makes the
    # launcher scan it.
    interface_ip: str = "fake"

    @classmethod
    def from_config(cls, simulation: dict[str, Any]) -> "Settings":
        settings = cls()
        settings.update(simulation)
        return settings

    def update(self, simulation: dict[str, Any]) -> None:
        for key, value in simulation.items():
            setattr(self, key.replace("-", "_"), value)


@dataclass
class FakeServer:
    id: str
    name: str
    flavor: str
    image: str
    az: str | None
    metadata: dict[str, str]
    active_at: float
    status: str = "BUILD"
    fault: str | None = None
    deleted_at: float | None = None
    created: float = field(default_factory=time.time)

    def refresh(self, now: float, never_active: bool) -> None:
        if self.status == "BUILD" and not never_active and now >= self.active_at:
            self.status = "ACTIVE"


@dataclass
class FakeImage:
    id: str
    name: str
    status: str
    metadata: dict[str, str]
    active_at: float = 0.0
    format: str | None = None


class FakeCloud:
    """One simulated cloud (region); thread-safe."""

    _registry: dict[tuple[str, str], "FakeCloud"] = {}
    _registry_lock = threading.Lock()

    def __init__(self, name: str, region: str | None, settings: Settings):
        self.name = name
        self.region = region
        self.settings = settings
        self.lock = threading.Lock()
        self.servers: dict[str, FakeServer] = {}
        # Running totals of servers not being deleted (quota is checked on
        # every create; recounting would make a burst quadratic).
        self.usage = {"instances": 0, "cores": 0, "ram": 0}
        self.images: dict[str, FakeImage] = {
            iid: FakeImage(iid, name, "active", {})
            for iid, name in DEFAULT_IMAGES.items()}
        self.calls = 0

    @classmethod
    def get(cls, name: str, region: str | None = None,
            simulation: dict[str, Any] | None = None) -> "FakeCloud":
        key = (name, region or "")
        with cls._registry_lock:
            cloud = cls._registry.get(key)
            if cloud is None:
                cloud = cls(name, region, Settings.from_config(simulation or {}))
                cls._registry[key] = cloud
            elif simulation:
                cloud.settings.update(simulation)
            return cloud

    @classmethod
    def reset_all(cls) -> None:
        with cls._registry_lock:
            cls._registry.clear()

    # -- servers -----------------------------------------------------------

    def _usage(self) -> dict[str, int]:
        return self.usage

    def _count(self, server: FakeServer, sign: int) -> None:
        flavor = FLAVORS[server.flavor]
        self.usage["instances"] += sign
        self.usage["cores"] += sign * flavor["vcpus"]
        self.usage["ram"] += sign * flavor["ram"]

    def create_server(self, name: str, flavor: str, image: str, az: str | None,
                      metadata: dict[str, str]) -> FakeServer:
        with self.lock:
            self.calls += 1
            settings = self.settings
            if settings.fail_creates > 0:
                settings.fail_creates -= 1
                raise LaunchError("simulated create failure")
            if az is not None and az not in AZS:
                raise LaunchError(f"availability zone {az!r} does not exist")
            usage = self._usage()
            wanted = FLAVORS[flavor]
            if (usage["instances"] + 1 > settings.max_instances
                    or usage["cores"] + wanted["vcpus"] > settings.max_cores
                    or usage["ram"] + wanted["ram"] > settings.max_ram):
                raise QuotaError("Quota exceeded for instances, cores or ram")
            server = FakeServer(id=uuid.uuid4().hex, name=name, flavor=flavor,
                                image=image, az=az, metadata=dict(metadata),
                                active_at=time.monotonic() + settings.boot_delay)
            if settings.quota_error_servers > 0:
                settings.quota_error_servers -= 1
                server.status, server.fault = "ERROR", (
                    "Quota exceeded: requested instances exceeds quota")
            elif settings.error_servers > 0:
                settings.error_servers -= 1
                server.status, server.fault = "ERROR", "simulated boot failure"
            self.servers[server.id] = server
            self._count(server, +1)
            return server

    def server(self, server_id: str) -> FakeServer | None:
        with self.lock:
            server = self.servers.get(server_id)
            if server is None:
                return None
            now = time.monotonic()
            if server.deleted_at is not None and now >= server.deleted_at:
                del self.servers[server_id]
                return None
            server.refresh(now, self.settings.never_active)
            return server

    def delete_server(self, server_id: str) -> None:
        with self.lock:
            self.calls += 1
            server = self.servers.get(server_id)
            if server is None:
                raise NotFound(server_id)
            if self.settings.fail_deletes > 0:
                self.settings.fail_deletes -= 1
                raise LaunchError("simulated delete failure")
            if server.deleted_at is None:
                server.status = "DELETED"
                server.deleted_at = time.monotonic() + self.settings.delete_delay
                self._count(server, -1)

    def list_servers(self) -> list[FakeServer]:
        now = time.monotonic()
        with self.lock:
            for server_id in [s.id for s in self.servers.values()
                              if s.deleted_at is not None and now >= s.deleted_at]:
                del self.servers[server_id]
            for server in self.servers.values():
                server.refresh(now, self.settings.never_active)
            return list(self.servers.values())

    # -- images ------------------------------------------------------------

    def upload_image(self, name: str, metadata: dict[str, str]) -> FakeImage:
        with self.lock:
            if self.settings.fail_uploads > 0:
                self.settings.fail_uploads -= 1
                raise LaunchError("simulated upload failure")
            image = FakeImage(uuid.uuid4().hex, name, "active", dict(metadata),
                              time.monotonic() + self.settings.upload_delay)
            self.images[image.id] = image
            return image

    def delete_image(self, image_id: str) -> None:
        with self.lock:
            if self.settings.fail_image_deletes > 0 and image_id in self.images:
                self.settings.fail_image_deletes -= 1
                raise LaunchError("simulated image delete failure")
            if self.images.pop(image_id, None) is None:
                raise NotFound(image_id)

    def find_image(self, name_or_id: str) -> FakeImage | None:
        with self.lock:
            if name_or_id in self.images:
                return self.images[name_or_id]
            for image in self.images.values():
                if image.name == name_or_id:
                    return image
        return None


def _flavor_for(label: OpenStackLabel) -> str:
    """By name (exact, or substring when min-ram is also set), else smallest RAM."""
    candidates = sorted(FLAVORS, key=lambda f: (FLAVORS[f]["ram"], f))
    if label.flavor_name:
        if label.flavor_name in FLAVORS:
            return label.flavor_name
        candidates = [f for f in candidates if label.flavor_name in f]
    for flavor in candidates:
        if FLAVORS[flavor]["ram"] >= (label.min_ram or 0):
            return flavor
    raise RuntimeConfigurationError(
        f"no flavor matches flavor-name={label.flavor_name!r} min-ram={label.min_ram}")


class FakeCreate(StateMachine):
    def __init__(self, adapter: "FakeAdapter", hostname, label, image, metadata, az):
        super().__init__()
        self.adapter = adapter
        self.hostname = hostname
        self.label = label
        self.image = image
        self.metadata = metadata
        self.az = az

    def advance(self) -> Instance | None:
        cloud = self.adapter.cloud
        if self.state == "start":
            server = cloud.create_server(self.hostname, _flavor_for(self.label),
                                         self.image, self.az, self.metadata)
            self.external_id = server.id
            self.state = "building"
        server = cloud.server(self.external_id)
        if server is None:
            raise LaunchError(f"server {self.external_id} disappeared")
        if server.status == "ERROR":
            fault = server.fault or ""
            if "quota" in fault.lower() and "exceed" in fault.lower():
                raise QuotaError(fault)
            raise LaunchStatusError(f"server went to ERROR: {fault}")
        if server.status != "ACTIVE":
            self.poll_delay = max(0.0, server.active_at - time.monotonic()) or 0.05
            return None
        self.complete = True
        return self.adapter.instance(server)

    def restore(self, saved: dict) -> None:
        # With its id known the server exists: poll it (creating it again
        # would leak the first one).
        super().restore(saved)
        if self.external_id is not None:
            self.state = "building"


class FakeDelete(StateMachine):
    def __init__(self, adapter: "FakeAdapter", external_id):
        super().__init__()
        self.adapter = adapter
        self.external_id = external_id

    def advance(self) -> Instance | None:
        cloud = self.adapter.cloud
        if self.state == "start":
            cloud.delete_server(self.external_id)  # NotFound: already gone
            self.state = "deleting"
        server = cloud.server(self.external_id)
        if server is None:
            self.complete = True
            return None
        self.poll_delay = max(0.0, (server.deleted_at or 0) - time.monotonic()) or 0.05
        return None

    def restore(self, saved: dict) -> None:
        super().restore(saved)
        if saved.get("state") == "deleting":
            self.state = "deleting"  # asked already: wait for it to go


FAKE_HOST_KEYS = ["ssh-rsa FAKEKEY"]


class FakeAdapter(Adapter):
    provider: FakeProvider

    def __init__(self, provider: FakeProvider):
        super().__init__(provider)
        self.cloud = FakeCloud.get(provider.cloud or "fake", provider.region_name,
                                   provider.simulation)

    def reconfigure(self, provider: FakeProvider) -> None:
        super().reconfigure(provider)
        if provider.simulation:
            self.cloud.settings.update(provider.simulation)

    def instance(self, server: FakeServer) -> Instance:
        flavor = FLAVORS[server.flavor]
        return Instance(
            external_id=server.id, interface_ip=self.cloud.settings.interface_ip,
            public_ipv4=self.cloud.settings.interface_ip,
            private_ipv4=self.cloud.settings.interface_ip, cloud=self.cloud.name,
            region=self.cloud.region,
            az=server.az, host_id="fake-host", metadata=dict(server.metadata),
            resources={"cores": flavor["vcpus"], "instances": 1, "ram": flavor["ram"]},
            host_keys=FAKE_HOST_KEYS if self.cloud.settings.interface_ip == "fake"
            else None,
            ready=server.status == "ACTIVE")

    def create_state_machine(self, hostname, label, image_external_id, metadata,
                             request, az):
        if image_external_id is None:
            cloud_image = self.provider.cloud_images.get(label.cloud_image or "")
            image_external_id = cloud_image.external_name if cloud_image else None
        return FakeCreate(self, hostname, label, image_external_id, metadata, az)

    def delete_state_machine(self, external_id):
        return FakeDelete(self, external_id)

    def list_instances(self) -> list[Instance]:
        return [self.instance(s) for s in self.cloud.list_servers()
                if s.deleted_at is None]

    def list_resources(self) -> list[Resource]:
        found = [Resource("instance", s.id, dict(s.metadata))
                 for s in self.cloud.list_servers() if s.deleted_at is None]
        with self.cloud.lock:
            found += [Resource("image", i.id, dict(i.metadata))
                      for i in self.cloud.images.values()
                      if META_BUILD_ID in i.metadata]
        return found

    def delete_resource(self, resource: Resource) -> None:
        try:
            if resource.type == "instance":
                self.cloud.delete_server(resource.id)
            elif resource.type == "image":
                self.cloud.delete_image(resource.id)
        except NotFound:
            pass

    def quota_limits(self) -> Resources:
        s = self.cloud.settings
        return Resources({"cores": s.max_cores, "instances": s.max_instances,
                          "ram": s.max_ram, "volumes": s.max_volumes},
                         default=float("inf"))

    def quota_for_label(self, label: OpenStackLabel) -> Resources:
        flavor = FLAVORS[_flavor_for(label)]
        return Resources({"cores": flavor["vcpus"], "instances": 1,
                          "ram": flavor["ram"]})

    def azs(self) -> list[str]:
        return list(AZS)

    def capacity_key(self, label: OpenStackLabel) -> str:
        return _flavor_for(label)

    def label_ready(self, label: OpenStackLabel) -> bool:
        if not label.cloud_image:
            return True
        cloud_image = self.provider.cloud_images.get(label.cloud_image)
        return cloud_image is not None and \
            self.cloud.find_image(cloud_image.external_name) is not None

    def upload_image(self, image_name, filename, image_format, metadata,
                     provider_image=None) -> str:
        if not os.path.isfile(filename):
            raise LaunchError(f"no image file {filename}")
        image = self.cloud.upload_image(image_name, metadata)
        image.format = image_format
        return image.id

    def delete_image(self, external_id: str) -> None:
        self.cloud.delete_image(external_id)

    def list_images(self) -> list[dict]:
        with self.cloud.lock:
            return [{"id": i.id, "name": i.name, "properties": dict(i.metadata)}
                    for i in self.cloud.images.values()]
