"""IBM Cloud VPC through IBM's Python SDK (ibm-vpc, ibm-cloud-sdk-core,
ibm-platform-services), with upstream Nodepool's ``ibmvpc`` keys."""

from __future__ import annotations

from nodepool.config.model import Provider
from nodepool.drivers.base import Adapter, Capabilities, Driver
from nodepool.drivers.ibmvpc.config import IbmVpcConfig, IbmVpcProvider


class IbmVpcDriver(IbmVpcConfig, Driver):
    # reports_quota: the provider's ``quota`` stands for the account's limits
    # (the VPC API does not tell them), less what runs outside nodepool.
    capabilities = Capabilities(launches_instances=True, manages_images=True,
                                reports_quota=True)

    def make_adapter(self, provider: Provider) -> Adapter:
        from nodepool.drivers.ibmvpc.adapter import IbmVpcAdapter
        return IbmVpcAdapter(provider)

    def connection_key(self, provider: Provider) -> tuple:
        assert isinstance(provider, IbmVpcProvider)
        return (provider.driver, provider.region, provider.vpc,
                provider.credentials_file, provider.rate)


DRIVER = IbmVpcDriver()
