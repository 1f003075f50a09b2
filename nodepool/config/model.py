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
# The port a node of each connection type listens on unless configured.
DEFAULT_PORTS = {"ssh": 22, "winrm": 5986}


def default_port(connection_type: str) -> int:
    return DEFAULT_PORTS.get(connection_type, 22)


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
    """A label as offered by one pool. The fields here are the ones the
    launcher itself reads; each driver subclasses it with its own keys."""

    name: str
    # Image-booting drivers: exactly one of these names what to boot.
    diskimage: str | None = None
    cloud_image: str | None = None
    # Metadata written onto the instance (upstream's instance-properties).
    # Values are kept as written (upstream accepts any YAML value); the
    # launch turns them into strings.
    instance_properties: dict[str, Any] = field(default_factory=dict)
    dynamic_instance_properties: dict[str, Any] = field(default_factory=dict)
    host_key_checking: bool = True


@dataclass
class Pool:
    """A provider pool: what every driver's pools share (limits, labels,
    priority); drivers subclass it with their own keys."""

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
    host_key_checking: bool = True

    @property
    def label_names(self) -> list[str]:
        return sorted(self.labels)


@dataclass
class Provider:
    """What every driver's providers share; each driver subclasses it with
    its own keys (``nodepool.drivers.<name>.config``)."""

    name: str
    driver: str
    pools: dict[str, Pool] = field(default_factory=dict)
    max_concurrency: int = -1
    priority: int | None = None
    # The launcher times and retries every launch with these.
    boot_timeout: int = 60
    launch_timeout: int = 3600
    launch_retries: int = 3
    # Images: set only by drivers that boot them; uploads also need the
    # driver's manages_images capability.
    diskimages: dict[str, ProviderDiskImage] = field(default_factory=dict)
    cloud_images: dict[str, CloudImage] = field(default_factory=dict)
    image_type: str = "qcow2"
    image_name_format: str = "{image_name}-{timestamp}"
    image_upload_timeout: int = 3600
    post_upload_hook: str | None = None

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
    # Rendered "<file>: <key path>: <message>" lines for what was accepted
    # as upstream accepts it but deserves the operator's attention.
    warnings: list[str] = field(default_factory=list, compare=False)
    secure_path: str | None = field(default=None, compare=False)
    # The file whose zookeeper-tls is in effect (main or secure).
    zookeeper_tls_source: str | None = field(default=None, compare=False)
    mtimes: dict[str, int] = field(default_factory=dict, compare=False)

    def pools_with_label(self, label: str) -> list[tuple[Provider, Pool]]:
        return [(provider, pool) for provider in self.providers.values()
                for pool in provider.pools.values() if label in pool.labels]
