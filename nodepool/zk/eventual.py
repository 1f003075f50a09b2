"""Deletes that must happen: lock contenders and other ephemerals of ours
whose removal may not be lost to a dropped connection."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Callable

from kazoo.exceptions import (ConnectionClosedError, ConnectionLoss, NoNodeError,
                              OperationTimeoutError, SessionExpiredError)

if TYPE_CHECKING:
    from nodepool.zk.client import ZooKeeperClient

log = logging.getLogger("nodepool.zk.client")


class _EventualDelete:
    """One znode to delete for sure: retried across connection losses until
    it is gone or the session that owned it has ended."""

    __slots__ = ("path", "prefix", "generation", "done", "then")

    def __init__(self, path: str, prefix: str | None, generation: int,
                 then: Callable[[], None] | None = None):
        # With a prefix, ``path`` is a directory and the znodes to delete are
        # its children whose names start with ``prefix``.
        self.path = path
        self.prefix = prefix
        self.generation = generation
        self.done = threading.Event()
        self.then = then

    def finish(self) -> None:
        self.done.set()
        if self.then is not None:
            self.then()


class _Countdown:
    """Calls ``fn`` once ``count`` calls of :meth:`tick` have been made."""

    def __init__(self, count: int, fn: Callable[[], None]):
        self._left = count
        self._lock = threading.Lock()
        self._fn = fn

    def tick(self) -> None:
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if last:
            self._fn()


# Errors after which a delete is simply sent again once connected; any other
# (the session ended, the client closed) makes the ephemeral go by itself.
_RETRYABLE = (ConnectionLoss, OperationTimeoutError)


class EventualDeletes:
    """Deletes that must not be lost to a dropped connection (lock contenders,
    above all): sent asynchronously, and on a connection loss kept until the
    connection is back, then sent again. ZooKeeper applies one session's
    requests in order, so a delete sent before a later request of ours takes
    effect before it."""

    def __init__(self, client: ZooKeeperClient):
        self.client = client
        self._lock = threading.Lock()
        self._waiting: list[_EventualDelete] = []
        self._in_flight = 0

    @property
    def pending(self) -> int:
        """Deletes sent and not yet answered, or waiting for the connection."""
        with self._lock:
            return self._in_flight + len(self._waiting)

    def add(self, path: str, prefix: str | None = None) -> threading.Event:
        op = _EventualDelete(path, prefix, self.client.session_generation)
        self._send(op)
        return op.done

    def _send(self, op: _EventualDelete) -> None:
        kazoo = self.client.kazoo
        if kazoo is None or op.generation != self.client.session_generation:
            op.finish()  # the session ended: its ephemerals went with it
            return
        with self._lock:
            self._in_flight += 1
        try:
            if op.prefix is None:
                result = kazoo.delete_async(op.path)
            else:
                result = kazoo.get_children_async(op.path)
        except Exception as exc:  # closed or closing
            with self._lock:
                self._in_flight -= 1
            log.debug("Cannot delete %s now: %s", op.path, exc)
            op.finish()
            return
        result.rawlink(lambda answer: self._answered(op, answer))

    def _answered(self, op: _EventualDelete, answer) -> None:
        with self._lock:
            self._in_flight -= 1
        exc = answer.exception
        if exc is None:
            if op.prefix is not None:
                # The listing: delete each child of ours; we are done once
                # every one of those deletes is.
                children = [c for c in answer.value if c.startswith(op.prefix)]
                if children:
                    countdown = _Countdown(len(children), op.finish)
                    for child in children:
                        self._send(_EventualDelete(f"{op.path}/{child}", None,
                                                   op.generation, countdown.tick))
                    return
            op.finish()
        elif isinstance(exc, NoNodeError):
            op.finish()
        elif isinstance(exc, _RETRYABLE) and not self.client.closing \
                and op.generation == self.client.session_generation:
            with self._lock:
                self._waiting.append(op)
            # Connected again already (the answer came late): send now.
            if self.client.connected:
                self.flush()
        else:
            if not isinstance(exc, (SessionExpiredError, ConnectionClosedError)):
                log.warning("Cannot delete %s: %r", op.path, exc)
            op.finish()

    def flush(self) -> None:
        """Send again what waited for the connection (on reconnection)."""
        with self._lock:
            waiting, self._waiting = self._waiting, []
        for op in waiting:
            self._send(op)

    def forget_all(self) -> None:
        """The session ended: nothing of it is left to delete."""
        with self._lock:
            waiting, self._waiting = self._waiting, []
        for op in waiting:
            op.finish()
