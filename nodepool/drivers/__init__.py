"""Cloud drivers; each implements :class:`nodepool.drivers.base.Adapter`."""

from __future__ import annotations

import importlib

from nodepool.config.model import Provider

# driver name -> "module:class"; imported only when a provider uses it.
ADAPTERS = {
    "fake": "nodepool.drivers.fake.adapter:FakeAdapter",
    "static": "nodepool.drivers.static.adapter:StaticAdapter",
    "openstack": "nodepool.drivers.openstack.adapter:OpenStackAdapter",
}


def make_adapter(provider: Provider):
    target = ADAPTERS.get(provider.driver)
    if target is None:
        raise ValueError(f"no adapter for driver {provider.driver!r}")
    module_name, class_name = target.split(":")
    module = importlib.import_module(module_name)
    return getattr(module, class_name)(provider)


def connection_fields(provider: Provider) -> tuple:
    """Provider settings that need a new adapter (a new cloud connection)."""
    return (provider.driver, provider.cloud, provider.region_name, provider.rate)
