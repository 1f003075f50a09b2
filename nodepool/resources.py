"""Resource arithmetic shared by drivers, quota and stats.

A :class:`Resources` maps resource names (``cores``, ``instances``, ``ram``
in MiB, ``volumes``, ``volume-gb`` and driver-specific keys) to amounts. A
missing key is 0 in a usage or need, and unlimited in a limit.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping

UNLIMITED = math.inf


class Resources(dict):
    """Amounts by resource name; ``default`` answers for missing keys."""

    def __init__(self, values: Mapping[str, float] | None = None,
                 default: float = 0):
        super().__init__(values or {})
        self.default = default

    def get_amount(self, key: str) -> float:
        return self.get(key, self.default)

    def add(self, other: Mapping[str, float]) -> "Resources":
        default = self.default
        for key, value in other.items():
            if value.__class__ in (int, float):
                self[key] = self.get(key, default) + value
        return self

    def subtract(self, other: Mapping[str, float]) -> "Resources":
        default = self.default
        for key, value in other.items():
            if value.__class__ in (int, float):
                self[key] = self.get(key, default) - value
        return self

    def copy(self) -> "Resources":
        return Resources(dict(self), self.default)

    def fits(self, need: Mapping[str, float]) -> bool:
        """Whether ``need`` can be taken from what this (remaining) allows."""
        return all(self.get_amount(k) - v >= 0 for k, v in need.items()
                   if isinstance(v, (int, float)) and v > 0)

    def count_fitting(self, need: Mapping[str, float]) -> float:
        """How many times ``need`` fits in what this (remaining) allows
        (``UNLIMITED`` if nothing limits it)."""
        count = UNLIMITED
        for key, value in need.items():
            if isinstance(value, (int, float)) and value > 0:
                available = self.get_amount(key)
                if available != UNLIMITED:
                    count = min(count, max(0, math.floor(available / value)))
        return count

    def non_negative(self) -> bool:
        return all(v >= 0 for v in self.values())

    def exceeded(self, need: Mapping[str, float]) -> list[str]:
        return sorted(k for k, v in need.items()
                      if isinstance(v, (int, float)) and v > 0
                      and self.get_amount(k) - v < 0)


def limits(values: Mapping[str, float | None]) -> Resources:
    """A limit object: keys with None are unlimited (left out)."""
    return Resources({k: v for k, v in values.items() if v is not None},
                     default=UNLIMITED)


def total(amounts: Iterable[Mapping[str, float]]) -> Resources:
    """The sum of several usages or needs."""
    result = Resources()
    for amount in amounts:
        result.add(amount)
    return result
