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
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

from kazoo.exceptions import NoNodeError
from kazoo.protocol.serialization import GetChildren, GetData
from kazoo.protocol.states import KazooState, WatchedEvent

from nodepool.zk.kazoo_ext import (AddWatch, MultiRead, NodepoolKazooClient,
                                   PollingHandler, add_watch_request)
from nodepool.zk.eventual import EventualDeletes
from nodepool.zk.records import CorruptRecord

__all__ = ["AddWatch", "MultiRead", "PollingHandler", "RESYNC", "ZooKeeperClient",
           "ZooKeeperError", "ZooKeeperServer", "ZooKeeperTLS", "ZooKeeperUnreachable",
           "client_from_config", "connection_string"]

log = logging.getLogger("nodepool.zk.client")

R = TypeVar("R")

DEFAULT_PORT = 2281
DEFAULT_TIMEOUT = 10.0


class ZooKeeperError(Exception):
    """A ZooKeeper connection could not be made or used."""


class ZooKeeperUnreachable(ZooKeeperError):
    """``connect(timeout=...)`` found no server within its timeout."""


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
    """The replies of a pipelined batch, handed to the reader in order as
    they arrive (it can work on the first while the rest are in flight)."""

    PENDING = object()

    def __init__(self, size: int):
        self.results: list = [self.PENDING] * size
        self.remaining = size
        self.arrived = threading.Condition()

    def done(self, index: int, value) -> None:
        with self.arrived:
            self.results[index] = value
            self.remaining -= 1
            self.arrived.notify()

    def wait_for(self, index: int, deadline: float):
        """Reply ``index``; raises ZooKeeperError when it is not in by the
        (monotonic) deadline."""
        with self.arrived:
            while self.results[index] is self.PENDING:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ZooKeeperError(f"{self.remaining} of {len(self.results)} "
                                         "multiRead requests unanswered")
                self.arrived.wait(left)
            value = self.results[index]
            self.results[index] = None  # the reader keeps what it needs
            return value


