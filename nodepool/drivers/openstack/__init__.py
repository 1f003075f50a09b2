"""OpenStack clouds through openstacksdk."""

from __future__ import annotations

from nodepool.config.model import Provider
from nodepool.drivers.base import Adapter, Capabilities, Driver
from nodepool.drivers.openstack.config import OpenStackConfig, OpenStackProvider


class OpenStackDriver(OpenStackConfig, Driver):
    capabilities = Capabilities(launches_instances=True, manages_images=True,
                                reports_quota=True, resumes_launches=True)

    def make_adapter(self, provider: Provider) -> Adapter:
        from nodepool.drivers.openstack.adapter import OpenStackAdapter
        return OpenStackAdapter(provider)

    def connection_key(self, provider: Provider) -> tuple:
        assert isinstance(provider, OpenStackProvider)
        return (provider.driver, provider.cloud, provider.region_name, provider.rate)


DRIVER = OpenStackDriver()
