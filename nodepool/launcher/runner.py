"""The runner of a provider's launches and deletes.

Each provider has one :class:`Runner` thread. It keeps the launches and
deletes in progress in a time-ordered heap and advances each one when it is
due - right away for a new task, later when the driver asked to be polled
later. One slow cloud never delays work that is ready to move, and a new
launch starts within microseconds instead of at the next one-second tick.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time

log = logging.getLogger("nodepool.launcher.runner")


def monotonic_since(epoch: float) -> float:
    """The monotonic clock reading of an epoch time (possibly another
    launcher's): deadlines stored as epochs run on in any process."""
    return time.monotonic() - max(0.0, time.time() - epoch)


class Task:
    """Something the runner advances; ``step()`` returns the next delay or None."""

    def step(self) -> float | None:  # pragma: no cover - interface
        raise NotImplementedError

    def abandon(self) -> None:
        """The runner is stopping."""


class Runner:
    """Advances tasks of one provider, each when it is due."""

    def __init__(self, name: str):
        self.name = name
        self._heap: list[tuple[float, int, Task]] = []
        self._counter = itertools.count()
        self._cv = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=f"runner-{name}",
                                        daemon=True)
        self._thread.start()

    def add(self, task: Task, delay: float = 0.0) -> None:
        with self._cv:
            heapq.heappush(self._heap, (time.monotonic() + delay,
                                        next(self._counter), task))
            self._cv.notify()

    def __len__(self) -> int:
        return len(self._heap)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._stopped:
                    if self._heap:
                        wait = self._heap[0][0] - time.monotonic()
                        if wait <= 0:
                            break
                        self._cv.wait(wait)
                    else:
                        self._cv.wait()
                if self._stopped:
                    tasks = [t for _, _, t in self._heap]
                    self._heap.clear()
                    break
                _, _, task = heapq.heappop(self._heap)
            try:
                delay = task.step()
            except Exception:
                log.exception("%s: task %r failed unexpectedly", self.name, task)
                delay = None
            if delay is not None:
                self.add(task, delay)
        for task in tasks:
            try:
                task.abandon()
            except Exception:
                log.exception("%s: abandoning %r failed", self.name, task)

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify()
        self._thread.join(timeout=10)
