"""What the builder's build, upload and cleanup workers share: their base
class, the status values they report, and two lookups."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nodepool.config.model import Config, Provider
from nodepool.drivers import capabilities
from nodepool.worker import PeriodicWorker
from nodepool.zk.image_records import ImageBuild
from nodepool.zk.records import BuildState

if TYPE_CHECKING:
    from nodepool.builder.builder import Builder

# Worker status values reported as gauges (spec 2.4.4, 2.6.8).
IDLE, BUILDING, UPLOADING, PAUSED = 0, 1, 2, 3


class BuilderError(Exception):
    pass


class BuilderWorker(PeriodicWorker):
    """A worker thread of one builder; it pauses while ZooKeeper is away."""

    def __init__(self, builder: Builder, name: str, interval: float):
        super().__init__(name, interval, builder.client)
        self.builder = builder
        self.store = builder.store

    @property
    def should_stop(self) -> bool:
        return self.stopped or not self.builder.client.connected


def image_providers(config: Config) -> list[Provider]:
    return [p for p in config.providers.values() if capabilities(p).manages_images]


def newest_ready(builds: list[ImageBuild]) -> ImageBuild | None:
    for build in builds:  # newest state_time first
        if build.state == BuildState.READY:
            return build
    return None
