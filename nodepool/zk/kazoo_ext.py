"""kazoo, extended: the one module that touches kazoo's private members.

nodepool needs four things kazoo 2.x does not offer publicly:

* the ``addWatch`` (persistent recursive watches) and ``multiRead`` requests,
  which ZooKeeper 3.6 added and kazoo does not know;
* watch events of persistent watches, delivered in the order the server sent
  them together with the replies of reads (kazoo only dispatches one-shot
  watches, and on another thread);
* sending many requests with one wake-up of the connection thread;
* the length of the request queue, for the ``zk.client.connection_queue``
  gauge.

Everything that reaches into kazoo's internals for these lives here, as
subclasses, so a kazoo upgrade is checked in one place: the suite's
``test_kazoo_ext`` fails if a member this module relies on moved.
``setup.cfg`` holds kazoo to the releases the suite has passed on and
``constraints.txt`` pins the exact versions CI installs.
"""

from __future__ import annotations

import logging
import select as select_module
import struct
from collections import namedtuple
from typing import Callable, Iterable

from kazoo.client import KazooClient
from kazoo.exceptions import EXCEPTIONS
from kazoo.handlers.threading import SequentialThreadingHandler
from kazoo.protocol.connection import ConnectionHandler
from kazoo.protocol.serialization import (GetChildren, GetData, MultiHeader, Watch,
                                          int_struct, multiheader_struct,
                                          read_buffer, read_string, stat_struct,
                                          write_string)
from kazoo.protocol.states import EVENT_TYPE_MAP, WatchedEvent, ZnodeStat

log = logging.getLogger("nodepool.zk.kazoo_ext")

# What a persistent-watch sink receives; see NodepoolKazooClient.
Sink = Callable[[tuple], None]

# kazoo releases whose internals this module was checked against (setup.cfg
# allows only these).
TESTED_KAZOO_SERIES = ("2.11",)


def kazoo_version() -> str:
    from importlib.metadata import version
    return version("kazoo")


def kazoo_is_tested() -> bool:
    return kazoo_version().startswith(tuple(s + "." for s in TESTED_KAZOO_SERIES))


class PollingHandler(SequentialThreadingHandler):
    """kazoo's threading handler with a cheaper ``select``.

    kazoo builds, fills and closes an epoll set on every call (several system
    calls, thousands of times a second under load); ``poll`` is one.
    """

    def select(self, rlist, wlist, xlist, timeout=None):
        poller = select_module.poll()
        objects: dict[int, object] = {}
        for fileobj in rlist:
            fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
            objects[fd] = fileobj
            poller.register(fd, select_module.POLLIN | select_module.POLLPRI)
        writers: dict[int, object] = {}
        for fileobj in wlist:
            fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
            writers[fd] = fileobj
            mask = select_module.POLLOUT
            if fd in objects:
                mask |= select_module.POLLIN | select_module.POLLPRI
            poller.register(fd, mask)
        events = poller.poll(None if timeout is None else timeout * 1000.0)
        readable, writable = [], []
        error_bits = select_module.POLLERR | select_module.POLLHUP | \
            select_module.POLLNVAL
        for fd, mask in events:
            if fd in objects and mask & (select_module.POLLIN | select_module.POLLPRI
                                         | error_bits):
                readable.append(objects[fd])
            if fd in writers and mask & (select_module.POLLOUT | error_bits):
                writable.append(writers[fd])
        return readable, writable, []


class AddWatch(namedtuple("AddWatch", "path mode")):
    """The ``addWatch`` request (opcode 106, ZooKeeper 3.6+)."""

    type = 106
    PERSISTENT = 0
    PERSISTENT_RECURSIVE = 1

    def serialize(self):
        b = bytearray()
        b.extend(write_string(self.path))
        b.extend(struct.pack("!i", self.mode))
        return b

    @classmethod
    def deserialize(cls, bytes, offset):
        return True


