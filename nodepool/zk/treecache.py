"""The watch-driven mirror of one ZooKeeper subtree (the recipe under every
typed cache in ``cache.py``).

The subtree is watched with a single persistent recursive watch. The watch
events and the replies to the reads they trigger are applied by one worker
thread in the order the server sent them, so the mirror converges on the
server's state without ever listing the tree again - except after a
reconnection, when events may have been missed and the subtree is re-read once
(pipelined). :meth:`TreeCache.barrier` waits until every change committed
before it is visible.

Our own writes need no read: the writer announces the path before writing
(:meth:`TreeCache.expect_write`), the watch event of the change is then
skipped, and the data the writer sent is applied when its reply comes back
(:meth:`TreeCache.wrote`). The server sends a change's watch event before
its reply, so the applied data is queued after the event it replaces; a
record is never replaced by an older version, and a failed write re-reads
the path, so an event skipped on the write's behalf is never lost.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable, TypeVar

from kazoo.exceptions import NoNodeError
from kazoo.protocol.states import EventType

from nodepool.zk import paths
from nodepool.zk.client import RESYNC, ZooKeeperClient
from nodepool.zk.decoding import CorruptRecord, short_repr

R = TypeVar("R")

log = logging.getLogger("nodepool.zk.cache")

_STOP = object()


class _BarrierWaiter:
    """A caller of :meth:`TreeCache.barrier` waiting for the cache thread."""

    __slots__ = ("event", "ok")

    def __init__(self):
        self.event = threading.Event()
        self.ok = False

    def finish(self, ok: bool) -> None:
        self.ok = ok
        self.event.set()

    def wait(self, timeout: float) -> bool:
        return self.event.wait(timeout) and self.ok


# Listener signature: (kind, key, record) where kind is "changed" or "deleted".
Listener = Callable[[str, object, object], None]


def _take(counts: dict[str, int], key: str) -> bool:
    """Take one from ``counts[key]``; False if there was none."""
    count = counts.get(key)
    if not count:
        return False
    if count == 1:
        del counts[key]
    else:
        counts[key] = count - 1
    return True


class TreeCache:
    """Mirror of the znodes below ``root``; subclasses keep typed views."""

    def __init__(self, client: ZooKeeperClient, root: str, name: str):
        self.client = client
        self.root = root
        self.name = name
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._listeners: list[Listener] = []
        # Paths known to exist below root, and each path's known children
        # (data is kept only by subclasses, in typed form).
        self._present: set[str] = set()
        self._children: dict[str, set[str]] = {}
        self._resync_pending = 0
        self._resync_generation = 0
        # Barriers whose read came back during a resynchronisation.
        self._after_resync: list[_BarrierWaiter] = []
        self._resync_incomplete = False
        self.synced = threading.Event()
        self.events_applied = 0
        # Path -> writes of ours announced and not yet matched to an event;
        # and path -> events skipped whose write has not come back yet.
        self._expected: dict[str, int] = {}
        self._skipped: dict[str, int] = {}
        self.reads_saved = 0

    # -- what to read; subclasses refine -----------------------------------

    def wants_data(self, path: str) -> bool:
        return paths.LOCK_DIR not in path[len(self.root):].split("/")

    def wants_children(self, path: str) -> bool:
        return True

    def on_data(self, path: str, data: bytes, stat) -> None:
        """A znode's data arrived (created or changed)."""

    def on_created(self, path: str) -> None:
        """A znode whose data we do not read was created."""

    def on_deleted(self, path: str) -> None:
        """A znode was deleted."""

    def known_version(self, path: str) -> int | None:
        """The version of the record held for ``path`` (None: none held).
        Caches that take their own writes (:meth:`expect_write`) refine it."""
        return None

    # -- our own writes ------------------------------------------------------

    def expect_write(self, path: str) -> None:
        """A write of ours to ``path`` is about to be sent (any thread). Must be
        followed by :meth:`wrote` or :meth:`write_failed`."""
        with self._lock:
            self._expected[path] = self._expected.get(path, 0) + 1

    def wrote(self, path: str, data: bytes, stat) -> None:
        """The announced write was applied: ``data`` is stored at ``stat``."""
        self._queue.put(("own", path, data, stat))

    def write_failed(self, path: str) -> None:
        """The announced write did not apply, or its outcome is unknown."""
        self._queue.put(("own", path, None, None))

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> "TreeCache":
        self.client.kazoo.ensure_path(self.root)
        self._thread = threading.Thread(target=self._run, name=f"{self.name}-cache",
                                        daemon=True)
        self._thread.start()
        self.client.add_persistent_watch(self.root, self._queue.put)
        self._queue.put(("event", RESYNC))
        return self

    def stop(self) -> None:
        self.client.remove_persistent_watch(self.root)
        self._queue.put(_STOP)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def wait_synced(self, timeout: float = 30.0) -> bool:
        return self.synced.wait(timeout)

    def barrier(self, timeout: float = 10.0) -> bool:
        """Wait until the cache reflects every change committed before now.

        1. ``sync`` makes our server catch up with the leader; the watch
           events of every change committed before it reach our queue before
           its reply (the server sends them in order, and kazoo's connection
           thread queues them before it wakes us).
        2. A marker queued now is therefore behind all those events; the cache
           thread, having sent the reads for them, sends one more read when it
           reaches the marker.
        3. Replies come in the order the reads were sent, so when that read's
           reply is applied, every earlier read's reply has been applied too
           (and a resynchronisation in progress has finished).

        False if ZooKeeper could not be reached or ``timeout`` passed.
        """
        try:
            self.client.kazoo.sync(self.root)
        except Exception as exc:
            log.debug("%s cache barrier: sync failed: %s", self.name, exc)
            return False
        waiter = _BarrierWaiter()
        self._queue.put(("barrier", waiter))
        return waiter.wait(timeout)

    @property
    def queue_size(self) -> int:
        return self._queue.qsize()

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def decode(self, path: str, decode: Callable[[], R | None]) -> R | None:
        """``decode()``, or None when the record is corrupt (logged and
        skipped: one bad znode must not stop the cache)."""
        try:
            return decode()
        except CorruptRecord as exc:
            log.warning("Skipping corrupt %s record %s: %s", self.name, path, exc)
            return None

    def keep(self, records: dict, key, record) -> None:
        """Hold ``record`` under ``key`` (None: drop the key) and tell the
        listeners it changed."""
        if record is None:
            records.pop(key, None)
        else:
            records[key] = record
        self.notify("changed", key, record)

    def notify(self, kind: str, key, record) -> None:
        for listener in list(self._listeners):
            try:
                listener(kind, key, record)
            except Exception:
                log.exception("%s cache listener failed", self.name)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Block until ``predicate()`` holds (checked after every change)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
        return True

    # -- the worker --------------------------------------------------------

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            try:
                with self._lock:
                    self._apply(item)
                    self.events_applied += 1
                    self._changed.notify_all()
            except Exception:
                log.exception("%s cache failed to apply %s", self.name,
                              short_repr(item))

    def _send(self, tag, request: str, path: str) -> None:
        try:
            self.client.send_ordered(self._queue.put, tag, request, path)
        except Exception as exc:
            # Not connected: the resync after reconnection will catch up.
            log.debug("%s cache cannot read %s now: %s", self.name, path, exc)
            if tag[0] == "resync":
                self._resync_incomplete = True
                self._resync_done()
            elif tag[0] == "barrier":
                tag[1].finish(False)

    def _apply(self, item) -> None:
        if item[0] == "barrier":
            # Every event queued before the marker has had its read sent;
            # events skipped for writes still on their way are read now, so
            # the barrier does not depend on the writers.
            for path in list(self._skipped):
                self._send(("get", path), "get", path)
            self._send(("barrier", item[1]), "get", self.root)
            return
        if item[0] == "event":
            event = item[1]
            if event is RESYNC:
                self._start_resync()
                return
            path = event.path
            if event.type == EventType.DELETED:
                self._delete(path)
            elif event.type == EventType.CREATED:
                if self.wants_data(path):
                    if self._skip_own(path):
                        self._add_present(path)
                    else:
                        self._send(("get", path), "get", path)
                elif path not in self._present:
                    self._add_present(path)
                    self.on_created(path)
            elif event.type == EventType.CHANGED:
                if self.wants_data(path) and not self._skip_own(path):
                    self._send(("get", path), "get", path)
            return
        if item[0] == "own":
            self._own_write_done(*item[1:])
            return
        _, tag, value, exc = item
        kind = tag[0]
        if kind == "addwatch":
            if exc is not None:
                log.error("%s cache: addWatch on %s failed: %r (ZooKeeper >= 3.6 "
                          "is required)", self.name, tag[1], exc)
            return
        if kind == "barrier":
            if exc is not None and not isinstance(exc, NoNodeError):
                tag[1].finish(False)
            elif self._resync_pending > 0:
                self._after_resync.append(tag[1])
            else:
                tag[1].finish(True)
        elif kind == "get":
            self._got_data(tag[1], value, exc)
        elif kind == "resync":
            _, what, path, generation = tag
            if generation == self._resync_generation:
                if what == "get":
                    self._got_data(path, value, exc)
                else:
                    self._got_children(path, value, exc, generation)
                self._resync_done()

    def _skip_own(self, path: str) -> bool:
        """Whether this change event stands for a write of ours (its data
        will come from the writer rather than from a read)."""
        if not _take(self._expected, path):
            return False
        self._skipped[path] = self._skipped.get(path, 0) + 1
        return True

    def _own_write_done(self, path: str, data: bytes | None, stat) -> None:
        # Each announced write settles one skipped event if one is
        # outstanding, else its own unmatched announcement.
        if not _take(self._skipped, path):
            _take(self._expected, path)
            return
        if data is None:
            # The event skipped may have been somebody else's change.
            self._send(("get", path), "get", path)
        elif path in self._present:
            known = self.known_version(path)
            if known is None or known < stat.version:
                self.reads_saved += 1
                self.on_data(path, data, stat)

    def _got_data(self, path: str, value, exc) -> None:
        if exc is not None:
            if isinstance(exc, NoNodeError):
                self._delete(path)
            else:
                log.debug("%s cache: read of %s failed: %r", self.name, path, exc)
            return
        data, stat = value
        self._add_present(path)
        self.on_data(path, data, stat)

    def _add_present(self, path: str) -> None:
        if path in self._present:
            return
        self._present.add(path)
        self._children.setdefault(path.rsplit("/", 1)[0], set()).add(path)

    def _delete(self, path: str) -> None:
        # Children first, as ZooKeeper itself deletes them.
        for child in list(self._children.get(path, ())):
            self._delete(child)
        self._children.pop(path, None)
        if path in self._present:
            self._present.discard(path)
            siblings = self._children.get(path.rsplit("/", 1)[0])
            if siblings is not None:
                siblings.discard(path)
            self.on_deleted(path)

    # -- resynchronisation -------------------------------------------------

    def _start_resync(self) -> None:
        # Events were missed: nothing is known about which were ours. Every
        # path is read again below, and a late reply from a writer is still
        # applied if it is newer than what the read returns.
        self._expected.clear()
        self._skipped.clear()
        self._resync_incomplete = False
        self.synced.clear()
        self._resync_generation += 1
        self._resync_pending = 0
        self._resync_request("children", self.root)

    def _resync_request(self, what: str, path: str) -> None:
        self._resync_pending += 1
        self._send(("resync", what, path, self._resync_generation), what, path)

    def _resync_done(self) -> None:
        self._resync_pending -= 1
        if self._resync_pending <= 0:
            self._resync_pending = 0
            self.synced.set()
            waiting, self._after_resync = self._after_resync, []
            for waiter in waiting:
                waiter.finish(not self._resync_incomplete)

    def _got_children(self, path: str, children, exc, generation) -> None:
        if exc is not None:
            if not isinstance(exc, NoNodeError):
                log.debug("%s cache: listing %s failed: %r", self.name, path, exc)
                return
            children = []
        listed = {f"{path}/{c}" for c in children}
        # Anything we knew below this level that the listing lacks is gone.
        for stale in [p for p in self._children.get(path, ()) if p not in listed]:
            self._delete(stale)
        for child in sorted(listed):
            if self.wants_data(child):
                self._resync_request("get", child)
            elif child not in self._present:
                self._add_present(child)
                self.on_created(child)
            if self.wants_children(child):
                self._resync_request("children", child)
