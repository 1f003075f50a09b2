"""The ZooKeeper connection shared by the daemons and the CLI.

A thin layer over kazoo that adds what nodepool needs and kazoo lacks:

* one connection string for the whole ensemble with a single chroot;
* optional TLS with certificate verification;
* connection-state tracking that long-running loops can wait on
  (``wait_until_connected``) and listeners that learn about suspension,
  session loss and reconnection;
* persistent recursive watches (ZooKeeper >= 3.6 ``addWatch``), delivered in
  exactly the order the server sent them, interleaved with the responses of
  reads issued through :meth:`ZooKeeperClient.send_ordered` - this is what
  lets the caches in :mod:`nodepool.zk.cache` stay correct without polling;
* pipelined reads (:meth:`ZooKeeperClient.get_many`).
"""

from __future__ import annotations

import logging
import struct
import threading
import time
import warnings
from collections import namedtuple
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import select as select_module

from kazoo.client import KazooClient
from kazoo.handlers.threading import SequentialThreadingHandler
from kazoo.exceptions import EXCEPTIONS, NoNodeError
from kazoo.protocol.serialization import (GetChildren, GetData, MultiHeader, Watch,
                                          int_struct, multiheader_struct,
                                          read_buffer, read_string, stat_struct,
                                          write_string)
from kazoo.protocol.states import ZnodeStat
from kazoo.protocol.states import (EVENT_TYPE_MAP, KazooState, WatchedEvent)

log = logging.getLogger("nodepool.zk.client")

DEFAULT_PORT = 2281
DEFAULT_TIMEOUT = 10.0


class ZooKeeperError(Exception):
    """A ZooKeeper connection could not be made or used."""


@dataclass(frozen=True)
class ZooKeeperServer:
    host: str
    port: int = DEFAULT_PORT
    chroot: str | None = None


@dataclass(frozen=True)
class ZooKeeperTLS:
    cert: str
    key: str
    ca: str

    def check_readable(self) -> None:
        for what, path in (("cert", self.cert), ("key", self.key), ("ca", self.ca)):
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise ZooKeeperError(
                    f"zookeeper-tls {what} file {path!r} is not readable: "
                    f"{exc.strerror}") from None


