"""kazoo, extended: the one module that touches kazoo's private members.

nodepool needs four things kazoo 2.x does not offer publicly:

* the ``addWatch`` (persistent recursive watches) and ``multiRead`` requests,
  which ZooKeeper 3.6 added and kazoo does not know;
* watch events of persistent watches, delivered in the order the server sent
  them together with the replies of reads (kazoo only dispatches one-shot
  watches, and on another thread);
* sending many requests with one wake-up of the connection thread, and
  fewer system calls per request: kazoo polls and reads twice for every
  reply and polls and writes once for every request; this connection reads
  whatever has arrived into a buffer and handles every whole reply in it, and
  sends every queued request in one write;
* the length of the request queue, for the ``zk.client.connection_queue``
  gauge;
* sequential creates in a transaction: kazoo's ``TransactionRequest.create``
  normalises the path and so drops the trailing ``/`` of a prefix like
  ``/nodepool/nodes/`` (the server would create ``/nodepool/nodes0000000001``).

Everything that reaches into kazoo's internals for these lives here, as
subclasses, so a kazoo upgrade is checked in one place: the suite's
``test_kazoo_ext`` fails if a member this module relies on moved.
``setup.cfg`` holds kazoo to the releases the suite has passed on and
``constraints.txt`` pins the exact versions CI installs.
"""

from __future__ import annotations

import logging
import select as select_module
import ssl
import struct
from collections import namedtuple
from typing import Callable, Iterable

from kazoo.client import KazooClient
from kazoo.exceptions import EXCEPTIONS
from kazoo.handlers.threading import SequentialThreadingHandler
from kazoo.protocol.connection import (_CONNECTION_DROP, _SESSION_EXPIRED,
                                       CLOSE_RESPONSE, ConnectionHandler)
