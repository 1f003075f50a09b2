"""What the API simulators share: a server on a loopback port started on
its own thread, a quiet handler that reads JSON bodies, and the command line
that runs one standalone."""

from __future__ import annotations

import argparse
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler
from typing import Any, Callable

from nodepool.web.server import QuietHTTPServer, serve


class QuietJSONHandler(BaseHTTPRequestHandler):
    """Every method goes to ``_dispatch()``, which reads ``self.command``."""

    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # keep test output quiet
        pass

    def _dispatch(self) -> None:
        """Answer one request; each simulator routes its own."""
        self.send_json(501, {"message": f"{self.command} is not simulated"})

    def do_GET(self):
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def read_json(self) -> Any:
        """The request's JSON body (None when it has none); ValueError when
        it is not JSON."""
        length = int(self.headers.get("Content-Length") or 0)
        if not length:
            return None
        return json.loads(self.rfile.read(length))

    def send_json(self, status: int, body: Any = None,
                  headers: dict[str, str] | None = None) -> None:
        """One answer: ``body`` as JSON (none if None) with ``headers``."""
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)


class Knobbed:
    """What a simulator's tests steer it with: ``knobs`` (a dataclass) set
    by :meth:`set`, and the API calls counted by name (``state.calls``),
    both under ``lock``."""

    knobs: Any
    state: Any
    lock: Any

    def set(self, **knobs) -> None:
        with self.lock:
            for key, value in knobs.items():
                if not hasattr(self.knobs, key):
                    raise AttributeError(f"no knob {key}")
                setattr(self.knobs, key, value)

    def calls(self, reset: bool = False) -> dict[str, int]:
        """API calls made so far, by name."""
        with self.lock:
            calls = dict(self.state.calls)
            if reset:
                self.state.calls.clear()
            return calls

    def count(self, name: str) -> None:
        self.state.calls[name] = self.state.calls.get(name, 0) + 1


class LoopbackService:
    """A simulator's HTTP server: ``start`` binds (port 0: a free one) and
    serves on a daemon thread; ``port`` then tells the port."""

    host: str
    port: int
    _server: QuietHTTPServer | None = None

    def _serve(self, handler: type[BaseHTTPRequestHandler], name: str,
               wrap: ssl.SSLContext | None = None) -> None:
        self._server = serve(self.host, self.port, handler, name, wrap=wrap)
        self.port = self._server.server_address[1]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def run_simulator(module: str, description: str | None, port: int, delay_flag: str,
                  start: Callable[[argparse.Namespace], str],
                  add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
                  ) -> int:
    """``python -m <module>``: parse ``--port``, the simulator's delay flag
    (seconds a machine takes to come up) and its own options, start it with
    ``start(args)``, print what that returns (how to point a client at it),
    and serve until interrupted."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}",
                                     description=description or "")
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument(delay_flag, type=float, default=1.0,
                        help="seconds a new machine takes to be running")
    if add_arguments is not None:
        add_arguments(parser)
    print(start(parser.parse_args()), flush=True)
    threading.Event().wait()
    return 0
