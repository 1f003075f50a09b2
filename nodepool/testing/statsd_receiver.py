"""A real statsd endpoint for tests: a UDP socket on loopback."""

from __future__ import annotations

import socket
import threading
import time


class StatsReceiver:
    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.packets: list[str] = []
        self._stopped = False
        threading.Thread(target=self._run, daemon=True, name="statsd-rx").start()

    def _run(self) -> None:
        while not self._stopped:
            try:
                data = self.sock.recv(65535)
            except OSError:
                continue
            self.packets.extend(data.decode("utf-8", "replace").splitlines())

    def keys(self) -> set[str]:
        """Metric names received (without value and type)."""
        return {p.split(":", 1)[0] for p in list(self.packets)}

    def wait_for(self, predicate, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.keys()):
                return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        self._stopped = True
        self.sock.close()
