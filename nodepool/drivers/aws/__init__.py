"""Amazon EC2 through boto3, with upstream Nodepool's ``aws`` keys."""

from __future__ import annotations

from nodepool.config.model import Provider
from nodepool.drivers.aws.config import AwsConfig, AwsProvider
from nodepool.drivers.base import Adapter, Capabilities, Driver


class AwsDriver(AwsConfig, Driver):
    capabilities = Capabilities(launches_instances=True, manages_images=True,
                                reports_quota=True)

    def make_adapter(self, provider: Provider) -> Adapter:
        from nodepool.drivers.aws.adapter import AwsAdapter
        return AwsAdapter(provider)

    def connection_key(self, provider: Provider) -> tuple:
        assert isinstance(provider, AwsProvider)
        return (provider.driver, provider.region_name, provider.profile_name,
                provider.rate)


DRIVER = AwsDriver()
