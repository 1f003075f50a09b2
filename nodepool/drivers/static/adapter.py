"""The ``static`` driver: pre-existing hosts reached over SSH.

Nothing is created or destroyed in a cloud. The adapter only talks to the
hosts: it scans their host keys before a node is registered and checks they
are alive before a node is reused. Registering and retiring node records is
ZooKeeper work, done by the launcher's inventory registrar.
"""

from __future__ import annotations

import socket

from nodepool.config.model import Pool, PoolLabel, Provider
from nodepool.drivers.base import Adapter, Instance, Resource, StateMachine
from nodepool.drivers.static.config import StaticNode, StaticPool
from nodepool.hostkeys import scan_host_keys
from nodepool.resources import Resources


class _NothingToDelete(StateMachine):
    def advance(self):
        self.complete = True
        return None


class StaticAdapter(Adapter):
    def __init__(self, provider: Provider):
        super().__init__(provider)

    def create_state_machine(self, hostname, label, image_external_id, metadata,
                             request, az):
        raise NotImplementedError("static providers do not launch nodes")

    def delete_state_machine(self, external_id) -> StateMachine:
        return _NothingToDelete()

    def list_instances(self) -> list[Instance]:
        return []

    def list_resources(self) -> list[Resource]:
        return []

    def quota_for_label(self, label: PoolLabel) -> Resources:
        return Resources({"instances": 1})

    def hosts(self, pool: Pool) -> list[StaticNode]:
        return list(pool.nodes) if isinstance(pool, StaticPool) else []

    def describe_host(self, host: StaticNode) -> Instance:  # type: ignore[override]
        keys = self.scan(host)
        ipv4, ipv6 = self.addresses(host.name)
        return Instance(external_id=host.name, interface_ip=host.name,
                        public_ipv4=ipv4, public_ipv6=ipv6, username=host.username,
                        connection_port=host.connection_port,
                        connection_type=host.connection_type,
                        python_path=host.python_path, shell_type=host.shell_type,
                        host_keys=keys, resources={"instances": 1})

    def scan(self, host: StaticNode) -> list[str]:
        """The host's keys, checked against the configured ones (blocking).

        Raises if the host does not answer in time or presents none of the
        configured keys."""
        if not host.host_key_checking:
            return list(host.host_keys)
        keys = scan_host_keys(host.name, host.connection_port, float(host.timeout),
                              host.connection_type)
        if host.host_keys and not set(host.host_keys) <= set(keys):
            raise ValueError(f"host {host.name}:{host.connection_port} presented "
                             f"keys {keys}, not the configured {host.host_keys}")
        return keys or list(host.host_keys)

    def alive(self, host: StaticNode) -> bool:  # type: ignore[override]
        """A quick TCP check before a node is handed out again."""
        if not host.host_key_checking:
            return True
        try:
            with socket.create_connection((host.name, host.connection_port),
                                          timeout=host.timeout):
                return True
        except OSError:
            return False

    @staticmethod
    def addresses(name: str) -> tuple[str | None, str | None]:
        """Public IPv4 and IPv6 of a host name (or literal)."""
        v4 = v6 = None
        try:
            for family, _, _, _, sockaddr in socket.getaddrinfo(name, None):
                if family == socket.AF_INET and v4 is None:
                    v4 = sockaddr[0]
                elif family == socket.AF_INET6 and v6 is None:
                    v6 = sockaddr[0]
        except OSError:
            pass
        return v4, v6
