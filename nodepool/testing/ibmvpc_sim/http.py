"""The simulator's HTTP handler: the IAM token exchange, bearer-token checks,
the VPC API paths the ibmvpc driver uses, the Resource Manager's resource
groups and a Cloud Object Storage bucket."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode, urlsplit
from xml.sax.saxutils import escape

from nodepool.testing.loopback import QuietJSONHandler

if TYPE_CHECKING:  # pragma: no cover
    from nodepool.testing.ibmvpc_sim import IbmVpcSimulator

# Listings: path -> (the reply's item key, the state they come from).
LISTINGS = {"instances": "instances", "floating_ips": "fips", "images": "images"}


class ApiError(Exception):
    """An error answer in the VPC API's shape: ``errors[]`` with a code."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def body(self) -> dict:
        return {"errors": [{"code": self.code, "message": self.message}],
                "trace": "sim-trace", "status_code": self.status}


class Handler(QuietJSONHandler):
    sim: "IbmVpcSimulator"

    def _dispatch(self) -> None:
        sim = self.sim
        split = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        parts = [p for p in split.path.split("/") if p]
        try:
            if parts == ["identity", "token"] and self.command == "POST":
                self.send_json(200, self._token())
                return
            auth = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
            with sim.lock:
                if auth not in sim.tokens:
                    raise ApiError(401, "not_authorized", "invalid or missing token")
                if sim.knobs.throttle > 0:
                    sim.knobs.throttle -= 1
                    sim.count("throttled")
                    self.send_json(429, ApiError(429, "rate_limited", "slow down").body(),
                                   {"Retry-After": "0"})
                    return
                sim.tick()
            if parts[:1] == ["cos"]:
                self._cos(parts[1:], query)
                return
            body = self.read_json() if self.command in ("POST", "PUT") else None
            with sim.lock:
                status, answer = self._route(parts, body or {}, query)
        except ApiError as exc:
            self.send_json(exc.status, exc.body())
            return
        except ValueError:
            self.send_json(400, ApiError(400, "bad_request", "not JSON").body())
            return
        self.send_json(status, answer)

    def _token(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        form = {k: v[-1] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
        from nodepool.testing.ibmvpc_sim import API_KEY
        with self.sim.lock:
            self.sim.count("token")
            if form.get("grant_type") != "urn:ibm:params:oauth:grant-type:apikey" or \
                    form.get("apikey") != API_KEY:
                raise ApiError(400, "BXNIM0415E", "Provided API key could not be found")
            token = self.sim.new_token()
        return {"access_token": token, "refresh_token": "not-supported",
                "token_type": "Bearer", "expires_in": 3600,
                "expiration": int(time.time()) + 3600}

    # -- VPC and Resource Manager ---------------------------------------------------------

    def _route(self, parts: list[str], body: dict, query: dict) -> tuple[int, Any]:
        sim, method = self.sim, self.command
        if parts[:2] == ["v2", "resource_groups"]:
            sim.count(f"{method} resource_groups")
            if method == "GET":
                return 200, {"resources": list(sim.state.groups.values())}
            if method == "POST":
                group = sim.add_group(body["name"])
                return 201, {"id": group["id"], "crn": f"crn:v1:sim:{group['id']}"}
        if parts[:1] != ["v1"]:
            raise ApiError(404, "not_found", f"no such path {self.path}")
        if not query.get("version") or query.get("generation") != "2":
            raise ApiError(400, "bad_request", "version and generation=2 are required")
        rest = parts[1:]
        sim.count(f"{method} {'/'.join(p for p in rest if '-' not in p)}")
        if method == "GET" and len(rest) == 1:
            return 200, self._list(rest[0], query)
        if rest == ["instance", "profiles"] and method == "GET":
            from nodepool.testing.ibmvpc_sim import PROFILES
            return 200, {"profiles": [
                {"name": name, "vcpu_count": {"type": "fixed", "value": cpus},
                 "memory": {"type": "fixed", "value": memory}}
                for name, (cpus, memory) in PROFILES.items()]}
        kind, ident = rest[0], rest[1] if len(rest) > 1 else None
        if kind == "instances":
            if method == "POST" and ident is None:
                return 201, sim.create_instance(body)
            if len(rest) == 6 and method == "PUT":  # bind a floating IP to a NIC
                return 201, sim.bind(rest[1], rest[3], rest[5])
            if method == "GET" and len(rest) == 2:
                return 200, self._find("instances", ident)
            if method == "DELETE" and len(rest) == 2:
                sim.delete_instance(ident)
                return 204, None
        if kind == "floating_ips":
            if method == "POST" and ident is None:
                return 201, sim.create_fip(body)
            if method == "DELETE" and ident:
                self._find("fips", ident)
                sim.state.fips.pop(ident)
                return 204, None
        if kind == "images":
            if method == "POST" and ident is None:
                return 201, sim.create_image(body)
            if method == "GET" and ident:
                return 200, self._find("images", ident)
            if method == "DELETE" and ident:
                self._find("images", ident)
                sim.state.images.pop(ident)
                return 202, None
        raise ApiError(404, "not_found", f"no such path {self.path}")

    def _find(self, kind: str, ident: str) -> dict:
        found = getattr(self.sim.state, kind).get(ident)
        if found is None:
            raise ApiError(404, "not_found", f"{kind} {ident} not found")
        return found

    def _list(self, kind: str, query: dict) -> dict:
        sim = self.sim
        if kind == "vpcs":
            items = [sim.vpc]
        elif kind == "subnets":
            items = [sim.subnet]
        elif kind == "keys":
            items = list(sim.keys.values())
        elif kind in LISTINGS:
            items = list(getattr(sim.state, LISTINGS[kind]).values())
            if query.get("visibility"):
                items = [i for i in items if i.get("visibility") == query["visibility"]]
        else:
            raise ApiError(404, "not_found", f"no such listing {kind}")
        limit = max(1, min(int(query.get("limit") or 50), sim.knobs.page_size))
        start = int(query.get("start") or 0)
        page: dict[str, Any] = {kind: items[start:start + limit], "limit": limit,
                                "total_count": len(items)}
        if start + limit < len(items):
            args = dict(query, start=str(start + limit))
            page["next"] = {"href": f"{sim.url}/v1/{kind}?{urlencode(args)}"}
        return page

    # -- Cloud Object Storage -----------------------------------------------------------------

    def _cos(self, parts: list[str], query: dict) -> None:
        from nodepool.testing.ibmvpc_sim import BUCKET, REGION
        sim = self.sim
        if not parts or parts[0] != BUCKET:
            self._xml(404, "<Error><Code>NoSuchBucket</Code></Error>")
            return
        key = "/".join(parts[1:])
        with sim.lock:
            sim.count(f"{self.command} object")
        if self.command == "GET" and not key and "location" in query:
            self._xml(200, f"<LocationConstraint>{REGION}-smart</LocationConstraint>")
        elif self.command == "GET" and not key:
            with sim.lock:
                keys = sorted(k for k in sim.state.objects
                              if k.startswith(query.get("prefix", "")))
            self._xml(200, '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/'
                      '2006-03-01/">' + "".join(f"<Contents><Key>{escape(k)}</Key>"
                                                "</Contents>" for k in keys)
                      + "</ListBucketResult>")
        elif self.command == "PUT" and key:
            data = self._body()
            with sim.lock:
                sim.state.objects[key] = data
            self._xml(200, "")
        elif self.command == "DELETE" and key:
            with sim.lock:
                sim.state.objects.pop(key, None)
            self._xml(204, "")
        else:
            self._xml(400, "<Error><Code>InvalidRequest</Code></Error>")

    def _body(self) -> bytes:
        """A PUT's bytes, sent with a length or chunked."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if not size:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _xml(self, status: int, text: str) -> None:
        data = (('<?xml version="1.0" encoding="UTF-8"?>' + text) if text else "").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
