"""The ``openstack`` driver's create and delete state machines: they only
submit calls to the adapter's executor and look at the futures, so
``advance()`` never blocks the launcher's runners."""

from __future__ import annotations

import base64
import logging
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING

from nodepool.drivers.base import (
    CreateMachine, Instance, LaunchStatusError, NotFound, QuotaError, StateMachine,
)
from nodepool.drivers.openstack.api import (
    DIRECT_POLL_LIMIT, VOLUME_WAIT, _raise_for_status, is_quota_message,
)
from nodepool.drivers.openstack.config import OpenStackLabel

if TYPE_CHECKING:  # pragma: no cover
    from nodepool.drivers.openstack.adapter import OpenStackAdapter

log = logging.getLogger("nodepool.drivers.openstack")


class OpenStackCreate(CreateMachine):
    adapter: "OpenStackAdapter"
    label: OpenStackLabel

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

    def snapshot(self) -> dict:
        # A floating IP being attached is attached again if it is missing:
        # the step to resume from is the server's.
        return {"state": "building" if self.external_id else "start",
                "external_id": self.external_id}

    def restore(self, saved: dict) -> None:
        super().restore(saved)
        if self.external_id is not None:
            # Poll the server, as right after its create.
            self.state = "building"
            self.created_at = time.monotonic()
            self.adapter.building.add(self)


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

    def snapshot(self) -> dict:
        # While the delete call is out, the step to resume from is "start":
        # sending it again is harmless (a server already gone is NotFound).
        state = self.state if self.state in ("waiting", "volumes") else "start"
        return {"state": state, "external_id": self.external_id,
                "volumes": list(self.volumes)}

    def restore(self, saved: dict) -> None:
        super().restore(saved)
        if saved.get("state") in ("waiting", "volumes"):
            # The delete was accepted: wait for the server to go, then its
            # boot volumes (as they were when it was asked).
            self.volumes = [v for v in saved.get("volumes") or [] if isinstance(v, str)]
            self.requested_at = time.monotonic()
            self.state = "waiting"

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
