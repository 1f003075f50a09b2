"""The simulator's HTTP handler: Azure AD's token endpoints, bearer-token
and api-version checks, throttling, ARM's paths, operation status and the
page writes of a disk upload."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from nodepool.testing.loopback import QuietJSONHandler

if TYPE_CHECKING:  # pragma: no cover
    from nodepool.testing.azure_sim import AzureSimulator


class ApiError(Exception):
    """An error answer: ARM's ``{"error": {"code", "message"}}``."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}


class Handler(QuietJSONHandler):
    sim: "AzureSimulator"
    wbufsize = 1 << 16
    disable_nagle_algorithm = True

    def _dispatch(self) -> None:
        sim = self.sim
        split = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        parts = [p for p in split.path.split("/") if p]
        headers: dict[str, str] = {}
        try:
            if len(parts) >= 3 and parts[1] == "oauth2":
                self.send_json(*self._token(parts))
                return
            if parts[:1] == ["blob"]:
                self._write_page(parts, query)
                return
            body = self.read_json() if self.command in ("PUT", "POST", "PATCH") else None
            auth = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
            if not sim.token_valid(auth):
                raise ApiError(401, "ExpiredAuthenticationToken", "The access token "
                               "expiry UTC time is earlier than current UTC time.")
            if "api-version" not in query:
                raise ApiError(400, "MissingApiVersionParameter", "The api-version "
                               "query parameter (?api-version=) is required.")
            with sim.lock:
                if sim.knobs.throttle > 0:
                    sim.knobs.throttle -= 1
                    sim.count("throttled")
                    self.send_json(429, {"error": {"code": "TooManyRequests",
                                                   "message": "Throttled"}},
                                   {"Retry-After": sim.knobs.retry_after})
                    return
                sim.tick()
                status, answer = self._route(parts, body or {}, query, headers)
        except ApiError as exc:
            self.send_json(exc.status, exc.body())
            return
        except ValueError:
            self.send_json(400, {"error": {"code": "InvalidRequestContent",
                                           "message": "The request content was invalid."}})
            return
        self.send_json(status, answer, headers)

    # -- Azure AD ------------------------------------------------------------------

    def _token(self, parts: list[str]) -> tuple[int, dict]:
        from nodepool.testing.azure_sim import (
            CLIENT_ID, CLIENT_SECRET, FEDERATED_TOKEN, TENANT,
        )
        length = int(self.headers.get("Content-Length") or 0)
        form = {k: v[-1] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
        with self.sim.lock:
            self.sim.count("token")
        if parts[0] != TENANT or form.get("client_id") != CLIENT_ID \
                or form.get("grant_type") != "client_credentials":
            return 400, {"error": "invalid_client",
                         "error_description": "AADSTS7000215: unknown client or tenant"}
        if parts[2:] == ["v2.0", "token"]:
            good = form.get("client_assertion") == FEDERATED_TOKEN and \
                form.get("scope", "").endswith("/.default")
        else:
            good = form.get("client_secret") == CLIENT_SECRET and bool(form.get("resource"))
        if not good:
            return 401, {"error": "invalid_client",
                         "error_description": "AADSTS7000215: Invalid client secret"}
        return 200, self.sim.issue_token()

    # -- ARM ---------------------------------------------------------------------------

    def _route(self, parts: list[str], body: dict, query: dict,
               headers: dict) -> tuple[int, Any]:
        from nodepool.testing.azure_sim import SUBSCRIPTION
        sim, method = self.sim, self.command
        if parts[:2] != ["subscriptions", SUBSCRIPTION]:
            raise ApiError(404, "SubscriptionNotFound", f"The subscription "
                           f"'{parts[1:2]}' could not be found.")
        rest = parts[2:]
        if rest[:1] == ["providers"]:
            return self._subscription_level(rest[1:], query)
        if rest[:1] != ["resourceGroups"] or len(rest) < 2:
            raise ApiError(404, "NotFound", f"no such path {'/'.join(parts)}")
        group = rest[1]
        if len(rest) == 2:
            sim.count(f"{method} resourceGroups")
            if method == "GET":
                return 200, sim.group(group)
            if method == "PUT":
                created = group.lower() not in sim.state.groups
                sim.state.groups[group.lower()] = {
                    "id": f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{group}",
                    "name": group, "location": body.get("location"),
                    "tags": body.get("tags") or {},
                    "properties": {"provisioningState": "Succeeded"}}
                return (201 if created else 200), sim.state.groups[group.lower()]
        if len(rest) < 5 or rest[2] != "providers":
            raise ApiError(404, "NotFound", f"no such path {'/'.join(parts)}")
        kind, tail = rest[4], rest[5:]
        from nodepool.testing.azure_sim import KINDS
        if kind not in KINDS:
            raise ApiError(404, "NotFound", f"no such resource type {kind}")
        sim.count(f"{method} {kind}" + (f"/{tail[1]}" if len(tail) > 1 else ""))
        if not tail and method == "GET":
            sim.group(group)
            return 200, self._page([r for (k, _), r in sim.state.resources.items()
                                    if k == kind and r["id"].split("/")[4].lower()
                                    == group.lower()], query)
        if len(tail) == 1:
            return self._resource(group, kind, tail[0], body, headers)
        if kind == "disks" and len(tail) == 2 and method == "POST":
            return self._disk_access(tail[0], tail[1], body, headers)
        raise ApiError(404, "NotFound", f"no such path {'/'.join(parts)}")

    def _resource(self, group: str, kind: str, name: str, body: dict,
                  headers: dict) -> tuple[int, Any]:
        sim, method = self.sim, self.command
        if method == "GET":
            return 200, public(sim.get(kind, name))
        if method == "PATCH":
            resource = sim.get(kind, name)
            if "tags" in body:
                resource["tags"] = dict(body["tags"] or {})
            return 200, public(resource)
        if method == "PUT":
            resource, op_id = sim.create(group, kind, name, body)
            headers["Azure-AsyncOperation"] = self._operation_url(op_id, "operations")
            return 201, public(resource)
        if method == "DELETE":
            op_id = sim.delete(kind, name)
            if op_id is None:
                return 204, None
            if kind == "disks":  # answered with Location only, as disks are
                headers["Location"] = self._operation_url(op_id, "operationResults")
            else:
                headers["Azure-AsyncOperation"] = self._operation_url(op_id, "operations")
            return 202, None
        raise ApiError(405, "MethodNotAllowed", method)

    def _disk_access(self, name: str, action: str, body: dict,
                     headers: dict) -> tuple[int, Any]:
        sim = self.sim
        disk = sim.get("disks", name)
        props = disk["properties"]
        if action == "beginGetAccess" and body.get("access") == "Write" \
                and props.get("diskState") == "ReadyToUpload":
            props["diskState"] = "ActiveUpload"
            result = {"accessSAS": f"{sim.url}/blob/{name}?sv=2021&sig=sim-sas"}
        elif action == "endGetAccess" and props.get("diskState") == "ActiveUpload":
            props["diskState"] = "Unattached"
            result = None
        else:
            raise ApiError(409, "OperationNotAllowed", f"{action} is not allowed while "
                           f"disk {name} is {props.get('diskState')}.")
        op_id = sim.operation("Microsoft.Compute", sim.knobs.operation_delay,
                              result=result)
        headers["Location"] = self._operation_url(op_id, "operationResults")
        return 202, None

    def _operation_url(self, op_id: str, what: str) -> str:
        from nodepool.testing.azure_sim import LOCATION, SUBSCRIPTION
        return (f"{self.sim.url}/subscriptions/{SUBSCRIPTION}/providers/"
                f"{self.sim.state.operations[op_id]['namespace']}/locations/{LOCATION}/"
                f"{what}/{op_id}?api-version=2023-03-01")

    def _subscription_level(self, rest: list[str], query: dict) -> tuple[int, Any]:
        from nodepool.testing.azure_sim import LOCATION, VM_SIZES
        sim = self.sim
        if rest == ["Microsoft.Compute", "images"]:
            sim.count("GET images (subscription)")
            return 200, self._page([public(r) for (k, _), r in sim.state.resources.items()
                                    if k == "images"], query)
        if len(rest) == 5 and rest[1] == "locations" and rest[3] in ("operations",
                                                                     "operationResults"):
            operation = sim.state.operations.get(rest[4])
            if operation is None:
                raise ApiError(404, "NotFound", f"operation {rest[4]} not found")
            sim.count(f"GET {rest[3]}")
            if rest[3] == "operationResults":
                if operation["status"] == "InProgress":
                    return 202, None
                if operation["status"] == "Failed":
                    return 500, {"error": operation["error"]}
                return (200, operation["result"]) if "result" in operation else (204, None)
            return 200, {k: v for k, v in operation.items()
                         if k in ("name", "status", "error", "startTime", "endTime")}
        if len(rest) == 4 and rest[:2] == ["Microsoft.Compute", "locations"]:
            if rest[2] != LOCATION:
                raise ApiError(404, "NoRegisteredProviderFound", f"location {rest[2]}")
            sim.count(f"GET {rest[3]}")
            if rest[3] == "vmSizes":
                return 200, self._page([{"name": n, "numberOfCores": c, "memoryInMB": m,
                                         "maxDataDiskCount": 4, "osDiskSizeInMB": 1047552}
                                        for n, (c, m) in VM_SIZES.items()], query)
            if rest[3] == "usages":
                cores, vms = sim.usage()
                usages = (("cores", cores, sim.knobs.cores),
                          ("virtualMachines", vms, sim.knobs.virtual_machines),
                          ("standardDSv3Family", 0, None))
                return 200, self._page([
                    {"name": {"value": name, "localizedValue": name}, "unit": "Count",
                     "currentValue": used,
                     "limit": int(limit if limit is not None else 25000)}
                    for name, used, limit in usages], query)
        raise ApiError(404, "NotFound", f"no such path {'/'.join(rest)}")

    def _page(self, items: list[dict], query: dict) -> dict:
        size = max(1, self.sim.knobs.page_size)
        start = int(query.get("$skiptoken") or 0)
        page: dict[str, Any] = {"value": [public(i) for i in items[start:start + size]]}
        if start + size < len(items):
            link = urlsplit(self.path)
            others = "&".join(f"{k}={v}" for k, v in query.items() if k != "$skiptoken")
            page["nextLink"] = (f"{self.sim.url}{link.path}?{others}"
                                f"&$skiptoken={start + size}")
        return page

    # -- blob pages ----------------------------------------------------------------------

    def _write_page(self, parts: list[str], query: dict) -> None:
        sim = self.sim
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length)
        with sim.lock:
            blob = sim.state.blobs.get(parts[-1].lower())
            disk = sim.find("disks", parts[-1])
            state = (disk or {}).get("properties", {}).get("diskState")
            span = (self.headers.get("x-ms-range") or "").removeprefix("bytes=")
            if blob is None or state != "ActiveUpload" or query.get("sig") != "sim-sas" \
                    or query.get("comp") != "page" or "-" not in span:
                self.send_json(403, {"error": {"code": "AuthenticationFailed",
                                               "message": "no write access"}})
                return
            first, last = (int(x) for x in span.split("-"))
            if first % 512 or (last + 1) % 512 or last - first + 1 != len(data) \
                    or last >= len(blob):
                self.send_json(416, {"error": {"code": "InvalidPageRange",
                                               "message": span}})
                return
            blob[first:last + 1] = data
            sim.count("PUT page")
        self.send_json(201, None)


def public(resource: dict) -> dict:
    """A resource as ARM shows it (without the simulator's own notes)."""
    return {k: v for k, v in resource.items() if k != "sim"}
