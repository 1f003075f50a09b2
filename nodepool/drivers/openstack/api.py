"""The ``openstack`` driver's API plumbing: the rate-limited executor every
call runs on, raw JSON listings, and the shared server listing refreshed at
most once per second (not one GET per server per tick)."""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nodepool.drivers.base import LaunchError
from nodepool.drivers.ratelimit import RateLimiter
from nodepool.drivers.openstack.config import OpenStackProvider

if TYPE_CHECKING:  # pragma: no cover
    from nodepool.drivers.openstack.adapter import OpenStackAdapter

log = logging.getLogger("nodepool.drivers.openstack")


LISTING_TTL = 1.0
# Up to this many servers building, each is polled on its own (fast for a
# lone request); beyond it they share one listing (cheap for a burst).
DIRECT_POLL_LIMIT = 10
LIMITS_TTL = 60.0
IMAGE_TTL = 300.0
# A call the cloud rate-limits (413/429) is retried this many times, waiting
# Retry-After or an exponential backoff, before its error counts.
RATE_LIMIT_RETRIES = 6
RATE_LIMIT_MAX_WAIT = 10.0
# How long a delete waits for the server's boot volumes to go before it
# gives up on them (the leak cleanup then removes them by their tag).
VOLUME_WAIT = 120.0


class RateLimitedExecutor(ThreadPoolExecutor):
    """An executor whose calls start at least ``rate`` seconds apart (the
    provider's ``rate``: the minimum time between API calls)."""

    def __init__(self, rate: float, **kwargs):
        super().__init__(**kwargs)
        self.rate = max(0.0, rate or 0.0)
        self._limiter = RateLimiter(self.rate)

    def submit(self, fn, *args, **kwargs):
        def limited():
            for attempt in range(RATE_LIMIT_RETRIES + 1):
                self._limiter.wait()
                try:
                    return fn(*args, **kwargs)
                except Exception as exc:
                    wait = rate_limit_wait(exc, attempt)
                    if wait is None or attempt == RATE_LIMIT_RETRIES:
                        raise
                    log.warning("Rate limited by the cloud (%s); retrying in %.1fs",
                                getattr(exc, "status_code", "?"), wait)
                    time.sleep(wait)
        return super().submit(limited)


def rate_limit_wait(exc: Exception, attempt: int) -> float | None:
    """Seconds to wait before retrying a call the cloud refused for rate
    limiting (HTTP 413 or 429), or None for any other error."""
    if getattr(exc, "status_code", None) not in (413, 429):
        return None
    backoff = 0.2 * (2 ** attempt)
    response = getattr(exc, "response", None)
    header = response.headers.get("Retry-After") if response is not None else None
    try:
        backoff = max(backoff, float(header))
    except (TypeError, ValueError):
        pass
    return min(backoff, RATE_LIMIT_MAX_WAIT)


def api_metrics_config(provider: OpenStackProvider) -> dict | None:
    """statsd settings for openstacksdk's own API timers, named
    ``nodepool.task.<provider>.<service>.<METHOD>.<operation>``."""
    from nodepool.stats import api_task_prefix, statsd_address
    address = statsd_address()
    if address is None:
        return None
    prefix = api_task_prefix(provider.name)
    if os.environ.get("STATSD_PREFIX"):
        prefix = f"{os.environ['STATSD_PREFIX']}.{prefix}"
    return {"host": address[0], "port": address[1], "prefix": prefix}


def is_quota_message(message: str) -> bool:
    text = (message or "").lower()
    return ("quota exceeded" in text or "number of ports exceeded" in text
            or ("exceeds" in text and "quota" in text))


@dataclass
class ServerView:
    """The fields of a Nova server the driver reads, from the API's JSON.
    (openstacksdk's resource objects cost tens of milliseconds of CPU each,
    which dominated the launcher's time on a cloud of a few hundred servers.)"""

    id: str
    status: str
    metadata: dict
    addresses: dict
    flavor: dict
    availability_zone: str | None
    host_id: str | None
    attached_volumes: list
    fault: dict | None

    @classmethod
    def from_json(cls, data: dict) -> "ServerView":
        return cls(id=data["id"], status=data.get("status") or "",
                   metadata=dict(data.get("metadata") or {}),
                   addresses=data.get("addresses") or {},
                   flavor=data.get("flavor") or {},
                   availability_zone=data.get("OS-EXT-AZ:availability_zone"),
                   host_id=data.get("hostId"),
                   attached_volumes=list(
                       data.get("os-extended-volumes:volumes_attached") or []),
                   fault=data.get("fault"))


def list_json(proxy, path: str, key: str, params: dict | None = None,
              microversion: str | None = None) -> list[dict]:
    """Every item of a listing as plain JSON, following ``<key>_links``
    pagination. Goes through the SDK's proxy, so API timers still fire."""
    items: list[dict] = []
    url, query = path, dict(params or {})
    for _ in range(10_000):  # bounded: a cloud that pages forever is broken
        response = proxy.get(url, params=query or None, microversion=microversion)
        _raise_for_status(response)
        body = response.json()
        items.extend(body.get(key) or [])
        nexts = [link["href"] for link in body.get(f"{key}_links") or []
                 if link.get("rel") == "next"]
        if not nexts:
            return items
        url, query = nexts[0], None
    raise LaunchError(f"listing {path} did not end")


def get_json(proxy, path: str, key: str, microversion: str | None = None) -> dict | None:
    """One item as plain JSON, or None when the cloud says 404."""
    response = proxy.get(path, microversion=microversion)
    if response.status_code == 404:
        return None
    _raise_for_status(response)
    return response.json().get(key)


def _raise_for_status(response) -> None:
    from openstack import exceptions
    exceptions.raise_from_response(response)


class ServerListing:
    """All servers, refreshed in the background at most every LISTING_TTL."""

    def __init__(self, adapter: "OpenStackAdapter"):
        self.adapter = adapter
        self.servers: dict[str, object] = {}
        self.fetched_at = 0.0
        self.future: Future | None = None
        self.lock = threading.Lock()

    def _fetch(self) -> dict[str, ServerView]:
        return {s.id: s for s in self.adapter.servers()}

    def refresh(self) -> None:
        """Start a refresh if the listing is stale and none is running."""
        with self.lock:
            if self.future is not None:
                if not self.future.done():
                    return
                try:
                    self.servers = self.future.result()
                    self.fetched_at = time.monotonic()
                except Exception as exc:
                    log.warning("Provider %s: listing servers failed: %s",
                                self.adapter.provider.name, exc)
                self.future = None
            if time.monotonic() - self.fetched_at >= LISTING_TTL:
                self.future = self.adapter.executor.submit(self._fetch)

    def get(self, server_id: str):
        self.refresh()
        return self.servers.get(server_id)

    def fresh_since(self, moment: float) -> bool:
        return self.fetched_at > moment
