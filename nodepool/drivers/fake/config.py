"""The ``fake`` driver: the OpenStack schema and keys, an in-memory cloud.

A file written for upstream's fake driver works unchanged. Our one addition is
the optional ``simulation`` mapping (boot delay, failure injection, quota),
which upstream would reject and which only tests and demos use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import voluptuous as v

from nodepool.config import schema as s
from nodepool.drivers.openstack import clouds
from nodepool.drivers.openstack.config import OpenStackConfig, OpenStackProvider

SIMULATION_KEYS = {
    "boot-delay": s.Number,
    "delete-delay": s.Number,
    "api-delay": s.Number,
    "max-cores": s.Int,
    "max-instances": s.Int,
    "max-ram": s.Int,
    "max-volumes": s.Int,
    "fail-creates": s.Int,
    "fail-creates-after-id": s.Int,
    "error-servers": s.Int,
    "quota-error-servers": s.Int,
    "fail-deletes": s.Int,
    "never-active": s.Bool,
    "upload-delay": s.Number,
    "fail-uploads": s.Int,
    "fail-image-deletes": s.Int,
    "interface-ip": s.Str,
}


@dataclass
class FakeProvider(OpenStackProvider):
    # Behaviour of the simulated cloud (ours; upstream has no such key).
    simulation: dict[str, Any] = field(default_factory=dict)


class FakeConfig(OpenStackConfig):
    name = "fake"
    provider_class = FakeProvider

    def schema(self) -> v.Schema:
        keys = self.provider_keys()
        keys["simulation"] = SIMULATION_KEYS
        return v.Schema(keys)

    def default_image_type(self, raw: dict) -> str:
        # Upstream's fixtures name clouds fake-qcow2, fake-raw, fake-vhd; a
        # clouds.yaml entry, if there is one, wins.
        cloud = raw.get("cloud") or ""
        fallback = clouds.DEFAULT_IMAGE_FORMAT
        if cloud.startswith("fake-") and cloud[5:] in ("qcow2", "raw", "vhd"):
            fallback = cloud[5:]
        return clouds.image_format(cloud, fallback)

    def build(self, raw: dict, ctx: s.BuildContext) -> FakeProvider:
        provider = super().build(raw, ctx)
        assert isinstance(provider, FakeProvider)
        provider.simulation = dict(raw.get("simulation", {}))
        return provider
