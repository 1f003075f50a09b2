"""HTTP plumbing of nodepool's web servers: a quiet thread-per-connection
server started on its own thread (the OpenStack simulator's; the launcher's
status server has a bounded pool, :mod:`nodepool.web.pooled`), and content
negotiation."""

from __future__ import annotations

import logging
import ssl  # noqa: F401  (the type of serve's wrap)
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger("nodepool.web.server")


def log_request_error(logger: logging.Logger, client_address) -> None:
    """Log the exception being handled while answering a client: a client
    that hung up or stalled is routine (DEBUG), anything else a traceback."""
    error = sys.exc_info()[1]
    if isinstance(error, (ConnectionError, TimeoutError)):
        logger.debug("Client %s went away: %s", client_address, error)
        return
    logger.exception("Error answering %s", client_address)


class QuietHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that treats a client hanging up mid-request
    (a killed CLI, a restarted daemon) as routine, not a stderr traceback."""

    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        log_request_error(log, client_address)


def serve(host: str, port: int, handler: type[BaseHTTPRequestHandler],
          name: str, wrap: "ssl.SSLContext | None" = None) -> QuietHTTPServer:
    """Serve on a daemon thread called ``name`` (over TLS with ``wrap``);
    with port 0 the server's ``server_address`` tells the port chosen."""
    server = QuietHTTPServer((host, port), handler)
    if wrap is not None:
        server.socket = wrap.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True, name=name).start()
    return server


def wants_json(accept: str | None) -> bool:
    """Is application/json the best of text/html, text/plain,
    application/json (preferred in that order on ties)?"""
    if not accept:
        return False
    offered = ["text/html", "text/plain", "application/json"]
    best, best_q = None, -1.0
    for part in accept.split(","):
        fields = [f.strip() for f in part.split(";")]
        media = fields[0].lower()
        q = 1.0
        for param in fields[1:]:
            if param.startswith("q="):
                try:
                    q = float(param[2:])
                except ValueError:
                    q = 0.0
        for candidate in offered:
            matches = media in (candidate, "*/*") or (
                media.endswith("/*") and candidate.startswith(media[:-1]))
            if matches and (q > best_q or (q == best_q and best is not None and
                            offered.index(candidate) < offered.index(best))):
                if q > 0:
                    best, best_q = candidate, q
    return best == "application/json"
