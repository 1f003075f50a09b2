"""Keystone and Nova routes of the simulator (a mixin of its HTTP handler)."""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING

from nodepool.testing.openstack_sim.model import (
    COMPUTE_MICROVERSION, FLAVORS, PROJECT_ID, USER_ID, Server,
)

if TYPE_CHECKING:  # pragma: no cover
    from nodepool.testing.openstack_sim import OpenStackSimulator


def server_view(sim: OpenStackSimulator, server: Server) -> dict:
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


def console_text(server: Server) -> str:
    """A boot log as a cloud image's serial console would show it."""
    return (f"[    0.000000] Linux version 6.8.0-sim (buildd@sim) #1 SMP\n"
            f"[    2.104518] cloud-init: instance {server.id} booting\n"
            f"[    5.331907] sshd: no host keys available -- exiting.\n"
            f"{server.name} login: \n")


class ComputeRoutes:
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
        metadata = spec.get("metadata") or {}
        # Nova's schema: string keys and values of at most 255 characters.
        if not isinstance(metadata, dict) or not all(
                isinstance(k, str) and isinstance(v, str) and 0 < len(k) <= 255
                and len(v) <= 255 for k, v in metadata.items()):
            self._error(400, "Invalid input for field/attribute metadata.")
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
                    metadata=dict(metadata),
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
                server.console_output = console_text(server)
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
        views = [server_view(self.sim, s) for s in self.sim.live_servers()]
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
                self._send(200, {"server": server_view(self.sim, server)})
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

    def server_action(self, server_id):
        """Only the console-output action (``os-getConsoleOutput``)."""
        body = self._body()
        server = next((s for s in self.sim.live_servers() if s.id == server_id), None)
        if server is None:
            self._error(404, f"Instance {server_id} could not be found.")
            return
        if "os-getConsoleOutput" not in body:
            self._error(400, f"unsupported server action: {sorted(body)}")
            return
        if server.status != "ACTIVE":
            self._error(409, f"Instance {server_id} is not ready.")
            return
        lines = server.console_output.splitlines(keepends=True)
        length = (body["os-getConsoleOutput"] or {}).get("length")
        if length is not None and int(length) >= 0:
            lines = lines[len(lines) - int(length):] if int(length) else []
        self._send(200, {"output": "".join(lines)})

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
