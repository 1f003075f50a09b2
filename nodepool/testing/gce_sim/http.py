"""The simulator's HTTP handler: the OAuth token exchange, bearer-token
checks, and the Compute v1 paths the gce driver uses."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from nodepool.testing.loopback import QuietJSONHandler

if TYPE_CHECKING:  # pragma: no cover
    from nodepool.testing.gce_sim import GceSimulator

PREFIX = "/compute/v1/projects/"


class ApiError(Exception):
    """An error answer: GCE's JSON error body with its ``reason``."""

    def __init__(self, code: int, reason: str, message: str):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message, "errors": [
            {"message": self.message, "domain": "global", "reason": self.reason}]}}


class Handler(QuietJSONHandler):
    sim: "GceSimulator"
    wbufsize = 1 << 16
    disable_nagle_algorithm = True

    def _dispatch(self) -> None:
        sim = self.sim
        split = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        try:
            if split.path == "/token" and self.command == "POST":
                self.send_json(200, self._token())
                return
            body = None
            if self.command == "POST":
                try:
                    body = self.read_json()
                except ValueError:
                    raise ApiError(400, "parseError", "Parse Error") from None
            auth = self.headers.get("Authorization") or ""
            if auth.removeprefix("Bearer ") not in sim.tokens:
                raise ApiError(401, "authError", "Request had invalid authentication "
                               "credentials.")
            if not split.path.startswith(PREFIX):
                raise ApiError(404, "notFound", f"no such path {split.path}")
            parts = split.path[len(PREFIX):].split("/")
            with sim.lock:
                sim.tick()
                status, answer = self._route(parts, body or {}, query)
        except ApiError as exc:
            self.send_json(exc.code, exc.body())
            return
        self.send_json(status, answer)

    def _token(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(length).decode())
        if not form.get("assertion"):
            raise ApiError(400, "invalid_grant", "no assertion")
        token = f"sim-{secrets.token_hex(12)}"
        with self.sim.lock:
            self.sim.tokens.add(token)
        return {"access_token": token, "expires_in": 3600, "token_type": "Bearer"}

    # -- routes ---------------------------------------------------------------------

    def _route(self, parts: list[str], body: dict, query: dict) -> tuple[int, Any]:
        sim = self.sim
        method = self.command
        project, rest = parts[0], parts[1:]
        if rest[:2] == ["global", "images"]:
            sim.count("images.get" if rest[2:3] != ["family"] else "images.getFromFamily")
            if len(rest) == 4 and rest[2] == "family" and method == "GET":
                return 200, sim.image_from_family(project, rest[3])
            if len(rest) == 3 and method == "GET":
                return 200, sim.image(project, rest[2])
            raise ApiError(404, "notFound", "no such image path")
        if project != sim.project:
            raise ApiError(403, "forbidden", f"Required 'compute' permission for "
                           f"'projects/{project}'")
        if len(rest) == 2 and rest[0] == "regions" and method == "GET":
            sim.count("regions.get")
            return 200, sim.region(rest[1])
        if len(rest) < 3 or rest[0] != "zones":
            raise ApiError(404, "notFound", f"no such path {'/'.join(parts)}")
        zone, kind, tail = rest[1], rest[2], rest[3:]
        if zone != "us-central1-a":
            raise ApiError(404, "notFound", f"The resource 'projects/{project}/zones/"
                           f"{zone}' was not found")
        if kind == "machineTypes" and method == "GET":
            if tail:
                sim.count("machineTypes.get")
                return 200, sim.machine_type(tail[0], zone)
            sim.count("machineTypes.list")
            from nodepool.testing.gce_sim import MACHINE_TYPES
            return 200, {"kind": "compute#machineTypeList",
                         "items": [sim.machine_type(n, zone) for n in MACHINE_TYPES]}
        if kind == "operations":
            if len(tail) == 1 and method == "GET":
                sim.count("zoneOperations.get")
                return 200, self._operation(tail[0])
            if len(tail) == 2 and tail[1] == "wait" and method == "POST":
                # Real GCE waits up to two minutes; answering at once is allowed.
                sim.count("zoneOperations.wait")
                return 200, self._operation(tail[0])
        if kind == "instances":
            return self._instances(zone, tail, method, body, query)
        raise ApiError(404, "notFound", f"no such path {'/'.join(parts)}")

    def _operation(self, name: str) -> dict:
        found = self.sim.state.operations.get(name)
        if found is None:
            raise ApiError(404, "notFound", f"The resource 'operations/{name}' was "
                           "not found")
        return dict(found)

    def _instances(self, zone, tail, method, body, query) -> tuple[int, Any]:
        sim = self.sim
        if not tail and method == "POST":
            sim.count("instances.insert")
            return 200, sim.insert(zone, body)
        if not tail and method == "GET":
            sim.count("instances.list")
            return 200, self._page(list(sim.state.instances.values()), query)
        if len(tail) == 1 and method == "GET":
            sim.count("instances.get")
            return 200, sim.instance(tail[0], zone)
        if len(tail) == 1 and method == "DELETE":
            sim.count("instances.delete")
            return 200, sim.delete(zone, tail[0])
        if len(tail) == 2 and tail[1] == "serialPort" and method == "GET":
            sim.count("instances.getSerialPortOutput")
            sim.instance(tail[0], zone)
            return 200, {"kind": "compute#serialPortOutput",
                         "contents": f"{tail[0]} login: \n", "start": "0", "next": "17"}
        raise ApiError(404, "notFound", "no such instance path")

    @staticmethod
    def _page(items: list[dict], query: dict) -> dict:
        size = max(1, min(int(query.get("maxResults") or 500), 500))
        start = int(query.get("pageToken") or 0)
        page = {"kind": "compute#instanceList", "items": items[start:start + size]}
        if start + size < len(items):
            page["nextPageToken"] = str(start + size)
        return page
