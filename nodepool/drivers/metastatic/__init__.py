"""Nodes that are slots of bigger nodes nodepool launched (upstream's
``metastatic`` driver)."""

from __future__ import annotations

from nodepool.config.model import Provider
from nodepool.drivers.base import Adapter, Capabilities, Driver
from nodepool.drivers.metastatic.config import MetastaticConfig


class MetastaticDriver(MetastaticConfig, Driver):
    # Launches (slots) without images or a cloud quota of its own; the
    # backing nodes come through the launcher.
    capabilities = Capabilities(launches_instances=True, manages_images=False,
                                reports_quota=False, uses_backing_nodes=True)

    def make_adapter(self, provider: Provider) -> Adapter:
        from nodepool.drivers.metastatic.adapter import MetastaticAdapter
        return MetastaticAdapter(provider)


DRIVER = MetastaticDriver()
