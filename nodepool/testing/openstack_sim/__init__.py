"""An OpenStack API simulator on loopback, for the openstack driver's tests.

Speaks enough of Keystone v3 (token and catalog), Nova (servers, flavors,
limits, availability zones, server metadata, console output, faults), Glance v2 (images),
Neutron (networks, ports, floating IPs) and Cinder v3 (volumes, limits) over
real HTTP for openstacksdk to drive it unmodified. Servers go BUILD -> ACTIVE after a
configurable delay. Faults can be injected (see :class:`Faults`).

Runs in a test process (``OpenStackSimulator().start()``) or on its own:
``python -m nodepool.testing.openstack_sim --port 5000``.
"""

from __future__ import annotations

import threading
import time
import uuid

from nodepool.testing.openstack_sim.http import Handler
from nodepool.testing.openstack_sim.model import (  # noqa: F401  (the public names)
    COMPUTE_MICROVERSION, FLAVORS, PROJECT_ID, USER_ID, Faults, Server,
)
from nodepool.testing.loopback import LoopbackService


class OpenStackSimulator(LoopbackService):
    def __init__(self, host: str = "127.0.0.1", port: int = 0, boot_delay: float = 0.0,
                 max_instances: int = 100, max_cores: int = 400,
                 max_ram: int = 1_000_000, max_volumes: int = 100,
                 max_volume_gb: int = 10_000, server_address: str | None = None,
                 password: str = "secret"):
        self.host = host
        self.port = port
        self.boot_delay = boot_delay
        self.password = password
        self.limits = {"instances": max_instances, "cores": max_cores, "ram": max_ram,
                       "volumes": max_volumes, "volume-gb": max_volume_gb}
        # Every server gets this fixed address when set (e.g. 127.0.0.1 so
        # that a real sshd on loopback answers the launcher's host-key scan).
        self.server_address = server_address
        self._v6 = 0
        self.faults = Faults()
        self.lock = threading.Lock()
        self.servers: dict[str, Server] = {}
        # Glance images: id -> record; one public image exists from the start.
        self.images: dict[str, dict] = {}
        self.add_image("Ubuntu 24.04", image_id="ubuntu-image-id")
        # Neutron: one private and one external network; ports appear with
        # servers; floating IPs are created and associated on request.
        self.networks = [
            {"id": "net-private", "name": "private", "router:external": False},
            {"id": "net-public", "name": "public", "router:external": True},
            # Servers attached to this one get a global IPv6 address.
            {"id": "net-v6", "name": "public-v6", "router:external": False}]
        self.floating_ips: dict[str, dict] = {}
        self._fip = 10
        # Nova keypairs: a server naming an unknown key_name is refused.
        self.keypairs: dict[str, dict] = {"nodepool": {
            "name": "nodepool", "type": "ssh",
            "fingerprint": "6b:2e:8b:7c:6a:a1:1b:37:1c:9a:5d:d1:41:6c:52:8e",
            "public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeSimulatorKey "
                          "nodepool@sim"}}
        # Ports not belonging to a server (e.g. left DOWN by a failed delete).
        self.extra_ports: dict[str, dict] = {}
        # Cinder volumes (boot volumes made by Nova from block device mappings).
        self.volumes: dict[str, dict] = {}
        self.requests: list[tuple[str, str]] = []
        self.page_size = 1000  # Nova's default osapi_max_limit
        self._address = 10

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> "OpenStackSimulator":
        simulator = self

        class BoundHandler(Handler):
            sim = simulator

        self._serve(BoundHandler, "openstack-sim")
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def auth_url(self) -> str:
        return f"{self.url}/identity/v3"

    def clouds_yaml(self, name: str = "sim", region: str = "RegionOne") -> dict:
        return {"clouds": {name: {
            "auth": {"auth_url": self.auth_url, "username": "demo",
                     "password": self.password, "project_name": "demo",
                     "user_domain_name": "Default", "project_domain_name": "Default"},
            "region_name": region, "identity_api_version": 3,
            "image_format": "qcow2"}}}

    # -- catalog ---------------------------------------------------------------

    def catalog(self) -> list[dict]:
        def service(kind, name, path):
            return {"type": kind, "name": name, "id": uuid.uuid4().hex,
                    "endpoints": [{"id": uuid.uuid4().hex, "interface": iface,
                                   "region": "RegionOne", "region_id": "RegionOne",
                                   "url": f"{self.url}{path}"}
                                  for iface in ("public", "internal", "admin")]}
        return [service("identity", "keystone", "/identity"),
                service("compute", "nova", "/compute/v2.1"),
                service("image", "glance", "/image"),
                service("network", "neutron", "/network"),
                service("block-storage", "cinder", f"/volume/v3/{PROJECT_ID}")]

    def add_image(self, name: str, image_id: str | None = None, status: str = "active",
                  properties: dict | None = None) -> dict:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        image = {"id": image_id or str(uuid.uuid4()), "name": name, "status": status,
                 "visibility": "public", "disk_format": "qcow2",
                 "container_format": "bare", "size": 0, "checksum": None,
                 "created_at": now, "updated_at": now, "tags": [],
                 "protected": False, "min_disk": 0, "min_ram": 0,
                 "owner": PROJECT_ID, "file": None, "schema": "/v2/schemas/image"}
        image.update(properties or {})
        image["file"] = f"/v2/images/{image['id']}/file"
        image["self"] = f"/v2/images/{image['id']}"
        self.images[image["id"]] = image
        return image

    def add_down_port(self) -> dict:
        port = {"id": str(uuid.uuid4()), "device_id": "", "device_owner": "compute:nova",
                "network_id": "net-private", "status": "DOWN", "fixed_ips": [],
                "mac_address": "fa:16:3e:00:00:99", "tenant_id": PROJECT_ID,
                "project_id": PROJECT_ID, "name": ""}
        self.extra_ports[port["id"]] = port
        return port

    def add_floating_ip(self, port_id: str | None = None) -> dict:
        self._fip += 1
        fip = {"id": str(uuid.uuid4()), "floating_network_id": "net-public",
               "floating_ip_address": f"203.0.113.{self._fip % 250 + 2}",
               "port_id": port_id, "fixed_ip_address": None, "router_id": "router-1",
               "status": "ACTIVE" if port_id else "DOWN", "tenant_id": PROJECT_ID,
               "project_id": PROJECT_ID, "description": "", "tags": []}
        self.floating_ips[fip["id"]] = fip
        return fip

    # -- servers -----------------------------------------------------------------

    def live_servers(self) -> list[Server]:
        now = time.monotonic()
        with self.lock:
            for server in self.servers.values():
                if server.status == "BUILD" and not self.faults.never_active \
                        and now >= server.active_at:
                    server.status = "ACTIVE"
            return list(self.servers.values())

    def usage(self) -> dict[str, int]:
        live = list(self.servers.values())
        return {"instances": len(live),
                "cores": sum(s.flavor["vcpus"] for s in live),
                "ram": sum(s.flavor["ram"] for s in live),
                "volumes": len(self.volumes),
                "volume-gb": sum(v["size"] for v in self.volumes.values())}

    def add_volume(self, size: int = 1, server: str | None = None, name: str = "",
                   image: str | None = None, delete_on_termination: bool = False) -> dict:
        volume = {"id": str(uuid.uuid4()), "size": size, "image": image,
                  "server": server, "name": name, "metadata": {},
                  "delete_on_termination": delete_on_termination,
                  "created_at": time.strftime("%Y-%m-%dT%H:%M:%S.000000",
                                              time.gmtime())}
        self.volumes[volume["id"]] = volume
        return volume
