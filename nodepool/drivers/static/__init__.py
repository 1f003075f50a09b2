"""Pre-existing hosts reached over SSH."""

from __future__ import annotations

from nodepool.config.model import Provider
from nodepool.drivers.base import Adapter, Capabilities, Driver
from nodepool.drivers.static.config import StaticConfig


class StaticDriver(StaticConfig, Driver):
    # A fixed inventory: nothing is launched, no images, no cloud quota.
    capabilities = Capabilities(launches_instances=False, manages_images=False,
                                reports_quota=False)

    def make_adapter(self, provider: Provider) -> Adapter:
        from nodepool.drivers.static.adapter import StaticAdapter
        return StaticAdapter(provider)


DRIVER = StaticDriver()
