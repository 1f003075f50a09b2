"""An in-memory simulated cloud with OpenStack's configuration keys."""

from nodepool.drivers.fake.config import DRIVER  # noqa: F401  (the registry's entry)
