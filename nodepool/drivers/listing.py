"""One cloud listing shared by every waiting state machine: a thread fetches
it at most every ``interval`` while anyone asks, so a burst of launches
costs one list call per interval, not one per node per poll. Used by the
drivers whose clouds list instances cheaply in one paginated call (aws, gce)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from nodepool.drivers.base import DriverError

log = logging.getLogger("nodepool.drivers")


class SharedListing:
    """``fetch_items()`` (blocking, returns {id: item}) run on demand by a
    thread of its own; ``get`` and ``fresh_since`` never block."""

    def __init__(self, fetch_items: Callable[[], dict], name: str,
                 interval: float = 0.5):
        self._fetch_items = fetch_items
        self.name = name
        self.interval = interval
        self.items: dict = {}
        # When the newest completed fetch started (monotonic): it cannot
        # have missed a change made before then.
        self.started_at = 0.0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=f"list-{name}",
                                        daemon=True)
        self._thread.start()

    def fetch(self) -> dict:
        """A fresh listing, now (blocking)."""
        started = time.monotonic()
        found = self._fetch_items()
        with self._lock:
            if started > self.started_at:
                self.items, self.started_at = found, started
        return found

    def request(self) -> None:
        """Someone waits for news: fetch soon (once per interval at most)."""
        self._wake.set()

    def get(self, item_id):
        return self.items.get(item_id)

    def fresh_since(self, moment: float) -> bool:
        return self.started_at > moment

    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait()
            self._wake.clear()
            if self._stopped:
                return
            wait = self.started_at + self.interval - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:
                self.fetch()
            except Exception as exc:
                log.warning("%s: listing failed: %s", self.name, exc)
                time.sleep(self.interval)
                self._wake.set()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()


def all_pages(call: Callable[..., dict], kwargs: dict, items: str, token_out: str,
              token_in: str, what: str) -> list:
    """Every item of a paginated listing: ``call(**kwargs)`` page by page,
    each reply's ``items`` collected and its ``token_out`` passed back as
    ``token_in`` until there is none."""
    found: list = []
    for _ in range(10_000):  # bounded: a listing that never ends is broken
        reply = call(**kwargs)
        found.extend(reply.get(items) or [])
        token = reply.get(token_out)
        if not token:
            return found
        kwargs[token_in] = token
    raise DriverError(f"{what} did not end")