class MultiRead(namedtuple("MultiRead", "operations")):
    """The ``multiRead`` request (opcode 22, ZooKeeper 3.6+): many getData /
    getChildren in one request and one reply."""

    type = 22

    def serialize(self):
        b = bytearray()
        for op in self.operations:
            b.extend(MultiHeader(op.type, False, -1).serialize() + op.serialize())
        return b + multiheader_struct.pack(-1, True, -1)

    @classmethod
    def deserialize(cls, bytes, offset):
        results = []
        header, offset = MultiHeader.deserialize(bytes, offset)
        while not header.done:
            if header.type == GetData.type:
                data, offset = read_buffer(bytes, offset)
                stat = ZnodeStat._make(stat_struct.unpack_from(bytes, offset))
                offset += stat_struct.size
                results.append((data, stat))
            elif header.type == GetChildren.type:
                count = int_struct.unpack_from(bytes, offset)[0]
                offset += int_struct.size
                children = []
                for _ in range(max(count, 0)):
                    child, offset = read_string(bytes, offset)
                    children.append(child)
                results.append(children)
            elif header.type == -1:
                err = int_struct.unpack_from(bytes, offset)[0]
                offset += int_struct.size
                results.append(EXCEPTIONS[err]())
            else:  # pragma: no cover - not a read
                raise ValueError(f"unexpected multiRead result type {header.type}")
            header, offset = MultiHeader.deserialize(bytes, offset)
        return results


class _PersistentWatchConnection(ConnectionHandler):
    """kazoo's connection, which also hands every watch event to the
    client's persistent-watch sinks, on the connection thread, in the order
    the server sent it."""

    def _read_watch_event(self, buffer, offset):
        super()._read_watch_event(buffer, offset)
        self.client._deliver_persistent(buffer, offset)


class NodepoolKazooClient(KazooClient):
    """KazooClient with persistent-watch delivery and request batching."""

    _warned = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if not NodepoolKazooClient._warned and not kazoo_is_tested():
            NodepoolKazooClient._warned = True
            log.warning("kazoo %s is not a release nodepool was tested with (%s.x); "
                        "nodepool/zk/kazoo_ext.py relies on its internals",
                        kazoo_version(), "/".join(TESTED_KAZOO_SERIES))
        # Same object, one overridden method: kazoo built it with arguments
        # (retry policy, SASL options) we would otherwise have to repeat.
        self._connection.__class__ = _PersistentWatchConnection
        # root path (without chroot) -> sink
        self.persistent_sinks: dict[str, Sink] = {}

    def _deliver_persistent(self, buffer, offset) -> None:
        sinks = self.persistent_sinks
        if not sinks:
            return
        watch, _ = Watch.deserialize(buffer, offset)
        path = self.unchroot(watch.path)
        event = None
        for root, sink in list(sinks.items()):
            if path == root or path.startswith(root + "/"):
                if event is None:
                    event = WatchedEvent(EVENT_TYPE_MAP.get(watch.type),
                                         self.client_state, path)
                sink(("event", event))

    def submit(self, request, result) -> None:
        """Queue one protocol request; kazoo calls ``result.set`` or
        ``result.set_exception`` from its connection thread when the reply
        arrives (so replies and watch events reach a sink in server order)."""
        self._call(request, result)

    def submit_many(self, pairs: Iterable[tuple]) -> int:
        """Queue (request, result) pairs and wake the connection thread with
        one write (kazoo's own calls write a wake-up byte each; its loop still
        takes one byte per request sent). Returns how many were queued; raises
        OSError if the connection is closed."""
        pairs = list(pairs)
        write_sock = self._connection._write_sock
        if write_sock is None:
            raise OSError("connection closed")
        self._queue.extend(pairs)
        write_sock.sendall(b"\0" * len(pairs))
        return len(pairs)

    @property
    def queued_requests(self) -> int:
        """Requests waiting to be sent (queued while connecting, or behind
        others)."""
        return len(self._queue)

    @property
    def connection_open(self) -> bool:
        return self._connection._write_sock is not None


def add_watch_request(path: str) -> AddWatch:
    return AddWatch(path, AddWatch.PERSISTENT_RECURSIVE)
