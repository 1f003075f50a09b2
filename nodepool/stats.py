"""statsd metric names and emitters, in one place (spec section 7).

Metrics are sent when ``STATSD_HOST`` is set (``STATSD_PORT`` defaults to
8125, ``STATSD_PREFIX`` is optional); otherwise every call is a no-op.
"""

from __future__ import annotations

import logging
import os

from nodepool.zk.records import Node, NodeRequest

log = logging.getLogger("nodepool.stats")


def normalize(name: str) -> str:
    """Requestor and tenant names may contain '.' and ':'; statsd may not."""
    return name.replace(".", "_").replace(":", "_")


def launch_keys(node: Node, request: NodeRequest | None, result: str) -> list[str]:
    keys = [f"nodepool.launch.{result}",
            f"nodepool.launch.provider.{node.provider}.{result}"]
    if node.az:
        keys.append(f"nodepool.launch.provider.{node.provider}.{node.az}.{result}")
    if request is not None and request.requestor:
        keys.append(f"nodepool.launch.requestor.{normalize(request.requestor)}.{result}")
    return keys


def make_client():
    host = os.environ.get("STATSD_HOST")
    if not host:
        return None
    import statsd
    return statsd.StatsClient(host=host, port=int(os.environ.get("STATSD_PORT", 8125)),
                              prefix=os.environ.get("STATSD_PREFIX") or None)


class Stats:
    """The launcher's emitters."""

    def __init__(self, client=None):
        self.client = client if client is not None else make_client()

    @property
    def enabled(self) -> bool:
        return self.client is not None

    def launch_result(self, node: Node, request, result: str, seconds: float) -> None:
        if self.client is None:
            return
        ms = int(seconds * 1000)
        pipe = self.client.pipeline()
        for key in launch_keys(node, request, result):
            pipe.incr(key)
            pipe.timing(key, ms)
        pipe.send()

    def request_done(self, request: NodeRequest, state: str) -> None:
        """Hook for request results (no upstream metric; kept for gauges)."""

    def leaked(self, provider: str, plural: str, count: int = 1) -> None:
        if self.client is not None:
            self.client.incr(f"nodepool.provider.{provider}.leaked.{plural}", count)

    def gauge(self, key: str, value: float) -> None:
        if self.client is not None:
            self.client.gauge(key, value)
