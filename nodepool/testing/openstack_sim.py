"""An OpenStack API simulator on loopback, for the openstack driver's tests.

Speaks enough of Keystone v3 (token and catalog), Nova (servers, flavors,
limits, availability zones, server metadata, faults), Glance v2 (images),
Neutron (networks, ports, floating IPs) and Cinder v3 (volumes, limits) over
real HTTP for openstacksdk to drive it unmodified. Servers go BUILD -> ACTIVE after a
configurable delay. Faults can be injected (see :class:`Faults`).

Runs in a test process (``OpenStackSimulator().start()``) or on its own:
``python -m nodepool.testing.openstack_sim --port 5000``.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, Callable

from nodepool.web.server import QuietHTTPServer, serve

PROJECT_ID = "5f0d1a6b2c3e4d5f8a9b0c1d2e3f4a5b"
USER_ID = "9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d"
COMPUTE_MICROVERSION = "2.79"


@dataclass
class Faults:
    """Failure injection; counters decrement as failures are served."""

    http_500: int = 0                 # next N requests of any kind
    rate_limited: int = 0             # next N requests answered 429
    over_limit: int = 0               # next N requests answered 413
    quota_creates: int = 0            # next N server creates answered 403 quota
    error_servers: int = 0            # next N servers go to ERROR
    quota_error_servers: int = 0      # ... with a quota fault
    failing_deletes: int = 0          # next N server deletes answered 500
    volumes_left_behind: int = 0      # next N server deletes keep their boot volume
    slow_seconds: float = 0.0         # every response delayed this long
    never_active: bool = False


@dataclass
class Server:
    id: str
    name: str
    flavor: dict
    image: str | None
    az: str
    metadata: dict[str, str]
    networks: Any
    key_name: str | None
    active_at: float
    status: str = "BUILD"
    fault: dict | None = None
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                time.gmtime()))
    address: str = ""
    address6: str = ""
    volumes: list = field(default_factory=list)
    security_groups: list = field(default_factory=list)
    config_drive: bool = False
    user_data: str | None = None


FLAVORS = [
    {"id": "1", "name": "m1.small", "vcpus": 1, "ram": 2048, "disk": 20},
    {"id": "2", "name": "m1.medium", "vcpus": 2, "ram": 4096, "disk": 40},
    {"id": "3", "name": "m1.large", "vcpus": 4, "ram": 8192, "disk": 80},
]


class OpenStackSimulator:
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
        self._server: QuietHTTPServer | None = None

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> "OpenStackSimulator":
        simulator = self

        class Handler(_Handler):
            sim = simulator

        self._server = serve(self.host, self.port, Handler, "openstack-sim")
        self.port = self._server.server_address[1]
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

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


def _server_view(sim: OpenStackSimulator, server: Server) -> dict:
    view = {
        "id": server.id, "name": server.name, "status": server.status,
        "tenant_id": PROJECT_ID, "user_id": USER_ID,
        "metadata": dict(server.metadata),
        "flavor": {"original_name": server.flavor["name"], "vcpus": server.flavor["vcpus"],
                   "ram": server.flavor["ram"], "disk": server.flavor["disk"],
                   "ephemeral": 0, "swap": 0, "extra_specs": {}},
        "image": {"id": server.image} if server.image else "",
        "OS-EXT-AZ:availability_zone": server.az,
        "hostId": "sim-host-" + server.id[:8],
        "created": server.created, "updated": server.created,
        "addresses": {}, "key_name": server.key_name,
        "links": [{"rel": "self", "href": f"{sim.url}/compute/v2.1/servers/{server.id}"}],
        "accessIPv4": "", "accessIPv6": "", "config_drive": "",
        "progress": 0, "security_groups": [{"name": "default"}],
        "OS-EXT-STS:task_state": None, "OS-EXT-STS:vm_state":
            {"BUILD": "building", "ACTIVE": "active", "ERROR": "error"}.get(
                server.status, "active"),
        "OS-EXT-STS:power_state": 1 if server.status == "ACTIVE" else 0,
        "os-extended-volumes:volumes_attached": [
            {"id": v, "delete_on_termination": True} for v in server.volumes],
        "tags": [], "locked": False, "description": None,
    }
    if server.status == "ACTIVE":
        addresses = [{"addr": server.address, "version": 4, "OS-EXT-IPS:type": "fixed",
                      "OS-EXT-IPS-MAC:mac_addr": "fa:16:3e:00:00:01"}]
        for fip in list(sim.floating_ips.values()):
            if fip["port_id"] == f"port-{server.id}":
                addresses.append({"addr": fip["floating_ip_address"], "version": 4,
                                  "OS-EXT-IPS:type": "floating",
                                  "OS-EXT-IPS-MAC:mac_addr": "fa:16:3e:00:00:01"})
        view["addresses"] = {"private": addresses}
        if server.address6:
            view["addresses"]["public-v6"] = [
                {"addr": server.address6, "version": 6, "OS-EXT-IPS:type": "fixed",
                 "OS-EXT-IPS-MAC:mac_addr": "fa:16:3e:00:00:02"}]
    if server.fault:
        view["fault"] = server.fault
    return view


class _Handler(BaseHTTPRequestHandler):
    sim: OpenStackSimulator
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # keep test output quiet
        pass

    # -- plumbing ----------------------------------------------------------------

    def _body(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        if not length:
            return {}
        raw = self.rfile.read(length)
        try:
            return json.loads(raw)
        except ValueError:
            return {}

    def _send(self, status: int, body: Any = None, headers: dict | None = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Openstack-Request-Id", f"req-{uuid.uuid4()}")
        if self.path.startswith("/compute"):
            self.send_header("OpenStack-API-Version", f"compute {COMPUTE_MICROVERSION}")
            self.send_header("X-OpenStack-Nova-API-Version", COMPUTE_MICROVERSION)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, headers: dict | None = None) -> None:
        kind = {400: "badRequest", 403: "forbidden", 404: "itemNotFound",
                413: "overLimit", 429: "overLimit", 500: "computeFault"}.get(status, "error")
        self._send(status, {kind: {"code": status, "message": message}}, headers)

    def _dispatch(self, method: str) -> None:
        sim = self.sim
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        with sim.lock:
            sim.requests.append((method, path))
            faults = sim.faults
            delay = faults.slow_seconds
            if faults.http_500 > 0 and not path.startswith("/identity"):
                faults.http_500 -= 1
                fail = 500
            elif faults.rate_limited > 0 and not path.startswith("/identity"):
                faults.rate_limited -= 1
                fail = 429
            elif faults.over_limit > 0 and not path.startswith("/identity"):
                faults.over_limit -= 1
                fail = 413
            else:
                fail = 0
        if delay:
            time.sleep(delay)
        if fail:
            # Rate limits say when to come back, as Nova and Swift do.
            self._error(fail, "simulated failure",
                        {"Retry-After": "0"} if fail in (413, 429) else None)
            return
        for route_method, pattern, function in ROUTES:
            if route_method != method:
                continue
            match = re.fullmatch(pattern, path)
            if match:
                function(self, *match.groups())
                return
        self._error(404, f"no route for {method} {path}")

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    # -- keystone ----------------------------------------------------------------

    def identity_versions(self):
        self._send(300, {"versions": {"values": [self._identity_version()]}})

    def _identity_version(self):
        return {"id": "v3.14", "status": "stable", "updated": "2020-01-01T00:00:00Z",
                "links": [{"rel": "self", "href": f"{self.sim.url}/identity/v3/"}],
                "media-types": [{"base": "application/json",
                                 "type": "application/vnd.openstack.identity-v3+json"}]}

    def identity_v3(self):
        self._send(200, {"version": self._identity_version()})

    def tokens(self):
        body = self._body()
        password = (body.get("auth", {}).get("identity", {}).get("password", {})
                    .get("user", {}).get("password"))
        if password != self.sim.password:
            self._error(401, "The request you have made requires authentication.")
            return
        now = time.time()
        token = {
            "methods": ["password"], "expires_at": time.strftime(
                "%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(now + 3600)),
            "issued_at": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(now)),
            "user": {"id": USER_ID, "name": "demo",
                     "domain": {"id": "default", "name": "Default"}},
            "project": {"id": PROJECT_ID, "name": "demo",
                        "domain": {"id": "default", "name": "Default"}},
            "roles": [{"id": uuid.uuid4().hex, "name": "member"}],
            "catalog": self.sim.catalog(),
        }
        self._send(201, {"token": token}, {"X-Subject-Token": uuid.uuid4().hex})

    # -- nova ----------------------------------------------------------------

    def _compute_version(self):
        return {"id": "v2.1", "status": "CURRENT", "version": COMPUTE_MICROVERSION,
                "min_version": "2.1", "updated": "2013-07-23T11:33:21Z",
                "links": [{"rel": "self", "href": f"{self.sim.url}/compute/v2.1/"}]}

    def compute_versions(self):
        self._send(200, {"versions": [self._compute_version()]})

    def compute_v21(self):
        self._send(200, {"version": self._compute_version()})

    def flavors(self, detail=None):
        self._send(200, {"flavors": [dict(f, **{"OS-FLV-EXT-DATA:ephemeral": 0,
                                                 "os-flavor-access:is_public": True,
                                                 "swap": "", "rxtx_factor": 1.0,
                                                 "description": None, "extra_specs": {},
                                                 "links": []})
                                      for f in FLAVORS]})

    def flavor(self, flavor_id):
        for flavor in FLAVORS:
            if flavor["id"] == flavor_id:
                self._send(200, {"flavor": dict(flavor, links=[])})
                return
        self._error(404, f"Flavor {flavor_id} could not be found.")

    def create_server(self):
        sim = self.sim
        spec = self._body().get("server", {})
        flavor_ref = str(spec.get("flavorRef", ""))
        flavor = next((f for f in FLAVORS if f["id"] == flavor_ref
                       or flavor_ref.endswith("/" + f["id"])), None)
        if flavor is None:
            self._error(400, f"Flavor {flavor_ref} could not be found.")
            return
        if spec.get("user_data"):
            import base64
            import binascii
            try:
                base64.b64decode(spec["user_data"], validate=True)
            except (binascii.Error, ValueError):
                self._error(400, "Invalid input for field/attribute user_data. "
                            "Value: is not a base64 string")
                return
        if spec.get("key_name") and spec["key_name"] not in sim.keypairs:
            self._error(400, "Invalid key_name provided.")
            return
        with sim.lock:
            faults = sim.faults
            usage = sim.usage()
            mappings = [m for m in spec.get("block_device_mapping_v2") or []
                        if m.get("destination_type") == "volume"]
            over = (usage["instances"] + 1 > sim.limits["instances"]
                    or usage["cores"] + flavor["vcpus"] > sim.limits["cores"]
                    or usage["ram"] + flavor["ram"] > sim.limits["ram"]
                    or usage["volumes"] + len(mappings) > sim.limits["volumes"]
                    or usage["volume-gb"] + sum(int(m.get("volume_size") or 1)
                                                for m in mappings)
                    > sim.limits["volume-gb"])
            if faults.quota_creates > 0 or over:
                if faults.quota_creates > 0:
                    faults.quota_creates -= 1
                quota_error = True
            else:
                quota_error = False
                sim._address += 1
                server = Server(
                    id=str(uuid.uuid4()), name=spec.get("name", ""), flavor=flavor,
                    image=spec.get("imageRef"),
                    az=spec.get("availability_zone") or "nova",
                    metadata={str(k): str(v) for k, v in
                              (spec.get("metadata") or {}).items()},
                    networks=spec.get("networks"), key_name=spec.get("key_name"),
                    security_groups=[g.get("name") for g in
                                     spec.get("security_groups") or []],
                    config_drive=bool(spec.get("config_drive")),
                    user_data=spec.get("user_data"),
                    active_at=time.monotonic() + sim.boot_delay,
                    address=sim.server_address or
                    f"10.0.{sim._address // 250}.{sim._address % 250 + 2}")
                if any(n.get("uuid") == "net-v6" for n in
                       (server.networks if isinstance(server.networks, list) else [])):
                    sim._v6 += 1
                    server.address6 = f"2001:db8::{sim._v6:x}"
                for mapping in mappings:
                    volume = sim.add_volume(
                        size=int(mapping.get("volume_size") or 1),
                        image=mapping.get("uuid"), server=server.id,
                        delete_on_termination=bool(mapping.get("delete_on_termination")))
                    server.volumes.append(volume["id"])
                if faults.quota_error_servers > 0:
                    faults.quota_error_servers -= 1
                    server.status = "ERROR"
                    server.fault = {"code": 500, "message":
                                    "Quota exceeded for cores: Requested 4, but already "
                                    "used 100 of 100 cores; exceeds quota"}
                elif faults.error_servers > 0:
                    faults.error_servers -= 1
                    server.status = "ERROR"
                    server.fault = {"code": 500, "message": "No valid host was found."}
                sim.servers[server.id] = server
        if quota_error:
            self._error(403, "Quota exceeded for instances: Requested 1, but already "
                        "used all of the allowed instances")
            return
        self._send(202, {"server": {"id": server.id, "links": [],
                                    "adminPass": "simulated",
                                    "OS-DCF:diskConfig": "MANUAL",
                                    "security_groups": [{"name": "default"}]}})

    def servers(self, detail=None):
        views = [_server_view(self.sim, s) for s in self.sim.live_servers()]
        if not detail:
            views = [{"id": v["id"], "name": v["name"], "links": v["links"]}
                     for v in views]
        # Pages of at most page_size, as Nova's osapi_max_limit does.
        query = self._query()
        limit = min(int(query.get("limit", self.sim.page_size)), self.sim.page_size)
        ids = [v["id"] for v in views]
        start = ids.index(query["marker"]) + 1 if query.get("marker") in ids else 0
        page = views[start:start + limit]
        body: dict = {"servers": page}
        if start + limit < len(views):
            body["servers_links"] = [{"rel": "next", "href":
                                      f"{self.sim.url}{self.path.split('?')[0]}"
                                      f"?limit={limit}&marker={page[-1]['id']}"}]
        self._send(200, body)

    def server(self, server_id):
        for server in self.sim.live_servers():
            if server.id == server_id:
                self._send(200, {"server": _server_view(self.sim, server)})
                return
        self._error(404, f"Instance {server_id} could not be found.")

    def delete_server(self, server_id):
        sim = self.sim
        with sim.lock:
            if server_id not in sim.servers:
                missing = True
            else:
                missing = False
                if sim.faults.failing_deletes > 0:
                    sim.faults.failing_deletes -= 1
                    failing = True
                else:
                    failing = False
                    server = sim.servers.pop(server_id)
                    # Nova failing to delete a boot volume leaves it
                    # detached and "available", still counting against quota.
                    keep = sim.faults.volumes_left_behind > 0 and bool(server.volumes)
                    if keep:
                        sim.faults.volumes_left_behind -= 1
                    for volume_id in server.volumes:
                        volume = sim.volumes.get(volume_id)
                        if volume is None:
                            continue
                        if volume["delete_on_termination"] and not keep:
                            del sim.volumes[volume_id]
                        else:
                            volume["server"] = None
        if missing:
            self._error(404, f"Instance {server_id} could not be found.")
        elif failing:
            self._error(500, "simulated delete failure")
        else:
            self._send(204)

    def server_metadata(self, server_id):
        for server in self.sim.live_servers():
            if server.id == server_id:
                self._send(200, {"metadata": dict(server.metadata)})
                return
        self._error(404, f"Instance {server_id} could not be found.")

    def limits(self):
        sim = self.sim
        with sim.lock:
            usage = sim.usage()
        self._send(200, {"limits": {"rate": [], "absolute": {
            "maxTotalInstances": sim.limits["instances"],
            "maxTotalCores": sim.limits["cores"],
            "maxTotalRAMSize": sim.limits["ram"],
            "maxServerMeta": 128,
            "maxTotalKeypairs": 100, "maxServerGroups": 10,
            "maxServerGroupMembers": 10, "maxImageMeta": 128,
            "totalInstancesUsed": usage["instances"],
            "totalCoresUsed": usage["cores"], "totalRAMUsed": usage["ram"],
            "totalServerGroupsUsed": 0}}})

    def keypairs(self):
        with self.sim.lock:
            found = [{"keypair": dict(k)} for k in self.sim.keypairs.values()]
        self._send(200, {"keypairs": found})

    def keypair(self, name):
        keypair = self.sim.keypairs.get(name)
        if keypair is None:
            self._error(404, f"Keypair {name} not found for user {USER_ID}")
        else:
            self._send(200, {"keypair": dict(keypair, user_id=USER_ID)})

    # -- cinder ------------------------------------------------------------------

    def volume_versions(self):
        self._send(200, {"versions": [{
            "id": "v3.0", "status": "CURRENT", "version": "3.70", "min_version": "3.0",
            "updated": "2023-01-01T00:00:00Z",
            "links": [{"rel": "self", "href": f"{self.sim.url}/volume/v3/"}]}]})

    def _volume_view(self, volume: dict) -> dict:
        attached = volume["server"]
        return {"id": volume["id"], "name": volume.get("name", ""), "size": volume["size"],
                "status": "in-use" if attached else "available",
                "attachments": [{"server_id": attached, "attachment_id": "att-" +
                                 volume["id"][:8], "volume_id": volume["id"],
                                 "device": "/dev/vda", "id": volume["id"]}]
                if attached else [],
                "bootable": "true" if volume.get("image") else "false",
                "volume_image_metadata": {"image_id": volume["image"]}
                if volume.get("image") else {},
                "availability_zone": "nova", "metadata": dict(volume.get("metadata", {})),
                "multiattach": False,
                "volume_type": "lvmdriver-1", "encrypted": False,
                "created_at": volume.get("created_at"), "updated_at": None,
                "os-vol-tenant-attr:tenant_id": PROJECT_ID,
                "links": [{"rel": "self", "href": f"{self.sim.url}/volume/v3/"
                           f"{PROJECT_ID}/volumes/{volume['id']}"}]}

    def volumes(self, project_id, detail=None):
        with self.sim.lock:
            views = [self._volume_view(v) for v in self.sim.volumes.values()]
        query = self._query()
        if "status" in query:
            views = [v for v in views if v["status"] == query["status"]]
        if not detail:
            views = [{"id": v["id"], "name": v["name"], "links": v["links"]}
                     for v in views]
        self._send(200, {"volumes": views})

    def volume(self, project_id, volume_id):
        with self.sim.lock:
            volume = self.sim.volumes.get(volume_id)
            view = self._volume_view(volume) if volume else None
        if view is None:
            self._error(404, f"Volume {volume_id} could not be found.")
        else:
            self._send(200, {"volume": view})

    def delete_volume(self, project_id, volume_id):
        with self.sim.lock:
            volume = self.sim.volumes.get(volume_id)
            in_use = volume is not None and volume["server"] is not None
            if volume is not None and not in_use:
                del self.sim.volumes[volume_id]
        if volume is None:
            self._error(404, f"Volume {volume_id} could not be found.")
        elif in_use:
            self._error(400, "Invalid volume: Volume status must be available or "
                        "error or error_restoring or error_extending or "
                        "error_managing and must not be migrating, attached, "
                        "belong to a group, have snapshots or be disassociated "
                        "from snapshots after volume transfer.")
        else:
            self._send(202)

    def volume_metadata(self, project_id, volume_id):
        spec = self._body().get("metadata") or {}
        with self.sim.lock:
            volume = self.sim.volumes.get(volume_id)
            if volume is not None:
                volume.setdefault("metadata", {}).update(
                    {str(k): str(v) for k, v in spec.items()})
                current = dict(volume["metadata"])
        if volume is None:
            self._error(404, f"Volume {volume_id} could not be found.")
        else:
            self._send(200, {"metadata": current})

    def volume_limits(self, project_id):
        sim = self.sim
        with sim.lock:
            usage = sim.usage()
        self._send(200, {"limits": {"rate": [], "absolute": {
            "maxTotalVolumes": sim.limits["volumes"],
            "maxTotalVolumeGigabytes": sim.limits["volume-gb"],
            "maxTotalSnapshots": 10, "maxTotalBackups": 10,
            "maxTotalBackupGigabytes": 1000,
            "totalVolumesUsed": usage["volumes"],
            "totalGigabytesUsed": usage["volume-gb"],
            "totalSnapshotsUsed": 0, "totalBackupsUsed": 0,
            "totalBackupGigabytesUsed": 0}}})

    # -- glance ----------------------------------------------------------------

    def image_versions(self):
        self._send(300, {"versions": [{"id": "v2.15", "status": "CURRENT", "links": [
            {"rel": "self", "href": f"{self.sim.url}/image/v2/"}]}]})

    def images(self):
        from urllib.parse import parse_qs, urlparse
        query = parse_qs(urlparse(self.path).query)
        with self.sim.lock:
            found = list(self.sim.images.values())
        if "name" in query:
            found = [i for i in found if i["name"] == query["name"][0]]
        self._send(200, {"images": found, "schema": "/v2/schemas/images",
                         "first": "/v2/images"})

    def image(self, image_id):
        image = self.sim.images.get(image_id)
        if image is None:
            self._error(404, f"No image found with ID {image_id}")
            return
        self._send(200, image)

    def create_image(self):
        body = self._body()
        name = body.pop("name", "")
        image_id = body.pop("id", None)
        with self.sim.lock:
            image = self.sim.add_image(name, image_id=image_id, status="queued",
                                       properties=body)
            image["visibility"] = body.get("visibility", "private")
        self._send(201, image)

    def upload_image(self, image_id):
        length = int(self.headers.get("Content-Length") or 0)
        remaining = length
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1 << 20))
            if not chunk:
                break
            remaining -= len(chunk)
        with self.sim.lock:
            image = self.sim.images.get(image_id)
            if image is not None:
                image["status"] = "active"
                image["size"] = length
        if image is None:
            self._error(404, f"No image found with ID {image_id}")
        else:
            self._send(204)

    def delete_image(self, image_id):
        with self.sim.lock:
            image = self.sim.images.pop(image_id, None)
        if image is None:
            self._error(404, f"No image found with ID {image_id}")
        else:
            self._send(204)

    # -- neutron ---------------------------------------------------------------

    def _query(self) -> dict:
        from urllib.parse import parse_qs, urlparse
        return {k: v[0] for k, v in parse_qs(urlparse(self.path).query).items()}

    def network(self, network_id):
        for network in self.sim.networks:
            if network["id"] == network_id:
                self._send(200, {"network": dict(network, status="ACTIVE")})
                return
        self._error(404, f"Network {network_id} could not be found.")

    def network_versions(self):
        self._send(200, {"versions": [{"id": "v2.0", "status": "CURRENT", "links": [
            {"rel": "self", "href": f"{self.sim.url}/network/v2.0/"}]}]})

    def networks(self):
        query = self._query()
        found = [dict(n, status="ACTIVE", subnets=[], admin_state_up=True, shared=False,
                      tenant_id=PROJECT_ID, project_id=PROJECT_ID)
                 for n in self.sim.networks]
        if "name" in query:
            found = [n for n in found if n["name"] == query["name"]]
        if "router:external" in query:
            wanted = query["router:external"].lower() == "true"
            found = [n for n in found if n["router:external"] == wanted]
        self._send(200, {"networks": found})

    def ports(self):
        query = self._query()
        ports = [{"id": f"port-{s.id}", "device_id": s.id, "device_owner": "compute:nova",
                  "network_id": "net-private", "status": "ACTIVE",
                  "fixed_ips": [{"ip_address": s.address, "subnet_id": "subnet-private"}],
                  "mac_address": "fa:16:3e:00:00:01", "tenant_id": PROJECT_ID,
                  "project_id": PROJECT_ID, "name": ""}
                 for s in self.sim.live_servers() if s.status == "ACTIVE"]
        with self.sim.lock:
            ports += list(self.sim.extra_ports.values())
        if "device_id" in query:
            ports = [p for p in ports if p["device_id"] == query["device_id"]]
        if "status" in query:
            ports = [p for p in ports if p["status"] == query["status"]]
        self._send(200, {"ports": ports})

    def delete_port(self, port_id):
        with self.sim.lock:
            port = self.sim.extra_ports.pop(port_id, None)
        if port is None:
            self._error(404, f"Port {port_id} could not be found.")
        else:
            self._send(204)

    def floatingips(self):
        query = self._query()
        with self.sim.lock:
            found = list(self.sim.floating_ips.values())
        for key in ("port_id", "floating_ip_address"):
            if key in query:
                found = [f for f in found if f[key] == query[key]]
        self._send(200, {"floatingips": found})

    def create_floatingip(self):
        spec = self._body().get("floatingip", {})
        sim = self.sim
        with sim.lock:
            fip = sim.add_floating_ip(spec.get("port_id"))
        self._send(201, {"floatingip": fip})

    def floatingip(self, fip_id):
        fip = self.sim.floating_ips.get(fip_id)
        if fip is None:
            self._error(404, f"Floating IP {fip_id} could not be found")
        else:
            self._send(200, {"floatingip": fip})

    def update_floatingip(self, fip_id):
        spec = self._body().get("floatingip", {})
        with self.sim.lock:
            fip = self.sim.floating_ips.get(fip_id)
            if fip is not None:
                fip["port_id"] = spec.get("port_id")
                fip["status"] = "ACTIVE" if fip["port_id"] else "DOWN"
        if fip is None:
            self._error(404, f"Floating IP {fip_id} could not be found")
        else:
            self._send(200, {"floatingip": fip})

    def delete_floatingip(self, fip_id):
        with self.sim.lock:
            fip = self.sim.floating_ips.pop(fip_id, None)
        if fip is None:
            self._error(404, f"Floating IP {fip_id} could not be found")
        else:
            self._send(204)

    def availability_zones(self, detail=None):
        self._send(200, {"availabilityZoneInfo": [
            {"zoneName": "nova", "zoneState": {"available": True}, "hosts": None}]})


ROUTES: list[tuple[str, str, Callable]] = [
    ("GET", r"/identity", _Handler.identity_versions),
    ("GET", r"/identity/v3", _Handler.identity_v3),
    ("POST", r"/identity/v3/auth/tokens", _Handler.tokens),
    ("GET", r"/compute", _Handler.compute_versions),
    ("GET", r"/compute/v2\.1", _Handler.compute_v21),
    ("GET", r"/compute/v2\.1/flavors(/detail)?", _Handler.flavors),
    ("GET", r"/compute/v2\.1/flavors/([^/]+)", _Handler.flavor),
    ("POST", r"/compute/v2\.1/servers", _Handler.create_server),
    ("GET", r"/compute/v2\.1/servers(/detail)?", _Handler.servers),
    ("GET", r"/compute/v2\.1/servers/([^/]+)", _Handler.server),
    ("DELETE", r"/compute/v2\.1/servers/([^/]+)", _Handler.delete_server),
    ("GET", r"/compute/v2\.1/servers/([^/]+)/metadata", _Handler.server_metadata),
    ("GET", r"/compute/v2\.1/limits", _Handler.limits),
    ("GET", r"/compute/v2\.1/os-keypairs", _Handler.keypairs),
    ("GET", r"/compute/v2\.1/os-keypairs/([^/]+)", _Handler.keypair),
    ("GET", r"/compute/v2\.1/os-availability-zone(/detail)?",
     _Handler.availability_zones),
    ("GET", r"/image", _Handler.image_versions),
    ("GET", r"/image/v2/images", _Handler.images),
    ("POST", r"/image/v2/images", _Handler.create_image),
    ("GET", r"/image/v2/images/([^/]+)", _Handler.image),
    ("PUT", r"/image/v2/images/([^/]+)/file", _Handler.upload_image),
    ("DELETE", r"/image/v2/images/([^/]+)", _Handler.delete_image),
    ("GET", r"/network", _Handler.network_versions),
    ("GET", r"/network/v2\.0/networks", _Handler.networks),
    ("GET", r"/network/v2\.0/networks/([^/]+)", _Handler.network),
    ("GET", r"/network/v2\.0/ports", _Handler.ports),
    ("DELETE", r"/network/v2\.0/ports/([^/]+)", _Handler.delete_port),
    ("GET", r"/network/v2\.0/floatingips", _Handler.floatingips),
    ("POST", r"/network/v2\.0/floatingips", _Handler.create_floatingip),
    ("GET", r"/network/v2\.0/floatingips/([^/]+)", _Handler.floatingip),
    ("PUT", r"/network/v2\.0/floatingips/([^/]+)", _Handler.update_floatingip),
    ("DELETE", r"/network/v2\.0/floatingips/([^/]+)", _Handler.delete_floatingip),
    ("GET", r"/volume(?:/v3)?", _Handler.volume_versions),
    ("GET", r"/volume/v3/([^/]+)/volumes(/detail)?", _Handler.volumes),
    ("GET", r"/volume/v3/([^/]+)/volumes/([^/]+)", _Handler.volume),
    ("DELETE", r"/volume/v3/([^/]+)/volumes/([^/]+)", _Handler.delete_volume),
    ("POST", r"/volume/v3/([^/]+)/volumes/([^/]+)/metadata", _Handler.volume_metadata),
    ("GET", r"/volume/v3/([^/]+)/limits", _Handler.volume_limits),
]


def main() -> int:
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--boot-delay", type=float, default=1.0)
    args = parser.parse_args()
    sim = OpenStackSimulator(port=args.port, boot_delay=args.boot_delay).start()
    import yaml
    print(f"OpenStack simulator at {sim.auth_url}; clouds.yaml:\n"
          + yaml.safe_dump(sim.clouds_yaml()), flush=True)
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
