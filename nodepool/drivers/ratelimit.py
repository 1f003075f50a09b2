"""Spacing a driver's cloud calls: each waits for its turn, turns at least
``interval`` seconds apart (shared by the threads of one provider)."""

from __future__ import annotations

import threading
import time


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
