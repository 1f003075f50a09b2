"""statsd metric names and emitters, in one place (spec section 7).

Metrics are sent when ``STATSD_HOST`` or ``STATSD_PORT`` is set (as upstream:
the host defaults to localhost and the port to 8125; ``STATSD_PREFIX`` is
optional); otherwise every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import time

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


# -- names of the gauges and prefixes used outside this module -----------------

def nodes_key(state: str) -> str:
    return f"nodepool.nodes.{state}"


def provider_nodes_key(provider: str, state: str) -> str:
    return f"nodepool.provider.{provider}.nodes.{state}"


def label_nodes_key(label: str, state: str) -> str:
    return f"nodepool.label.{label}.nodes.{state}"


def addressable_requests_key(provider: str, pool: str) -> str:
    return f"nodepool.provider.{provider}.pool.{pool}.addressable_requests"


def max_servers_key(provider: str) -> str:
    return f"nodepool.provider.{provider}.max_servers"


def tenant_limit_key(tenant: str, limit: str) -> str:
    return f"nodepool.tenant_limits.{normalize(tenant)}.{normalize(limit)}"


# Gauges of limits, valued as upstream values them: an unlimited pool or an
# unset tenant limit is infinite, which goes out as "inf" (dashboards
# built on upstream's metrics see the same series).
UNLIMITED = float("inf")
TENANT_LIMITS_ALWAYS_SENT = ("cores", "instances", "ram")


def max_servers_total(pools) -> float:
    """Sum of the pools' max-servers; a pool without one makes it infinite,
    a pool with 0 (disabled) adds nothing."""
    total: float = 0
    for pool in pools:
        value = UNLIMITED if pool.max_servers is None else pool.max_servers
        if value:
            total += value
    return total


def tenant_limit_values(limits: dict) -> dict:
    """A tenant's configured limits, cores/instances/ram always present
    (infinite when not set)."""
    values = {key: UNLIMITED for key in TENANT_LIMITS_ALWAYS_SENT}
    values.update(limits)
    return values


def zk_queue_key(hostname: str, part: str) -> str:
    """``part``: ``client.connection_queue``, ``node_cache.event_queue`` ..."""
    return f"nodepool.launcher.{hostname}.zk.{part}"


def launcher_work_key(launcher: str, what: str) -> str:
    """One launcher's share of the work: ``launches``, ``launches_resumed``,
    ``deletes``, ``deletes_resumed``, ``requests_adopted`` (counters);
    ``requests_held``, ``launches_running`` (gauges)."""
    return f"nodepool.launcher.{normalize(launcher)}.work.{what}"


def capacity_errors_key(provider: str) -> str:
    return f"nodepool.provider.{provider}.capacity_errors"


def capacity_gauge_key(provider: str, flavor: str, what: str) -> str:
    """``avoided`` (1 while the provider's pools avoid the flavor) or
    ``errors`` (capacity errors counted for it)."""
    return f"nodepool.provider.{provider}.capacity.{normalize(flavor)}.{what}"


def api_task_prefix(provider: str) -> str:
    """openstacksdk appends ``<service>.<METHOD>.<operation>[.<status>]``."""
    return f"nodepool.task.{provider}"


DEFAULT_HOST = "localhost"
DEFAULT_PORT = 8125


def statsd_address() -> tuple[str, int] | None:
    """Where metrics go, from ``STATSD_HOST``/``STATSD_PORT`` (either one
    is enough); None when neither is set or the port is not a port."""
    host = os.environ.get("STATSD_HOST") or ""
    port_text = os.environ.get("STATSD_PORT") or ""
    if not host and not port_text:
        return None
    port = DEFAULT_PORT
    if port_text:
        try:
            port = int(port_text)
        except ValueError:
            port = 0
        if not 0 < port < 65536:
            log.error("STATSD_PORT=%r is not a port number (1-65535); metrics "
                      "are not sent", port_text)
            return None
    return host or DEFAULT_HOST, port


def make_client():
    address = statsd_address()
    if address is None:
        return None
    import statsd
    host, port = address
    return statsd.StatsClient(host=host, port=port,
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

    def work(self, launcher: str, what: str, count: int = 1) -> None:
        if self.client is not None:
            self.client.incr(launcher_work_key(launcher, what), count)

    def capacity_error(self, provider: str) -> None:
        if self.client is not None:
            self.client.incr(capacity_errors_key(provider))

    def leaked(self, provider: str, plural: str, count: int = 1) -> None:
        if self.client is not None:
            self.client.incr(f"nodepool.provider.{provider}.leaked.{plural}", count)

    def gauge(self, key: str, value: float) -> None:
        if self.client is not None:
            self.client.gauge(key, value)


class BuilderStats:
    """The builder's emitters (spec builder section 2.9)."""

    def __init__(self, client=None):
        self.client = client if client is not None else make_client()

    def build_finished(self, image: str, result, base: str, formats: list[str]) -> None:
        """After every DIB run: sizes (successful builds), duration, rc and
        the time of the build."""
        if self.client is None:
            return
        pipe = self.client.pipeline()
        key = f"nodepool.dib_image_build.{image}"
        for fmt in formats:
            try:
                # Allocated size, so sparse images report what they use.
                size = os.stat(f"{base}.{fmt}").st_blocks * 512
            except OSError:
                continue
            pipe.gauge(f"{key}.{fmt}.size", size)
        pipe.timing(f"{key}.status.duration", int(result.seconds * 1000))
        pipe.gauge(f"{key}.status.rc", result.rc)
        pipe.gauge(f"{key}.status.last_build", int(time.time()))
        pipe.send()

    def upload_finished(self, image: str, provider: str, seconds: float) -> None:
        if self.client is None:
            return
        key = f"nodepool.image_update.{image}.{provider}"
        pipe = self.client.pipeline()
        pipe.timing(key, int(seconds * 1000))
        pipe.incr(key)
        pipe.send()

    def status(self, builder, store) -> None:
        """Per cleanup pass: worker states per image, pending build requests,
        and how busy this builder is."""
        if self.client is None:
            return
        host = builder.hostname
        pipe = self.client.pipeline()
        pending = 0
        current_builds = current_uploads = 0
        for worker in builder.build_workers:
            current_builds += sum(1 for v in worker.status.values() if v == 1)
        for worker in builder.upload_workers:
            current_uploads += sum(1 for v in worker.status.values() if v == 2)
        for image in store.image_names():
            states = [w.status.get(image, 0) for w in builder.build_workers]
            pipe.gauge(f"nodepool.builder.{host}.image.{image}.build.state",
                       max(states, default=0))
            providers: dict[str, int] = {}
            for worker in builder.upload_workers:
                for (name, provider), value in worker.status.items():
                    if name == image:
                        providers[provider] = max(providers.get(provider, 0), value)
            for provider, value in providers.items():
                pipe.gauge(f"nodepool.builder.{host}.image.{image}.provider."
                           f"{provider}.upload.state", value)
            requested = store.build_request_status(image) == "pending"
            pending += requested
            pipe.gauge(f"nodepool.image.{image}.image_build_requests", int(requested))
        pipe.gauge("nodepool.image_build_requests", pending)
        pipe.gauge(f"nodepool.builder.{host}.current_builds", current_builds)
        pipe.gauge(f"nodepool.builder.{host}.current_uploads", current_uploads)
        pipe.gauge(f"nodepool.builder.{host}.build_workers", len(builder.build_workers))
        pipe.gauge(f"nodepool.builder.{host}.upload_workers",
                   len(builder.upload_workers))
        pipe.send()