class ConnectInterrupted(ZooKeeperError):
    """The caller asked to stop while the client was still connecting."""


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
        self.kazoo: NodepoolKazooClient | None = None
        self._state_listeners: list[Callable[[str], None]] = []
        self._connected = threading.Event()
        self._persistent_lock = threading.Lock()
        self._was_disconnected = False
        self.closing = False
        self._abort_on_disconnect = False
        self._abort_thread: threading.Thread | None = None
        # Counts session losses; callers compare it to notice re-registration.
        self.session_generation = 0
        self.eventual = EventualDeletes(self)

    # -- lifecycle ---------------------------------------------------------

    def _make_kazoo(self) -> NodepoolKazooClient:
        kwargs = dict(hosts=self.hosts, timeout=self.timeout,
                      read_only=self.read_only, handler=PollingHandler())
        if self.tls:
            self.tls.check_readable()
            kwargs.update(use_ssl=True, certfile=self.tls.cert,
                          keyfile=self.tls.key, ca=self.tls.ca,
                          verify_certs=True)
        client = NodepoolKazooClient(**kwargs)
        client.add_listener(self._on_state)
        return client

    def connect(self, timeout: float | None = None,
                stop: threading.Event | None = None) -> None:
        """Connect, retrying every second until ``timeout`` (None: forever)
        or until ``stop`` is set (then ConnectInterrupted is raised)."""
        if self.kazoo is None:
            self.kazoo = self._make_kazoo()
        deadline = None if timeout is None else time.monotonic() + timeout
        last_warning = 0.0
        while True:
            if stop is not None and stop.is_set():
                self._drop_kazoo()
                raise ConnectInterrupted("stopped while connecting to ZooKeeper")
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
                    self._drop_kazoo()
                    raise ZooKeeperUnreachable(
                        f"cannot connect to ZooKeeper at {self.hosts}: "
                        f"{exc or type(exc).__name__}") from None
                now = time.monotonic()
                if now - last_warning >= 10:
                    log.warning("Still trying to connect to ZooKeeper at %s: %s",
                                self.hosts, exc or type(exc).__name__)
                    last_warning = now
                if stop is not None:
                    stop.wait(0.2)
                else:
                    time.sleep(0.2)
        self._connected.set()
        if self.kazoo.chroot and not self.read_only:
            self._ensure_chroot()
        log.debug("Connected to ZooKeeper at %s", self.hosts)

    def _drop_kazoo(self) -> None:
        if self.kazoo is not None:
            try:
                self.kazoo.close()
            except Exception:
                pass
            self.kazoo = None

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

    def abort_when_disconnected(self) -> None:
        """For a process that is stopping: from now on, whenever the server
        is out of reach, close the session at once, so that every call
        waiting for a reconnection fails instead of waiting for ever (our
        ephemeral znodes go when the server expires the session)."""
        self._abort_on_disconnect = True
        if not self.connected:
            self._abort()

    def _abort(self) -> None:
        kazoo = self.kazoo
        if kazoo is None or self.closing:
            return
        self.closing = True
        log.warning("ZooKeeper is out of reach while stopping; closing the "
                    "session without waiting for it")
        # Not from kazoo's connection thread (a state listener may call us).
        self._abort_thread = threading.Thread(
            target=self._stop_kazoo, args=(kazoo,), daemon=True, name="zk-abort")
        self._abort_thread.start()

    @staticmethod
    def _stop_kazoo(kazoo) -> None:
        try:
            kazoo.stop()
        except Exception as exc:
            log.debug("Stopping the ZooKeeper connection: %s", exc)

    def disconnect(self) -> None:
        if self.kazoo is None:
            return
        self.closing = True
        aborting = self._abort_thread
        if aborting is not None:
            aborting.join(timeout=15)
        try:
            if self.kazoo.client_state != "CLOSED":
                self.kazoo.stop()
            self.kazoo.close()
        except Exception as exc:
            log.debug("Closing the ZooKeeper connection: %s", exc)
        finally:
            self.kazoo = None
            self._connected.clear()
            self.eventual.forget_all()
            self.closing = False

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

    @property
    def queued_requests(self) -> int:
        kazoo = self.kazoo
        return kazoo.queued_requests if kazoo is not None else 0

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
            self.eventual.flush()
        else:
            self._connected.clear()
            self._was_disconnected = True
            if self.closing:
                pass
            elif state == KazooState.LOST:
                self.session_generation += 1
                self.eventual.forget_all()
                log.warning("ZooKeeper session lost")
            else:
                log.warning("ZooKeeper connection suspended")
            if self._abort_on_disconnect:
                self._abort()
        for listener in list(self._state_listeners):
            try:
                listener(state)
            except Exception:
                log.exception("ZooKeeper state listener failed")

    # -- deletes that survive connection losses -----------------------------

    def delete_eventually(self, path: str, prefix: str | None = None
                          ) -> threading.Event:
        """Delete ``path`` (or, with ``prefix``, the children of ``path`` whose
        names start with it) without waiting, sent again after connection
        losses until done or until the session ends. The returned event is set
        then. For ephemeral znodes of this session: lock contenders."""
        return self.eventual.add(path, prefix)

    # -- persistent recursive watches --------------------------------------

    def add_persistent_watch(self, root: str, sink: Callable) -> None:
        """Deliver every create/delete/change below ``root`` to ``sink``.

        ``sink`` receives ``("event", WatchedEvent)``, ``("reply", tag, value,
        exception)`` for reads sent with :meth:`send_ordered`, and
        ``("event", RESYNC)`` after a reconnection. It is called from kazoo's
        connection thread and must only enqueue.
        """
        with self._persistent_lock:
            self.kazoo.persistent_sinks[root] = sink
        self._send_add_watch(root, sink)

    def remove_persistent_watch(self, root: str) -> None:
        kazoo = self.kazoo
        if kazoo is None:
            return
        with self._persistent_lock:
            kazoo.persistent_sinks.pop(root, None)

    def _send_add_watch(self, root: str, sink: Callable) -> None:
        kazoo = self.kazoo
        request = add_watch_request(kazoo.chroot + root if kazoo.chroot else root)
        kazoo.submit(request, _SinkResult(sink, ("addwatch", root)))

    def _restore_persistent_watches(self) -> None:
        # Watches live in the server's connection state; after a reconnection
        # they are gone, and whatever happened meanwhile was not reported.
        for root, sink in list(self.kazoo.persistent_sinks.items()):
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
        kazoo.submit(req, _SinkResult(sink, tag))

    # -- pipelined reads ---------------------------------------------------

    # Reads per multiRead request: big enough to amortise, small enough that
    # a reply of large records stays well under jute.maxbuffer (1 MiB).
    MULTI_READ_SIZE = 200

    def iter_many(self, requests: list) -> Iterator:
        """Send the reads as multiRead requests, all queued at once, and yield
        each read's result in order as its reply arrives. A missing znode
        gives None; other errors are raised."""
        kazoo = self.kazoo
        if kazoo is None or not kazoo.connection_open:
            raise ZooKeeperError("not connected")
        size = self.MULTI_READ_SIZE
        chunks = [MultiRead(requests[i:i + size])
                  for i in range(0, len(requests), size)]
        batch = _Batch(len(chunks))
        try:
            kazoo.submit_many((chunk, _BatchResult(batch, index))
                              for index, chunk in enumerate(chunks))
        except OSError:
            raise ZooKeeperError("connection closed") from None
        deadline = time.monotonic() + self.timeout * 3 + len(requests) / 1000
        for index, chunk in enumerate(chunks):
            reply = batch.wait_for(index, deadline)
            if isinstance(reply, Exception):
                raise reply
            if len(reply) != len(chunk.operations):
                raise ZooKeeperError(f"multiRead answered {len(reply)} of "
                                     f"{len(chunk.operations)} reads")
            for value in reply:
                if isinstance(value, NoNodeError):
                    yield None
                elif isinstance(value, Exception):
                    raise value
                else:
                    yield value

    def _pipeline(self, requests: list) -> list:
        return list(self.iter_many(requests))

    def full_path(self, path: str) -> str:
        """``path`` with the chroot, as raw requests need it."""
        chroot = self.kazoo.chroot
        return chroot + path if chroot else path

    def read_record(self, path: str, decode: Callable[[bytes, int], R | None],
                    what: str) -> R | None:
        """One fresh read of a record: None when its znode is missing or
        empty, or when ``decode`` finds it corrupt (logged, never raised)."""
        try:
            data, stat = self.kazoo.get(path)
        except NoNodeError:
            return None
        try:
            return decode(data, stat.version)
        except CorruptRecord as exc:
            log.warning("Corrupt %s %s: %s", what, path, exc)
            return None

    def get_many(self, paths: Iterable[str]) -> list[tuple[bytes, object] | None]:
        """Read many znodes in one pipeline; a missing znode gives None."""
        return self._pipeline([GetData(self.full_path(p), None) for p in paths])

    def get_children_many(self, paths: Iterable[str]) -> list[list[str] | None]:
        return self._pipeline([GetChildren(self.full_path(p), None) for p in paths])


def client_from_config(config, read_only: bool = False) -> ZooKeeperClient:
    """A client for a loaded :class:`nodepool.config.model.Config`."""
    return ZooKeeperClient(config.zookeeper_servers,
                           timeout=config.zookeeper_timeout,
                           tls=config.zookeeper_tls,
                           read_only=read_only)
