"""The simulator's process: moto's server application with the gaps filled
(:mod:`moto_extras`), behind a thin WSGI layer that counts every API call by
service and action, answers the test's control requests under ``/_sim/``,
and lets one request at a time into moto (its backends are plain dicts that
concurrent launches would change under each other's iteration; AWS itself
has no such limit).
"""

from __future__ import annotations

import io
import json
import threading
from collections import Counter
from urllib.parse import parse_qs

from nodepool.testing.aws_sim import moto_extras

CONTROL = "/_sim/"


class CountingApp:
    def __init__(self, app):
        self.app = app
        self.calls: Counter = Counter()
        self.lock = threading.Lock()
        self.serial = threading.Lock()

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path.startswith(CONTROL):
            return self._control(path[len(CONTROL):], environ, start_response)
        name = self._call_name(environ)
        if name:
            with self.lock:
                self.calls[name] += 1
        with self.serial:
            return list(self.app(environ, start_response))

    @staticmethod
    def _call_name(environ) -> str | None:
        """``service.Action`` of a request (the path for S3's REST calls)."""
        if environ.get("PATH_INFO", "").startswith("/moto-api"):
            return None
        target = environ.get("HTTP_X_AMZ_TARGET")
        if target:
            return "service-quotas." + target.split(".")[-1]
        content_type = environ.get("CONTENT_TYPE", "")
        if content_type.startswith("application/x-www-form-urlencoded"):
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length) if length else b""
            environ["wsgi.input"] = io.BytesIO(body)
            action = parse_qs(body.decode("utf-8", "replace")).get("Action")
            if action:
                return "ec2." + action[0]
        return "s3." + environ.get("REQUEST_METHOD", "GET")

    def _control(self, what: str, environ, start_response):
        state = moto_extras.STATE
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = json.loads(environ["wsgi.input"].read(length) or b"{}") if length else {}
        if what == "calls":
            with self.lock:
                reply = dict(self.calls)
                if body.get("reset"):
                    self.calls.clear()
        elif what == "set":
            with state.lock:
                for key, value in body.items():
                    if key == "quotas":
                        state.quotas.update(value)
                    elif hasattr(state, key) and not key.startswith("_"):
                        setattr(state, key, value)
            reply = {"ok": True}
        elif what == "reset":
            state.reset()
            with self.lock:
                self.calls.clear()
            reply = {"ok": True}
        else:
            start_response("404 Not Found", [("Content-Type", "application/json")])
            return [b'{"error": "unknown control"}']
        data = json.dumps(reply).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(data)))])
        return [data]


def serve(host: str, port: int, ready) -> None:
    """Run until killed; ``ready(port)`` is called once listening."""
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication, MotoRequestHandler, create_backend_app,
    )
    from werkzeug.serving import make_server
    moto_extras.install()
    app = CountingApp(DomainDispatcherApplication(create_backend_app))
    server = make_server(host, port, app, threaded=True,
                         request_handler=MotoRequestHandler)
    ready(server.server_port)
    server.serve_forever()
