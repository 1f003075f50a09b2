"""OpenStack clouds through openstacksdk."""

from nodepool.drivers.openstack.config import DRIVER  # noqa: F401  (the registry's entry)
