"""The simulator's HTTP handler: plumbing, fault injection and the route
table; the routes themselves are in ``compute.py`` and ``storage.py``."""

from __future__ import annotations

import re
import time
import uuid
from typing import TYPE_CHECKING, Any, Callable

from nodepool.testing.loopback import QuietJSONHandler
from nodepool.testing.openstack_sim.compute import ComputeRoutes
from nodepool.testing.openstack_sim.model import COMPUTE_MICROVERSION
from nodepool.testing.openstack_sim.storage import StorageRoutes

if TYPE_CHECKING:  # pragma: no cover
    from nodepool.testing.openstack_sim import OpenStackSimulator


class Handler(QuietJSONHandler, ComputeRoutes, StorageRoutes):
    sim: OpenStackSimulator

    # -- plumbing ----------------------------------------------------------------

    def _body(self) -> dict:
        try:
            return self.read_json() or {}
        except ValueError:
            return {}

    def _send(self, status: int, body: Any = None, headers: dict | None = None) -> None:
        extra = {"X-Openstack-Request-Id": f"req-{uuid.uuid4()}"}
        if self.path.startswith("/compute"):
            extra["OpenStack-API-Version"] = f"compute {COMPUTE_MICROVERSION}"
            extra["X-OpenStack-Nova-API-Version"] = COMPUTE_MICROVERSION
        extra.update(headers or {})
        self.send_json(status, body, extra)

    def _error(self, status: int, message: str, headers: dict | None = None) -> None:
        kind = {400: "badRequest", 403: "forbidden", 404: "itemNotFound",
                413: "overLimit", 429: "overLimit", 500: "computeFault"}.get(status, "error")
        self._send(status, {kind: {"code": status, "message": message}}, headers)

    def _dispatch(self) -> None:
        sim = self.sim
        method = self.command
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        with sim.lock:
            sim.requests.append((method, path))
            faults = sim.faults
            delay = faults.slow_seconds
            if faults.http_500 > 0 and not path.startswith("/identity"):
                faults.http_500 -= 1
                fail = 500
            elif faults.rate_limited > 0 and not path.startswith("/identity"):
                faults.rate_limited -= 1
                fail = 429
            elif faults.over_limit > 0 and not path.startswith("/identity"):
                faults.over_limit -= 1
                fail = 413
            else:
                fail = 0
        if delay:
            # Held until the delay has passed or the fault is lowered (a hung
            # cloud recovering answers what it was holding).
            started = time.monotonic()
            while time.monotonic() - started < min(delay, sim.faults.slow_seconds):
                time.sleep(0.05)
        if fail:
            # Rate limits say when to come back, as Nova and Swift do.
            self._error(fail, "simulated failure",
                        {"Retry-After": "0"} if fail in (413, 429) else None)
            return
        for route_method, pattern, function in ROUTES:
            if route_method != method:
                continue
            match = re.fullmatch(pattern, path)
            if match:
                function(self, *match.groups())
                return
        self._error(404, f"no route for {method} {path}")


ROUTES: list[tuple[str, str, Callable]] = [
    ("GET", r"/identity", Handler.identity_versions),
    ("GET", r"/identity/v3", Handler.identity_v3),
    ("POST", r"/identity/v3/auth/tokens", Handler.tokens),
    ("GET", r"/compute", Handler.compute_versions),
    ("GET", r"/compute/v2\.1", Handler.compute_v21),
    ("GET", r"/compute/v2\.1/flavors(/detail)?", Handler.flavors),
    ("GET", r"/compute/v2\.1/flavors/([^/]+)", Handler.flavor),
    ("POST", r"/compute/v2\.1/servers", Handler.create_server),
    ("GET", r"/compute/v2\.1/servers(/detail)?", Handler.servers),
    ("GET", r"/compute/v2\.1/servers/([^/]+)", Handler.server),
    ("DELETE", r"/compute/v2\.1/servers/([^/]+)", Handler.delete_server),
    ("GET", r"/compute/v2\.1/servers/([^/]+)/metadata", Handler.server_metadata),
    ("POST", r"/compute/v2\.1/servers/([^/]+)/action", Handler.server_action),
    ("GET", r"/compute/v2\.1/limits", Handler.limits),
    ("GET", r"/compute/v2\.1/os-keypairs", Handler.keypairs),
    ("GET", r"/compute/v2\.1/os-keypairs/([^/]+)", Handler.keypair),
    ("GET", r"/compute/v2\.1/os-availability-zone(/detail)?",
     Handler.availability_zones),
    ("GET", r"/image", Handler.image_versions),
    ("GET", r"/image/v2/images", Handler.images),
    ("POST", r"/image/v2/images", Handler.create_image),
    ("GET", r"/image/v2/images/([^/]+)", Handler.image),
    ("PUT", r"/image/v2/images/([^/]+)/file", Handler.upload_image),
    ("DELETE", r"/image/v2/images/([^/]+)", Handler.delete_image),
    ("GET", r"/network", Handler.network_versions),
    ("GET", r"/network/v2\.0/networks", Handler.networks),
    ("GET", r"/network/v2\.0/networks/([^/]+)", Handler.network),
    ("GET", r"/network/v2\.0/ports", Handler.ports),
    ("DELETE", r"/network/v2\.0/ports/([^/]+)", Handler.delete_port),
    ("GET", r"/network/v2\.0/floatingips", Handler.floatingips),
    ("POST", r"/network/v2\.0/floatingips", Handler.create_floatingip),
    ("GET", r"/network/v2\.0/floatingips/([^/]+)", Handler.floatingip),
    ("PUT", r"/network/v2\.0/floatingips/([^/]+)", Handler.update_floatingip),
    ("DELETE", r"/network/v2\.0/floatingips/([^/]+)", Handler.delete_floatingip),
    ("GET", r"/volume(?:/v3)?", Handler.volume_versions),
    ("GET", r"/volume/v3/([^/]+)/volumes(/detail)?", Handler.volumes),
    ("GET", r"/volume/v3/([^/]+)/volumes/([^/]+)", Handler.volume),
    ("DELETE", r"/volume/v3/([^/]+)/volumes/([^/]+)", Handler.delete_volume),
    ("POST", r"/volume/v3/([^/]+)/volumes/([^/]+)/metadata", Handler.volume_metadata),
    ("GET", r"/volume/v3/([^/]+)/limits", Handler.volume_limits),
]
