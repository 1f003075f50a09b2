"""A background loop that runs when woken, or at least every ``interval``;
the base of the launcher's and the builder's periodic workers."""

from __future__ import annotations

import logging
import threading

from kazoo.exceptions import KazooException

log = logging.getLogger("nodepool.worker")


class PeriodicWorker:
    """Subclasses implement ``run_once``; ``wake.set()`` runs it soon."""

    # Seconds to let a burst of wake-ups settle before running.
    settle = 0.0

    def __init__(self, name: str, interval: float, client=None):
        self.name = name
        self.interval = interval
        self.client = client
        self.wake = threading.Event()
        self.running = False
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=name)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.signal_stop()
        self.join(timeout=30)

    def signal_stop(self) -> None:
        """Ask the loop to end after the current pass, without waiting."""
        self._stopped.set()
        self.wake.set()

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    @property
    def pending(self) -> bool:
        """A pass is running or has been asked for."""
        return self.running or (self.wake.is_set() and not self.stopped)

    def _run(self) -> None:
        while not self._stopped.is_set():
            self.wake.wait(self.interval)
            self.wake.clear()
            if self._stopped.is_set():
                return
            if self.client is not None and not self.client.connected:
                continue
            if self.settle:
                self._stopped.wait(self.settle)
            self.running = True
            try:
                self.run_once()
            except KazooException as exc:
                log.warning("%s: ZooKeeper error: %s", self.name, exc)
            except Exception:
                log.exception("%s failed", self.name)
            finally:
                self.running = False

    def run_once(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError
