"""An HTTP/1.1 server with a bounded number of threads, for the launcher's
status pages.

One dispatcher thread owns the listening socket and every connection that
waits for its next request: they sit in a selector, costing no thread.
When a request's first bytes arrive, the connection is handed to one of a
fixed number of worker threads, which answers that request (and any already
buffered behind it) and hands the connection back. So:

* threads never grow with connections (the process had one per connection
  before: 300 idle keep-alive connections meant 300 more threads);
* an idle connection is closed by the server after ``idle_timeout``;
* at ``max_connections`` a new connection evicts the one idle longest, so
  a fresh client is served at once rather than waiting for a timeout;
* a client that stalls in the middle of a request holds a worker for at
  most ``idle_timeout`` per read, and only that worker.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import selectors
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

from nodepool.web.server import log_request_error

log = logging.getLogger("nodepool.web.pooled")

DEFAULT_WORKERS = 8
DEFAULT_IDLE_TIMEOUT = 30.0
DEFAULT_MAX_CONNECTIONS = 256


class ListenError(Exception):
    """The server's address cannot be bound; the message is one line."""


def listen_error(host: str, port: int, error: OSError) -> ListenError:
    reason = "address in use" if error.errno == errno.EADDRINUSE else \
        (os.strerror(error.errno) if error.errno else str(error)).lower()
    return ListenError(f"web server cannot listen on {host}:{port}: {reason}")


def check_can_listen(host: str, port: int) -> None:
    """Raise ListenError if ``host:port`` cannot be bound now (checked on
    the terminal before a daemon detaches; the real bind comes later)."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as error:
        raise listen_error(host, port, error) from None


class _Connection:
    """One client connection and the handler object that reads it: the
    handler (and its buffered reader) lives as long as the connection, so
    bytes read ahead for a pipelined request are not lost between turns."""

    __slots__ = ("sock", "handler", "idle_since", "address", "closed")

    def __init__(self, sock: socket.socket, address, handler: BaseHTTPRequestHandler):
        self.sock = sock
        self.address = address
        self.handler = handler
        self.idle_since = time.monotonic()
        self.closed = False


class PooledHTTPServer(HTTPServer):
    """``serve()`` starts the threads; ``shutdown()`` stops them and closes
    every connection (safe to call whether or not it was started)."""

    request_queue_size = 128
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 *, workers: int = DEFAULT_WORKERS,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS, name: str = "web"):
        if workers < 1 or max_connections < 1 or not idle_timeout > 0:
            raise ValueError("workers, max_connections and idle_timeout must be "
                             "positive")
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        try:
            super().__init__(address, handler)
        except OSError as error:
            raise listen_error(address[0], address[1], error) from None
        self.workers = workers
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.name = name
        self.socket.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._work: queue.Queue[_Connection | None] = queue.Queue()
        self._returned: queue.Queue[_Connection] = queue.Queue()
        self._idle: dict[int, _Connection] = {}   # fd -> waiting connection
        self._open = 0                           # idle + being served
        self._open_lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- counters, for tests and the bench -----------------------------------

    @property
    def open_connections(self) -> int:
        with self._open_lock:
            return self._open

    @property
    def threads(self) -> list[threading.Thread]:
        return list(self._threads)

    # -- life ----------------------------------------------------------------

    def serve(self) -> None:
        """Start the dispatcher and the workers (daemon threads)."""
        self._threads.append(threading.Thread(
            target=self._dispatch, daemon=True, name=f"{self.name}-dispatch"))
        for index in range(self.workers):
            self._threads.append(threading.Thread(
                target=self._work_loop, daemon=True, name=f"{self.name}-worker-{index}"))
        for thread in self._threads:
            thread.start()

    def shutdown(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._wake()
        for _ in range(self.workers):
            self._work.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if not self._threads:
            self._selector.close()  # (the dispatcher closes it otherwise)
        self._close_all()
        self.server_close()
        for sock in (self._wake_r, self._wake_w):
            sock.close()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except (BlockingIOError, OSError):
            pass  # a wake-up is already pending, or we are closing

    # -- the dispatcher ------------------------------------------------------

    def _dispatch(self) -> None:
        selector = self._selector
        selector.register(self.socket, selectors.EVENT_READ, "listen")
        selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while not self._stopping.is_set():
                for key, _ in selector.select(self._next_expiry()):
                    if key.data == "listen":
                        self._accept()
                    elif key.data == "wake":
                        self._drain_wake()
                    else:
                        self._to_worker(key.data)
                self._take_back()
                self._expire()
        except Exception:
            log.exception("Web server dispatcher failed")
        finally:
            selector.close()

    def _next_expiry(self) -> float:
        if not self._idle:
            return 1.0
        oldest = min(c.idle_since for c in self._idle.values())
        return max(0.0, min(1.0, oldest + self.idle_timeout - time.monotonic()))

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(512):
                pass
        except (BlockingIOError, OSError):
            pass

    def _accept(self) -> None:
        while True:
            try:
                sock, address = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                # Out of descriptors and the like: back off until next select.
                log.warning("Web server cannot accept: %s", error)
                return
            with self._open_lock:
                full = self._open >= self.max_connections
            if full and not self._evict_oldest():
                log.debug("Refusing %s: %d connections open", address,
                          self.max_connections)
                _close(sock)
                continue
            try:
                connection = _Connection(sock, address, self._new_handler(sock, address))
            except Exception:
                log.debug("Cannot set up connection from %s", address, exc_info=True)
                _close(sock)
                continue
            with self._open_lock:
                self._open += 1
            self._park(connection)

    def _new_handler(self, sock: socket.socket, address) -> BaseHTTPRequestHandler:
        # The handler's __init__ would serve the whole connection on this
        # thread; set it up here and let workers run one request at a time.
        handler = self.RequestHandlerClass.__new__(self.RequestHandlerClass)
        handler.request, handler.client_address, handler.server = sock, address, self
        handler.timeout = self.idle_timeout
        handler.setup()
        return handler

    def _park(self, connection: _Connection) -> None:
        connection.idle_since = time.monotonic()
        try:
            self._selector.register(connection.sock, selectors.EVENT_READ, connection)
        except (ValueError, OSError):
            self._close(connection)
            return
        self._idle[connection.sock.fileno()] = connection

    def _unpark(self, connection: _Connection) -> None:
        self._idle.pop(connection.sock.fileno(), None)
        try:
            self._selector.unregister(connection.sock)
        except (KeyError, ValueError, OSError):
            pass

    def _to_worker(self, connection: _Connection) -> None:
        if connection.closed:
            return  # evicted earlier in this same round of events
        self._unpark(connection)
        self._work.put(connection)

    def _take_back(self) -> None:
        while True:
            try:
                connection = self._returned.get_nowait()
            except queue.Empty:
                return
            if self._stopping.is_set():
                self._close(connection)
            else:
                self._park(connection)

    def _expire(self) -> None:
        limit = time.monotonic() - self.idle_timeout
        for connection in [c for c in self._idle.values() if c.idle_since <= limit]:
            log.debug("Closing %s: idle for %ss", connection.address, self.idle_timeout)
            self._unpark(connection)
            self._close(connection)

    def _evict_oldest(self) -> bool:
        if not self._idle:
            return False
        oldest = min(self._idle.values(), key=lambda c: c.idle_since)
        log.debug("Closing %s, idle longest, to make room", oldest.address)
        self._unpark(oldest)
        self._close(oldest)
        return True

    # -- workers -------------------------------------------------------------

    def _work_loop(self) -> None:
        while True:
            connection = self._work.get()
            if connection is None:
                return
            try:
                keep = self._serve_turn(connection)
            except Exception:
                self.handle_error(connection.sock, connection.address)
                keep = False
            if keep and not self._stopping.is_set():
                self._returned.put(connection)
                self._wake()
            else:
                self._close(connection)

    def _serve_turn(self, connection: _Connection) -> bool:
        """Answer the request that woke the connection, then any already
        buffered; True if the connection stays open for another."""
        handler = connection.handler
        sock = connection.sock
        while True:
            sock.settimeout(self.idle_timeout)
            handler.close_connection = True
            handler.handle_one_request()
            if handler.close_connection:
                return False
            if not _has_buffered_input(handler.rfile, sock):
                return True

    def handle_error(self, request, client_address) -> None:
        log_request_error(log, client_address)

    # -- closing -------------------------------------------------------------

    def _close(self, connection: _Connection) -> None:
        with self._open_lock:
            if connection.closed:
                return
            connection.closed = True
            self._open -= 1
        try:
            connection.handler.finish()
        except Exception:
            pass
        _close(connection.sock)

    def _close_all(self) -> None:
        for connection in list(self._idle.values()):
            self._close(connection)
        self._idle.clear()
        for waiting in (self._work, self._returned):
            while True:
                try:
                    connection = waiting.get_nowait()
                except queue.Empty:
                    break
                if connection is not None:
                    self._close(connection)


def _has_buffered_input(rfile, sock: socket.socket) -> bool:
    """Are the next request's bytes already at hand (pipelined)? Looked at
    without blocking: a socket with nothing to read makes peek return b''."""
    sock.setblocking(False)
    try:
        return bool(rfile.peek(1))
    except (BlockingIOError, OSError, ValueError):
        return False
    finally:
        try:
            sock.setblocking(True)
        except OSError:
            pass


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
