"""The cyclic garbage collector in the daemons.

A launcher holds tens of thousands of node and request records for hours.
With Python's default thresholds, a launcher with 20,000 nodes spent a third
of a request burst's CPU time collecting: a young collection every 700
allocations, each following every reference of the young containers (a
fresh list of all open requests, say), and full collections walking every
record. The daemons therefore collect the young generation every
:data:`YOUNG_THRESHOLD` allocations, and every minute move what has survived
a collection out of the collector's reach (``gc.freeze``), so collections
look only at what is new. Garbage is still freed by reference counting;
only reference cycles that become garbage after being frozen wait, and once
an hour everything is collected again, so they wait an hour at most.
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger("nodepool.memory")

FREEZE_INTERVAL = 60.0
FULL_INTERVAL = 3600.0
# Allocations between young collections (Python's default: 700); then one
# middle collection every 20 young ones and a full one every 10 middle ones.
YOUNG_THRESHOLD = 50_000
THRESHOLDS = (YOUNG_THRESHOLD, 20, 10)


class LongLivedObjects:
    """Made once per daemon (it sets the collector's thresholds); call
    :meth:`tick` now and then from one thread (the daemon's main loop): it
    collects and freezes when due."""

    def __init__(self, freeze_interval: float = FREEZE_INTERVAL,
                 full_interval: float = FULL_INTERVAL,
                 clock=time.monotonic):
        self.freeze_interval = freeze_interval
        self.full_interval = full_interval
        self.clock = clock
        self._next_freeze = clock()
        self._next_full = clock() + full_interval
        gc.set_threshold(*THRESHOLDS)

    def tick(self) -> None:
        now = self.clock()
        if now < self._next_freeze:
            return
        full = now >= self._next_full
        started = time.perf_counter()
        if full:
            gc.unfreeze()  # frozen cycles that became garbage are freed now
            self._next_full = now + self.full_interval
        collected = gc.collect()
        gc.freeze()
        self._next_freeze = now + self.freeze_interval
        log.debug("%s collection freed %d objects in %.3f s; %d objects frozen",
                  "Full" if full else "Young", collected,
                  time.perf_counter() - started, gc.get_freeze_count())
