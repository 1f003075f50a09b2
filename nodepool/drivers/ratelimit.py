"""Spacing a driver's cloud calls: each waits for its turn, turns at least
``interval`` seconds apart (shared by the threads of one provider); and
:class:`ApiCalls`, the rate-limited, timed, classified calls of the drivers
whose ``rate`` is operations per second (aws, gce)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

# Reads may run this many times as often as ``rate``.
READ_RATE_FACTOR = 10.0


class RateLimiter:
    def __init__(self, interval: float):
        self.interval = max(0.0, interval or 0.0)
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        """Block until this call's turn."""
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            time.sleep(start - now)


def cloud_executor(driver: str, provider_name: str, rate: float) -> ThreadPoolExecutor:
    """The executor a cloud driver's state machines hand their calls to:
    enough threads to keep up with ``rate`` writes per second (cloud calls
    take a second or more), 2 to 8 (reads have their own limit)."""
    workers = max(2, min(int(rate * 4), 8))
    return ThreadPoolExecutor(max_workers=workers,
                              thread_name_prefix=f"{driver}-{provider_name}")


class ApiCalls:
    """One provider's cloud calls: writes ``rate`` per second, reads
    READ_RATE_FACTOR times as many; each timed in statsd as
    ``nodepool.task.<provider>.<operation>``; errors as ``classify`` maps
    them."""

    def __init__(self, provider_name: str, rate: float, stats_client,
                 classify: Callable[[Exception], Exception]):
        from nodepool.stats import api_task_prefix
        self.writes = RateLimiter(1.0 / rate)
        self.reads = RateLimiter(1.0 / (rate * READ_RATE_FACTOR))
        self.stats = stats_client
        self.prefix = api_task_prefix(provider_name)
        self.classify = classify

    def run(self, operation: str, read: bool, call: Callable[[], Any]) -> Any:
        """``call()`` after its turn."""
        (self.reads if read else self.writes).wait()
        started = time.monotonic()
        try:
            return call()
        except Exception as exc:
            raise self.classify(exc) from exc
        finally:
            if self.stats is not None:
                self.stats.timing(f"{self.prefix}.{operation}",
                                  int((time.monotonic() - started) * 1000))
