"""Cloud drivers, one package each, found through :data:`REGISTRY`.

Adding a cloud means adding its package (exposing ``DRIVER``, a
:class:`nodepool.drivers.base.Driver`) and one line here. A package is
imported only when a configuration names its driver.
"""

from __future__ import annotations

import importlib

from nodepool.config.model import Provider
from nodepool.drivers.base import Adapter, Capabilities, Driver
from nodepool.drivers.base import NotFound  # noqa: F401  (re-exported)

# driver name -> package that defines DRIVER.
REGISTRY: dict[str, str] = {
    "openstack": "nodepool.drivers.openstack",
    "fake": "nodepool.drivers.fake",
    "static": "nodepool.drivers.static",
    "metastatic": "nodepool.drivers.metastatic",
    "kubernetes": "nodepool.drivers.kubernetes",
    "openshift": "nodepool.drivers.openshift",
    "openshiftpods": "nodepool.drivers.openshiftpods",
    "aws": "nodepool.drivers.aws",
    "gce": "nodepool.drivers.gce",
    "azure": "nodepool.drivers.azure",
    "ibmvpc": "nodepool.drivers.ibmvpc",
}
_loaded: dict[str, Driver] = {}


class DriverUnavailable(RuntimeError):
    """The configured driver cannot run in this installation."""


def register(name: str, package: str) -> None:
    """Make a driver package known (the built-in ones are listed above;
    tests register their own through here)."""
    REGISTRY[name] = package
    _loaded.pop(name, None)


def known_drivers() -> list[str]:
    return sorted(REGISTRY)


def get_driver(name: str) -> Driver | None:
    """The driver called ``name``; None if no package is registered for it."""
    driver = _loaded.get(name)
    if driver is not None:
        return driver
    package = REGISTRY.get(name)
    if package is None:
        return None
    try:
        module = importlib.import_module(package)
    except ModuleNotFoundError as exc:
        if exc.name == package:
            return None
        raise
    driver = _loaded[name] = module.DRIVER
    return driver


def driver_of(provider: Provider) -> Driver:
    driver = get_driver(provider.driver)
    if driver is None:
        raise DriverUnavailable(f"provider {provider.name}: the {provider.driver} "
                                "driver is not available in this version of nodepool")
    return driver


def capabilities(provider: Provider) -> Capabilities:
    return driver_of(provider).capabilities


def make_adapter(provider: Provider) -> Adapter:
    return driver_of(provider).make_adapter(provider)


def connection_key(provider: Provider) -> tuple:
    """Provider settings that need a new adapter (a new cloud connection)."""
    return driver_of(provider).connection_key(provider)


def driver_name_for(provider: dict) -> str:
    """The driver a raw provider entry uses; as upstream, a provider whose
    name starts with 'fake' uses the fake driver."""
    name = provider.get("name")
    if isinstance(name, str) and name.startswith("fake"):
        return "fake"
    driver = provider.get("driver", "openstack")
    return driver if isinstance(driver, str) else ""