from kazoo.exceptions import ConnectionDropped
from kazoo.protocol.paths import _prefix_root
from kazoo.security import OPEN_ACL_UNSAFE
from kazoo.protocol.serialization import (Auth, Create, GetChildren, GetData,
                                          MultiHeader, Watch,
                                          int_struct, multiheader_struct,
                                          read_string, stat_struct,
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
        # Straight struct reads: a 20,000-node listing parses 40,000 results.
        results = []
        append = results.append
        header_size, stat_size, int_size = (multiheader_struct.size, stat_struct.size,
                                            int_struct.size)
        unpack_header, unpack_stat, unpack_int = (multiheader_struct.unpack_from,
                                                  stat_struct.unpack_from,
                                                  int_struct.unpack_from)
        make_stat = ZnodeStat._make
        get_data, get_children = GetData.type, GetChildren.type
        kind, done, _ = unpack_header(bytes, offset)
        offset += header_size
        while not done:
            if kind == get_data:
                length = unpack_int(bytes, offset)[0]
                offset += int_size
                if length < 0:
                    data = None
                else:
                    data = bytes[offset:offset + length]
                    offset += length
                append((data, make_stat(unpack_stat(bytes, offset))))
                offset += stat_size
            elif kind == get_children:
                count = unpack_int(bytes, offset)[0]
                offset += int_size
                children = []
                for _ in range(max(count, 0)):
                    child, offset = read_string(bytes, offset)
                    children.append(child)
                append(children)
            elif kind == -1:
                err = unpack_int(bytes, offset)[0]
                offset += int_size
                append(EXCEPTIONS[err]())
            else:  # pragma: no cover - not a read
                raise ValueError(f"unexpected multiRead result type {kind}")
            kind, done, _ = unpack_header(bytes, offset)
            offset += header_size
        return results


class _PersistentWatchConnection(ConnectionHandler):
    """kazoo's connection, which also hands every watch event to the
    client's persistent-watch sinks, on the connection thread, in the order
    the server sent it; and reads and writes in batches."""

    # Most requests one write sends (each is small; a node record is < 2 KiB).
    SEND_BATCH = 128
    READ_SIZE = 65536

    def _read_watch_event(self, buffer, offset):
        super()._read_watch_event(buffer, offset)
        self.client._deliver_persistent(buffer, offset)

    def _connect(self, host, hostip, port):
        # Bytes left from an earlier connection belong to no reply of this one.
        self._received = bytearray()
        return super()._connect(host, hostip, port)

    def _read(self, length, timeout):
        """``length`` bytes, from what was received before or from as much
        as the socket has now. The socket is non-blocking: read first, and
        wait for it only when it has nothing (kazoo waits before every read)."""
        received = self._received
        sock = self._socket
        while len(received) < length:
            with self._socket_error_handling():
                try:
                    chunk = sock.recv(max(self.READ_SIZE, length - len(received)))
                except (BlockingIOError, ssl.SSLWantReadError):
                    self._wait_for(sock, timeout, writing=False)
                    continue
                except ssl.SSLWantWriteError:
                    self._wait_for(sock, timeout, writing=True)
                    continue
                if not chunk:
                    raise ConnectionDropped("socket connection broken")
                received += chunk
        data = bytes(received[:length])
        del received[:length]
        return data

    def _write(self, msg, timeout):
        """Send ``msg`` whole; wait for the socket only when it is full."""
        sock = self._socket
        view = memoryview(msg)
        with self._socket_error_handling():
            while view:
                try:
                    sent = sock.send(view)
                except (BlockingIOError, ssl.SSLWantWriteError):
                    self._wait_for(sock, timeout, writing=True)
                    continue
                except ssl.SSLWantReadError:
                    self._wait_for(sock, timeout, writing=False)
                    continue
                if not sent:
                    raise ConnectionDropped("socket connection broken")
                view = view[sent:]

    def _wait_for(self, sock, timeout, writing: bool) -> None:
        ready = self.handler.select([], [sock], [], timeout)[1] if writing \
            else self.handler.select([sock], [], [], timeout)[0]
        if not ready:
            raise self.handler.timeout_exception(
                f"socket time-out during {'write' if writing else 'read'}")

    def _reply_buffered(self) -> bool:
        received = self._received
        return len(received) >= 4 and \
            len(received) >= 4 + int_struct.unpack_from(received, 0)[0]

    def _read_socket(self, read_timeout):
        # Every whole reply already received, not one per poll.
        response = super()._read_socket(read_timeout)
        while response is not CLOSE_RESPONSE and self._reply_buffered():
            response = super()._read_socket(read_timeout)
        return response

    def _send_request(self, read_timeout, connect_timeout):
        client = self.client
        queue = client._queue
        batch = bytearray()
        sent = []
        while queue and len(sent) < self.SEND_BATCH:
            request, async_object = queue[0]
            # Auth and kazoo's test hooks keep kazoo's own path.
            if request is _SESSION_EXPIRED or request is _CONNECTION_DROP or \
                    request.type is None or request.type < 0 or \
                    request.type == Auth.type:
                break
            self._xid = (self._xid % 2147483647) + 1
            body = int_struct.pack(self._xid) + int_struct.pack(request.type) + \
                request.serialize()
            batch += int_struct.pack(len(body))
            batch += body
            queue.popleft()
            sent.append((request, async_object, self._xid))
        if not sent:
            return super()._send_request(read_timeout, connect_timeout)
        if self.logger.isEnabledFor(logging.DEBUG):
            for request, _, xid in sent:
                self.logger.debug("Sending request(xid=%s): %s", xid, request)
        # Pending before the write: if it fails, the connection is dropped and
        # kazoo fails every pending request (unknown outcome), as it should.
        client._pending.extend(sent)
        self._write(bytes(batch), connect_timeout)
        # One wake-up byte per request; a byte not written yet is read later
        # by a pass that finds the queue empty (kazoo handles that).
        self._read_sock.recv(len(sent))


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


def add_sequential_create(transaction, prefix: str, data: bytes) -> None:
    """Add to a kazoo transaction the create of a persistent sequential
    znode named ``prefix`` + the server's sequence number, the prefix kept
    as given (a trailing ``/`` included)."""
    path = _prefix_root(transaction.client.chroot, prefix, trailing=True)
    transaction._add(Create(path, data, OPEN_ACL_UNSAFE, 2))
