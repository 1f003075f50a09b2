"""Pre-existing hosts reached over SSH."""

from nodepool.drivers.static.config import DRIVER  # noqa: F401  (the registry's entry)
