"""Cloud drivers; each implements :class:`nodepool.drivers.base.Adapter`."""

from __future__ import annotations

import importlib

from nodepool.config.model import Provider
from nodepool.drivers.base import NotFound  # noqa: F401  (re-exported)

# driver name -> "module:class"; imported only when a provider uses it.
ADAPTERS = {
    "fake": "nodepool.drivers.fake.adapter:FakeAdapter",
    "static": "nodepool.drivers.static.adapter:StaticAdapter",
    "openstack": "nodepool.drivers.openstack.adapter:OpenStackAdapter",
}


class DriverUnavailable(RuntimeError):
    """The configured driver cannot run in this installation."""


def make_adapter(provider: Provider):
    target = ADAPTERS.get(provider.driver)
    if target is None:
        raise DriverUnavailable(f"no adapter for driver {provider.driver!r}")
    module_name, class_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise DriverUnavailable(
                f"provider {provider.name}: the {provider.driver} driver is not "
                "available in this version of nodepool") from None
        raise
    return getattr(module, class_name)(provider)


def connection_fields(provider: Provider) -> tuple:
    """Provider settings that need a new adapter (a new cloud connection)."""
    return (provider.driver, provider.cloud, provider.region_name, provider.rate)