def connection_string(servers: Sequence[ZooKeeperServer]) -> str:
    """Render servers as kazoo expects: ``h1:p1,h2:p2/chroot``.

    kazoo takes everything after the first '/' as the chroot, so the chroot is
    written once at the end. Servers with differing chroots are rejected by the
    configuration validator before we get here.
    """
    if not servers:
        raise ZooKeeperError("no zookeeper-servers configured")
    hosts = []
    chroot = None
    for server in servers:
        host = server.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        hosts.append(f"{host}:{server.port}")
        if server.chroot:
            chroot = server.chroot
    result = ",".join(hosts)
    if chroot:
        if not chroot.startswith("/"):
            chroot = "/" + chroot
        result += chroot.rstrip("/")
    return result


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
    """The ``addWatch`` request (opcode 106), missing from kazoo 2.x."""

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
    getChildren in one request and one reply. Missing from kazoo."""

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


# The marker a persistent-watch sink receives after a reconnection: events may
# have been missed, the sink must re-read its tree.
RESYNC = WatchedEvent("RESYNC", None, None)


class _SinkResult:
    """Stands in for kazoo's AsyncResult: delivers the reply to a sink.

    kazoo calls ``set``/``set_exception`` from its connection thread in the
    order replies arrive, so replies and watch events reach the sink in server
    order.
    """

    __slots__ = ("sink", "tag")

    def __init__(self, sink: Callable, tag):
        self.sink = sink
        self.tag = tag

    def set(self, value=None):
        self.sink(("reply", self.tag, value, None))

    def set_exception(self, exc):
        self.sink(("reply", self.tag, None, exc))


class _BatchResult:
    """One reply slot of a pipelined batch (kazoo calls ``set`` or
    ``set_exception`` from its connection thread)."""

    __slots__ = ("batch", "index")

    def __init__(self, batch: "_Batch", index: int):
        self.batch = batch
        self.index = index

    def set(self, value=None):
        self.batch.done(self.index, value)

    def set_exception(self, exc):
        self.batch.done(self.index, exc)


class _Batch:
    def __init__(self, size: int):
        self.results: list = [None] * size
        self.remaining = size
        self.lock = threading.Lock()
        self.finished = threading.Event()
        if size == 0:
            self.finished.set()

    def done(self, index: int, value) -> None:
        self.results[index] = value
        with self.lock:
            self.remaining -= 1
            if self.remaining == 0:
                self.finished.set()


class ZooKeeperClient:
    """One kazoo session with nodepool's connection handling."""

    def __init__(self, hosts: str | Sequence[ZooKeeperServer],
                 timeout: float = DEFAULT_TIMEOUT,
                 tls: ZooKeeperTLS | None = None,
                 read_only: bool = False):
        if not isinstance(hosts, str):
            hosts = connection_string(hosts)
        self.hosts = hosts
        self.timeout = float(timeout)
        self.tls = tls
        self.read_only = read_only
        self.kazoo: KazooClient | None = None
        self._state_listeners: list[Callable[[str], None]] = []
        self._connected = threading.Event()
        self._persistent: dict[str, Callable] = {}
        self._persistent_lock = threading.Lock()
        self._was_disconnected = False
        self._closing = False
        # Counts session losses; callers compare it to notice re-registration.
        self.session_generation = 0

    # -- lifecycle ---------------------------------------------------------

    def _make_kazoo(self) -> KazooClient:
        kwargs = dict(hosts=self.hosts, timeout=self.timeout,
                      read_only=self.read_only, handler=PollingHandler())
        if self.tls:
            self.tls.check_readable()
            kwargs.update(use_ssl=True, certfile=self.tls.cert,
                          keyfile=self.tls.key, ca=self.tls.ca,
                          verify_certs=True)
        client = KazooClient(**kwargs)
        client.add_listener(self._on_state)
        self._install_event_hook(client)
        return client

    def connect(self, timeout: float | None = None) -> None:
        """Connect, retrying every second until ``timeout`` (None: forever)."""
        if self.kazoo is None:
            self.kazoo = self._make_kazoo()
        deadline = None if timeout is None else time.monotonic() + timeout
        last_warning = 0.0
        while True:
            try:
                attempt = 1.0 if deadline is None else max(
                    0.1, min(1.0, deadline - time.monotonic()))
                with warnings.catch_warnings():
                    # kazoo warns when the chroot is missing; we create it.
                    warnings.simplefilter("ignore", UserWarning)
                    self.kazoo.start(timeout=attempt)
                break
            except Exception as exc:
                try:
                    self.kazoo.stop()
                except Exception:
                    pass
                if deadline is not None and time.monotonic() >= deadline:
                    self.kazoo.close()
                    self.kazoo = None
                    raise ZooKeeperError(
                        f"cannot connect to ZooKeeper at {self.hosts}: "
                        f"{exc or type(exc).__name__}") from None
                now = time.monotonic()
                if now - last_warning >= 10:
                    log.warning("Still trying to connect to ZooKeeper at %s: %s",
                                self.hosts, exc or type(exc).__name__)
                    last_warning = now
                time.sleep(0.2)
        self._connected.set()
        if self.kazoo.chroot and not self.read_only:
            self._ensure_chroot()
        log.debug("Connected to ZooKeeper at %s", self.hosts)

    def _ensure_chroot(self) -> None:
        """Create the chroot itself (kazoo only prefixes paths with it)."""
        chroot = self.kazoo.chroot
        if self.kazoo.exists("/") is not None:
            return
        # Nothing else uses the client yet: address the real root briefly.
        self.kazoo.chroot = ""
        try:
            self.kazoo.ensure_path(chroot)
        finally:
            self.kazoo.chroot = chroot

    def disconnect(self) -> None:
        if self.kazoo is None:
            return
        self._closing = True
        try:
            self.kazoo.stop()
            self.kazoo.close()
        finally:
            self.kazoo = None
            self._connected.clear()
            self._closing = False

    def reset_hosts(self, hosts: str | Sequence[ZooKeeperServer]) -> None:
        """Apply a changed server list to the live connection."""
        if not isinstance(hosts, str):
            hosts = connection_string(hosts)
        if hosts == self.hosts:
            return
        self.hosts = hosts
        if self.kazoo is not None:
            self.kazoo.set_hosts(hosts)

    # -- connection state --------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.kazoo is not None and self.kazoo.state == KazooState.CONNECTED

    @property
    def suspended(self) -> bool:
        return not self.connected

    def wait_until_connected(self, timeout: float | None = None) -> bool:
        return self._connected.wait(timeout)

    def add_state_listener(self, listener: Callable[[str], None]) -> None:
        """``listener(state)`` with state in CONNECTED, SUSPENDED, LOST.

        Called from kazoo's connection thread: it must not block or call
        ZooKeeper synchronously.
        """
        self._state_listeners.append(listener)

    def remove_state_listener(self, listener: Callable[[str], None]) -> None:
        if listener in self._state_listeners:
            self._state_listeners.remove(listener)

    def _on_state(self, state: str) -> None:
        if state == KazooState.CONNECTED:
            self._connected.set()
            if self._was_disconnected:
                self._was_disconnected = False
                self._restore_persistent_watches()
        else:
            self._connected.clear()
            self._was_disconnected = True
            if self._closing:
                pass
            elif state == KazooState.LOST:
                self.session_generation += 1
                log.warning("ZooKeeper session lost")
            else:
                log.warning("ZooKeeper connection suspended")
        for listener in list(self._state_listeners):
            try:
                listener(state)
            except Exception:
                log.exception("ZooKeeper state listener failed")

    # -- persistent recursive watches --------------------------------------

    def _install_event_hook(self, client: KazooClient) -> None:
        connection = client._connection
        original = connection._read_watch_event
        persistent = self._persistent

        def read_watch_event(buffer, offset):
            watch, _ = Watch.deserialize(buffer, offset)
            original(buffer, offset)
            if not persistent:
                return
            path = client.unchroot(watch.path)
            event = None
            for root, sink in list(persistent.items()):
                if path == root or path.startswith(root + "/"):
                    if event is None:
                        event = WatchedEvent(EVENT_TYPE_MAP.get(watch.type),
                                             client._state, path)
                    sink(("event", event))

        connection._read_watch_event = read_watch_event

    def add_persistent_watch(self, root: str, sink: Callable) -> None:
        """Deliver every create/delete/change below ``root`` to ``sink``.

        ``sink`` receives ``("event", WatchedEvent)``, ``("reply", tag, value,
        exception)`` for reads sent with :meth:`send_ordered`, and
        ``("event", RESYNC)`` after a reconnection. It is called from kazoo's
        connection thread and must only enqueue.
        """
        with self._persistent_lock:
            self._persistent[root] = sink
        self._send_add_watch(root, sink)

    def remove_persistent_watch(self, root: str) -> None:
        with self._persistent_lock:
            self._persistent.pop(root, None)

    def _send_add_watch(self, root: str, sink: Callable) -> None:
        kazoo = self.kazoo
        request = AddWatch(kazoo.chroot + root if kazoo.chroot else root,
                           AddWatch.PERSISTENT_RECURSIVE)
        kazoo._call(request, _SinkResult(sink, ("addwatch", root)))

    def _restore_persistent_watches(self) -> None:
        # Watches live in the server's connection state; after a reconnection
        # they are gone, and whatever happened meanwhile was not reported.
        for root, sink in list(self._persistent.items()):
            try:
                self._send_add_watch(root, sink)
            except Exception:
                log.exception("Cannot restore the watch on %s", root)
            sink(("event", RESYNC))

    def send_ordered(self, sink: Callable, tag, request: str, path: str) -> None:
        """Send a read whose reply reaches ``sink`` in order with watch events.

        ``request`` is ``"get"`` (reply: (data, stat)) or ``"children"``
        (reply: list of names).
        """
        kazoo = self.kazoo
        if kazoo is None:
            raise ZooKeeperError("not connected")
        full = kazoo.chroot + path if kazoo.chroot else path
        if request == "get":
            req = GetData(full, None)
        elif request == "children":
            req = GetChildren(full, None)
        else:  # pragma: no cover - programming error
            raise ValueError(request)
        kazoo._call(req, _SinkResult(sink, tag))

    # -- pipelined reads ---------------------------------------------------

    # Reads per multiRead request: big enough to amortise, small enough that
    # a reply of large records stays well under jute.maxbuffer (1 MiB).
    MULTI_READ_SIZE = 200

    def _pipeline(self, requests: list) -> list:
        """Queue every request at once and wake kazoo's connection thread
        with one write (kazoo's own async calls write a wake-up byte per
        request: a syscall each, which dominated reading 10,000 nodes; its
        loop still takes one byte per request sent). A missing znode gives
        None; other errors are raised."""
        kazoo = self.kazoo
        if kazoo is None or kazoo._connection._write_sock is None:
            raise ZooKeeperError("not connected")
        size = self.MULTI_READ_SIZE
        chunks = [MultiRead(requests[i:i + size])
                  for i in range(0, len(requests), size)]
        batch = _Batch(len(chunks))
        kazoo._queue.extend((chunk, _BatchResult(batch, index))
                            for index, chunk in enumerate(chunks))
        try:
            kazoo._connection._write_sock.sendall(b"\0" * len(chunks))
        except OSError:
            raise ZooKeeperError("connection closed") from None
        if not batch.finished.wait(self.timeout * 3 + len(requests) / 1000):
            raise ZooKeeperError(f"{batch.remaining} of {len(chunks)} multiRead "
                                 "requests unanswered")
        results = []
        for reply in batch.results:
            if isinstance(reply, Exception):
                raise reply
            for value in reply:
                if isinstance(value, NoNodeError):
                    results.append(None)
                elif isinstance(value, Exception):
                    raise value
                else:
                    results.append(value)
        if len(results) != len(requests):
            raise ZooKeeperError(f"multiRead answered {len(results)} of "
                                 f"{len(requests)} reads")
        return results

    def _full(self, path: str) -> str:
        chroot = self.kazoo.chroot
        return chroot + path if chroot else path

    def get_many(self, paths: Iterable[str]) -> list[tuple[bytes, object] | None]:
        """Read many znodes in one pipeline; a missing znode gives None."""
        return self._pipeline([GetData(self._full(p), None) for p in paths])

    def get_children_many(self, paths: Iterable[str]) -> list[list[str] | None]:
        return self._pipeline([GetChildren(self._full(p), None) for p in paths])


def client_from_config(config, read_only: bool = False) -> ZooKeeperClient:
    """A client for a loaded :class:`nodepool.config.model.Config`."""
    return ZooKeeperClient(config.zookeeper_servers,
                           timeout=config.zookeeper_timeout,
                           tls=config.zookeeper_tls,
                           read_only=read_only)
