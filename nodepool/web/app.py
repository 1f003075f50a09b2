"""The launcher's status web server: the CLI's tables and JSON over HTTP,
built by the same views (:mod:`nodepool.status`) from the launcher's
ZooKeeper caches (no ZooKeeper reads), served by a bounded set of threads
(:mod:`nodepool.web.pooled`)."""

from __future__ import annotations

import email.utils
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import Callable
from urllib.parse import parse_qs, urlparse

from nodepool import status
from nodepool.web.pooled import (
    DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_WORKERS, PooledHTTPServer,
)
from nodepool.web.server import wants_json

log = logging.getLogger("nodepool.web.app")

CACHE_SECONDS = 1.0


class StatusWebApp:
    """Serves ``/node-list``, ``/request-list``, ``/label-list``,
    ``/image-list``, ``/dib-image-list``, ``/image-status`` and ``/ready``."""

    def __init__(self, launcher, host: str, port: int, *,
                 workers: int = DEFAULT_WORKERS,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS):
        self.launcher = launcher
        self.host = host
        self.port = port
        self.workers = workers
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self._server: PooledHTTPServer | None = None
        self._cache: dict[tuple, tuple[float, bytes, str]] = {}
        self._lock = threading.Lock()
        self.routes: dict[str, tuple[list, Callable[[dict], list[dict]]]] = {
            "/node-list": (status.NODE_COLUMNS, self.node_rows),
            "/request-list": (status.REQUEST_COLUMNS, self.request_rows),
            "/label-list": (status.LABEL_COLUMNS, self.label_rows),
            "/image-list": (status.IMAGE_COLUMNS, self.image_rows),
            "/dib-image-list": (status.DIB_IMAGE_COLUMNS, self.dib_image_rows),
            "/image-status": (status.IMAGE_STATUS_COLUMNS, self.image_status_rows),
        }

    # -- data, from the caches ------------------------------------------------

    def node_rows(self, query: dict) -> list[dict]:
        nodes = self.launcher.nodes
        return status.node_rows(((n, nodes.is_locked(n.id)) for n in nodes.nodes()),
                                query.get("node_id"))

    def request_rows(self, query: dict) -> list[dict]:
        return status.request_rows(self.launcher.requests.requests())

    def label_rows(self, query: dict) -> list[dict]:
        return status.label_rows(self.launcher.components.pools())

    def image_rows(self, query: dict) -> list[dict]:
        return status.image_rows(self.launcher.images)

    def dib_image_rows(self, query: dict) -> list[dict]:
        return status.dib_image_rows(self.launcher.images)

    def image_status_rows(self, query: dict) -> list[dict]:
        return status.image_status_rows(self.launcher.images)

    # -- serving ---------------------------------------------------------------

    def render(self, path: str, query: dict, as_json: bool) -> bytes | None:
        route = self.routes.get(path)
        if route is None:
            return None
        key = (path, tuple(sorted(query.items())), as_json)
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and now - cached[0] < CACHE_SECONDS:
                return cached[1]
        columns, rows_of = route
        rows = rows_of(query)
        if as_json:
            body = status.render_json(rows)
        else:
            fields = query.get("fields")
            body = status.render_table(columns, rows,
                                       fields.split(",") if fields else None)
        data = (body + "\n").encode("utf-8")
        with self._lock:
            # Drop expired entries, so arbitrary query strings cannot grow it.
            for old in [k for k, v in self._cache.items()
                        if now - v[0] >= CACHE_SECONDS]:
                del self._cache[old]
            self._cache[key] = (now, data, email.utils.formatdate(usegmt=True))
        return data

    def last_modified(self, path: str, query: dict, as_json: bool) -> str:
        key = (path, tuple(sorted(query.items())), as_json)
        with self._lock:
            cached = self._cache.get(key)
        return cached[2] if cached else email.utils.formatdate(usegmt=True)

    @property
    def server(self) -> PooledHTTPServer | None:
        return self._server

    def bind(self) -> None:
        """Take the port (raises :class:`~nodepool.web.pooled.ListenError`,
        one line); done early so a port in use stops start-up first."""
        if self._server is not None:
            return
        app = self

        class Handler(_Handler):
            webapp = app

        self._server = PooledHTTPServer(
            (self.host, self.port), Handler, workers=self.workers,
            idle_timeout=self.idle_timeout, max_connections=self.max_connections,
            name="webapp")
        self.port = self._server.server_address[1]

    def start(self) -> None:
        self.bind()
        self._server.serve()
        log.info("Status web server on http://%s:%d/", self.host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None


class _Handler(BaseHTTPRequestHandler):
    webapp: StatusWebApp
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        log.debug("%s %s", self.address_string(), fmt % args)

    def _reply(self, code: int, body: bytes, content_type: str,
               last_modified: str | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Cache-Control", f"public, max-age={int(CACHE_SECONDS)}")
        if last_modified:
            self.send_header("Last-Modified", last_modified)
            expires = email.utils.parsedate_to_datetime(last_modified).timestamp() \
                + CACHE_SECONDS
            self.send_header("Expires", email.utils.formatdate(expires, usegmt=True))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802 (http.server's naming)
        url = urlparse(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        path = url.path.rstrip("/") or "/"
        as_json = wants_json(self.headers.get("Accept"))
        if path.endswith(".json"):
            path, as_json = path[:-len(".json")], True
        if path == "/ready":
            ready = self.webapp.launcher.ready.is_set()
            self._reply(200 if ready else 503, b"OK\n" if ready else b"Not ready\n",
                        "text/plain; charset=UTF-8")
            return
        try:
            body = self.webapp.render(path, query, as_json)
        except Exception:
            log.exception("Rendering %s failed", self.path)
            self._reply(500, b"Internal error\n", "text/plain; charset=UTF-8")
            return
        if body is None:
            self._reply(404, b"Not found\n", "text/plain; charset=UTF-8")
            return
        modified = self.webapp.last_modified(path, query, as_json)
        since = self.headers.get("If-Modified-Since")
        if since:
            try:
                if email.utils.parsedate_to_datetime(since) >= \
                        email.utils.parsedate_to_datetime(modified):
                    self._reply(304, b"", "text/plain; charset=UTF-8", modified)
                    return
            except (TypeError, ValueError):
                pass
        self._reply(200, body, "application/json" if as_json else
                    "text/plain; charset=UTF-8", modified)
