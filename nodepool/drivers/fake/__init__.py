"""An in-memory simulated cloud with OpenStack's configuration keys."""

from __future__ import annotations

from nodepool.config.model import Provider
from nodepool.drivers.base import Adapter
from nodepool.drivers.fake.config import FakeConfig
from nodepool.drivers.openstack import OpenStackDriver


class FakeDriver(FakeConfig, OpenStackDriver):
    def make_adapter(self, provider: Provider) -> Adapter:
        from nodepool.drivers.fake.adapter import FakeAdapter
        return FakeAdapter(provider)


DRIVER = FakeDriver()
