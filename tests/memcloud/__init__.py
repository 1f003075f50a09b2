"""``memcloud``: a minimal in-memory cloud driver that exists only for the
tests. It proves the driver seam: everything it needs is in this package, and
it reaches the core through one ``nodepool.drivers.register`` call."""

from memcloud.config import DRIVER  # noqa: F401  (what the registry loads)
