"""``memcloud``: a minimal in-memory cloud driver that exists only for the
tests. It proves the driver seam: everything it needs is in this package, and
it reaches the core through one ``nodepool.drivers.register`` call."""

from __future__ import annotations

from memcloud.config import MemCloudConfig
from nodepool.config.model import Provider
from nodepool.drivers.base import Adapter, Capabilities, Driver


class MemCloudDriver(MemCloudConfig, Driver):
    capabilities = Capabilities(launches_instances=True, manages_images=False,
                                reports_quota=True)

    def make_adapter(self, provider: Provider) -> Adapter:
        from memcloud.adapter import MemCloudAdapter
        return MemCloudAdapter(provider)


DRIVER = MemCloudDriver()
