"""EC2 quota: which service quota (a vCPU limit per instance family, on-demand
and spot apart) an instance type counts against, and what one instance of a
type uses (DescribeInstanceTypes, asked once per type)."""

from __future__ import annotations

import re
import threading
from typing import TYPE_CHECKING

from nodepool.drivers.base import RuntimeConfigurationError
from nodepool.resources import Resources

if TYPE_CHECKING:  # pragma: no cover
    from nodepool.drivers.aws.api import AwsApi

# Instance family (the letters before the type's first digit) -> quota code.
# AWS publishes no mapping; these follow the quota names ("Running On-Demand
# Standard (A, C, D, H, I, M, R, T, Z) instances" and so on).
STANDARD = ("a", "c", "d", "h", "i", "m", "r", "t", "z")
ON_DEMAND_CODES: dict[str, str] = {
    **dict.fromkeys(STANDARD, "L-1216C47A"),
    "dl": "L-6E869C2A", "f": "L-74FC7D96", "g": "L-DB2E81BA", "vt": "L-DB2E81BA",
    "u-": "L-43DA4232", "inf": "L-1945791B", "p": "L-417A185B", "x": "L-7295265B",
    "trn": "L-2C3B7624",
}
SPOT_CODES: dict[str, str] = {
    **dict.fromkeys(STANDARD, "L-34B43A08"),
    "dl": "L-85EED4F7", "f": "L-88CF9481", "g": "L-3819A6DF", "vt": "L-3819A6DF",
    "inf": "L-B5D1601B", "p": "L-7212CCBC", "x": "L-E3A00192", "trn": "L-6B0D517C",
}
_FAMILY = re.compile(r"([a-z\-]+)\d")


def quota_code(instance_type: str, spot: bool = False) -> str | None:
    """The service quota code ``instance_type`` counts against, if known."""
    match = _FAMILY.match(instance_type)
    if not match:
        return None
    return (SPOT_CODES if spot else ON_DEMAND_CODES).get(match.group(1))


class InstanceTypes:
    """vCPUs and memory of instance types, asked of EC2 once each."""

    def __init__(self, api: "AwsApi"):
        self.api = api
        self._known: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()

    def size(self, instance_type: str) -> tuple[int, int]:
        """(vCPUs, MiB of memory); blocking the first time."""
        with self._lock:
            known = self._known.get(instance_type)
        if known is not None:
            return known
        try:
            reply = self.api.call(self.api.ec2, "describe_instance_types",
                                  InstanceTypes=[instance_type])
        except Exception as exc:
            if "InvalidInstanceType" in str(exc):
                raise RuntimeConfigurationError(
                    f"unknown instance type {instance_type!r}") from None
            raise
        found = reply.get("InstanceTypes") or []
        if not found:
            raise RuntimeConfigurationError(f"unknown instance type {instance_type!r}")
        info = found[0]
        size = (int(info["VCpuInfo"]["DefaultVCpus"]),
                int(info["MemoryInfo"]["SizeInMiB"]))
        with self._lock:
            self._known[instance_type] = size
        return size

    def resources(self, instance_type: str, spot: bool = False) -> Resources:
        """What one instance uses: cores (vCPUs), ram, one instance, and its
        vCPUs again under its quota code (the limit AWS enforces)."""
        vcpus, ram = self.size(instance_type)
        need = Resources({"cores": vcpus, "ram": ram, "instances": 1})
        code = quota_code(instance_type, spot)
        if code:
            need[code] = vcpus
        return need
