"""Cinder, Glance and Neutron routes of the simulator (a mixin of its HTTP
handler)."""

from __future__ import annotations

from nodepool.testing.openstack_sim.model import PROJECT_ID


class StorageRoutes:
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
