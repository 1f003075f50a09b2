"""Typed configuration objects.

Plain dataclasses that compare by value, so a daemon can tell which providers
changed between two loads (``old.providers[name] != new.providers[name]``).
Nothing here refers back to its parent, so equality never recurses through
cycles.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nodepool.zk.client import ZooKeeperServer, ZooKeeperTLS

DEFAULT_PRIORITY = 100
DEFAULT_CONFIG_PATH = "/etc/nodepool/nodepool.yaml"


@dataclass
class Label:
    name: str
    min_ready: int = 0
    max_ready_age: int = 0


@dataclass
class DiskImage:
    """A concrete diskimage after inheritance (spec 4.5)."""

    name: str
    elements: list[str] = field(default_factory=list)
    env_vars: dict[str, str] = field(default_factory=dict)
    # Formats listed in the diskimage itself; ``formats`` adds the image_type
    # of every image-managing provider that uses the image.
    explicit_formats: list[str] = field(default_factory=list)
    formats: list[str] = field(default_factory=list)
    release: str = ""
    rebuild_age: int = 86400
    build_timeout: int = 28800
    dib_cmd: str = "disk-image-create"
    pause: bool = False
    username: str = "zuul"
    python_path: str = "auto"
    shell_type: str | None = None
    delete_after_upload: bool = False
    keep_formats: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    parent: str | None = None


@dataclass
class ProviderDiskImage:
    """A diskimage as a provider uses it (``providers[].diskimages[]``)."""

    name: str
    pause: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
    config_drive: bool | None = None
    connection_type: str = "ssh"
    connection_port: int = 22


@dataclass
class CloudImage:
    """An image that exists in the cloud and is not built by nodepool."""

    name: str
    image_id: str | None = None
    image_name: str | None = None
    config_drive: bool | None = None
    username: str | None = None
    python_path: str = "auto"
    shell_type: str | None = None
    connection_type: str = "ssh"
    connection_port: int = 22

    @property
    def external_name(self) -> str:
        """Name or id the cloud is asked for."""
        return self.image_id or self.image_name or self.name


@dataclass
class PoolLabel:
    """A label as offered by one pool (cloud drivers)."""

    name: str
    diskimage: str | None = None
    cloud_image: str | None = None
    min_ram: int = 0
    flavor_name: str | None = None
    key_name: str | None = None
    console_log: bool = False
    boot_from_volume: bool = False
    volume_size: int = 50
    volume_type: str | None = None
    instance_properties: dict[str, str] = field(default_factory=dict)
    dynamic_instance_properties: dict[str, str] = field(default_factory=dict)
    userdata: str | None = None
    networks: list[str] = field(default_factory=list)
    host_key_checking: bool = True


@dataclass
class StaticNode:
    """A pre-existing host of a static pool."""

    name: str
    labels: list[str]
    username: str = "zuul"
    timeout: int = 5
    host_key_checking: bool = True
    host_keys: list[str] = field(default_factory=list)
    connection_type: str = "ssh"
    connection_port: int = 22
    shell_type: str | None = None
    python_path: str = "auto"
    max_parallel_jobs: int = 1

    @property
    def identity(self) -> tuple[str, str, int]:
        return (self.name, self.username, self.connection_port)


@dataclass
class Pool:
    name: str
    # None means unlimited; <= 0 disables the pool for new requests.
    max_servers: int | None = None
    priority: int | None = None
    node_attributes: dict[str, Any] | None = None
    labels: dict[str, PoolLabel] = field(default_factory=dict)
    max_cores: int | None = None
    max_ram: int | None = None
    max_volumes: int | None = None
    max_volume_gb: int | None = None
    max_resources: dict[str, int] = field(default_factory=dict)
    ignore_provider_quota: bool = False
    availability_zones: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)
    security_groups: list[str] = field(default_factory=list)
    auto_floating_ip: bool = True
    host_key_checking: bool = True
    # Static driver only.
    nodes: list[StaticNode] = field(default_factory=list)

    @property
    def label_names(self) -> list[str]:
        return sorted(self.labels)


@dataclass
class Provider:
    name: str
    driver: str
    pools: dict[str, Pool] = field(default_factory=dict)
    max_concurrency: int = -1
    priority: int | None = None
    manages_images: bool = False
    # Cloud drivers (openstack, fake).
    cloud: str | None = None
    region_name: str | None = None
    boot_timeout: int = 60
    launch_timeout: int = 3600
    launch_retries: int = 3
    image_upload_timeout: int = 3600
    rate: float = 1.0
    image_name_format: str = "{image_name}-{timestamp}"
    post_upload_hook: str | None = None
    clean_floating_ips: bool = False
    port_cleanup_interval: int = 600
    # Hand out a server's IPv6 address as interface_ip when it has one.
    ipv6_preferred: bool = False
    image_type: str = "qcow2"
    diskimages: dict[str, ProviderDiskImage] = field(default_factory=dict)
    cloud_images: dict[str, CloudImage] = field(default_factory=dict)
    # Fake driver: behaviour of the simulated cloud (ours; ignored upstream).
    simulation: dict[str, Any] = field(default_factory=dict)

    def pool_priority(self, pool: Pool) -> int:
        if pool.priority is not None:
            return pool.priority
        if self.priority is not None:
            return self.priority
        return DEFAULT_PRIORITY

    @property
    def labels(self) -> set[str]:
        found: set[str] = set()
        for pool in self.pools.values():
            found.update(pool.labels)
        return found


@dataclass
class WebApp:
    port: int = 8005
    listen_address: str = "0.0.0.0"


@dataclass
class TenantLimits:
    tenant_name: str
    # Resource name (instances, cores, ram, volumes, volume-gb, extras) -> limit.
    limits: dict[str, int] = field(default_factory=dict)


@dataclass
class Config:
    zookeeper_servers: list[ZooKeeperServer] = field(default_factory=list)
    zookeeper_tls: ZooKeeperTLS | None = None
    zookeeper_timeout: float = 10.0
    webapp: WebApp = field(default_factory=WebApp)
    labels: dict[str, Label] = field(default_factory=dict)
    diskimages: dict[str, DiskImage] = field(default_factory=dict)
    providers: dict[str, Provider] = field(default_factory=dict)
    elements_dir: str | None = None
    images_dir: str | None = None
    build_log_dir: str = "/var/log/nodepool/builds"
    build_log_retention: int = 7
    max_hold_age: float = 0
    tenant_resource_limits: dict[str, TenantLimits] = field(default_factory=dict)
    # Where it came from, for reload detection; not part of equality.
    path: str | None = field(default=None, compare=False)
    secure_path: str | None = field(default=None, compare=False)
    mtimes: dict[str, int] = field(default_factory=dict, compare=False)

    def pools_with_label(self, label: str) -> list[tuple[Provider, Pool]]:
        return [(provider, pool) for provider in self.providers.values()
                for pool in provider.pools.values() if label in pool.labels]
