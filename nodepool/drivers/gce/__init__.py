"""Google Compute Engine through google-api-python-client, with upstream
Nodepool's ``gce`` keys."""

from __future__ import annotations

from nodepool.config.model import Provider
from nodepool.drivers.base import Adapter, Capabilities, Driver
from nodepool.drivers.gce.config import GceConfig, GceProvider


class GceDriver(GceConfig, Driver):
    # No image uploads: upstream's gce driver boots cloud images only.
    capabilities = Capabilities(launches_instances=True, manages_images=False,
                                reports_quota=True)

    def make_adapter(self, provider: Provider) -> Adapter:
        from nodepool.drivers.gce.adapter import GceAdapter
        return GceAdapter(provider)

    def connection_key(self, provider: Provider) -> tuple:
        assert isinstance(provider, GceProvider)
        return (provider.driver, provider.project, provider.region, provider.zone,
                provider.rate)


DRIVER = GceDriver()
