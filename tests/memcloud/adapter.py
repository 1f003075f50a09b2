"""memcloud's cloud: a dict of servers per provider, shared by every adapter
of that provider name in the process (so tests can look inside)."""

from __future__ import annotations

import itertools
import threading

from nodepool.drivers.base import Adapter, Instance, NotFound, Resource, StateMachine
from nodepool.resources import Resources

HOST_KEYS = ["ssh-ed25519 AAAAmemcloud"]
_ids = itertools.count(1)
_lock = threading.Lock()
# provider name -> server id -> metadata
servers: dict[str, dict[str, dict[str, str]]] = {}


class _Create(StateMachine):
    def __init__(self, provider: str, metadata: dict[str, str]):
        super().__init__()
        self.provider = provider
        self.metadata = metadata

    def advance(self) -> Instance | None:
        if self.state == "start":
            # The server exists from here on; the next step sees it booted.
            self.external_id = f"mem-{next(_ids)}"
            with _lock:
                servers.setdefault(self.provider, {})[self.external_id] = \
                    dict(self.metadata)
            self.state = "booting"
            self.poll_delay = 0.01
            return None
        self.complete = True
        return _instance(self.external_id, self.metadata)


class _Delete(StateMachine):
    def __init__(self, provider: str, external_id):
        super().__init__()
        self.provider = provider
        self.external_id = external_id

    def advance(self) -> Instance | None:
        with _lock:
            servers.get(self.provider, {}).pop(self.external_id, None)
        self.complete = True
        return None


def _instance(server_id: str, metadata: dict[str, str]) -> Instance:
    return Instance(external_id=server_id, interface_ip="127.0.0.1",
                    private_ipv4="127.0.0.1", metadata=dict(metadata),
                    resources={"instances": 1}, host_keys=list(HOST_KEYS))


class MemCloudAdapter(Adapter):
    def create_state_machine(self, hostname, label, image_external_id, metadata,
                             request, az) -> StateMachine:
        return _Create(self.provider.name, metadata)

    def delete_state_machine(self, external_id) -> StateMachine:
        return _Delete(self.provider.name, external_id)

    def list_instances(self) -> list[Instance]:
        with _lock:
            mine = dict(servers.get(self.provider.name, {}))
        return [_instance(server_id, meta) for server_id, meta in mine.items()]

    def list_resources(self) -> list[Resource]:
        return [Resource("instance", i.external_id, i.metadata)
                for i in self.list_instances()]

    def delete_resource(self, resource: Resource) -> None:
        with _lock:
            if servers.get(self.provider.name, {}).pop(resource.id, None) is None:
                raise NotFound(resource.id)

    def quota_limits(self) -> Resources:
        return Resources({"instances": 100}, default=float("inf"))

    def quota_for_label(self, label) -> Resources:
        return Resources({"instances": 1})
