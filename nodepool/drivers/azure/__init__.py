"""Microsoft Azure through our own small Azure Resource Manager client
(``requests``), with upstream Nodepool's ``azure`` keys."""

from __future__ import annotations

from nodepool.config.model import Provider
from nodepool.drivers.azure.config import AzureConfig, AzureProvider
from nodepool.drivers.base import Adapter, Capabilities, Driver


class AzureDriver(AzureConfig, Driver):
    capabilities = Capabilities(launches_instances=True, manages_images=True,
                                reports_quota=True)

    def make_adapter(self, provider: Provider) -> Adapter:
        from nodepool.drivers.azure.adapter import AzureAdapter
        return AzureAdapter(provider)

    def connection_key(self, provider: Provider) -> tuple:
        assert isinstance(provider, AzureProvider)
        return (provider.driver, provider.auth_path, provider.subscription_id,
                provider.tenant_id, provider.client_id, provider.federated_token_file,
                provider.location, provider.resource_group, provider.rate)


DRIVER = AzureDriver()
