"""The ``azure`` driver's own small Azure Resource Manager client, over
``requests``: a service principal's token from Azure AD (client secret from
the auth file, or OIDC federation), the api-version of each resource type,
paging, throttling, long-running operations polled one request at a time
(so a state machine never waits on one), and ARM's errors as the launcher
understands them."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import requests

from nodepool.drivers.base import DriverError, NotFound, QuotaError
from nodepool.drivers.ratelimit import ApiCalls

if TYPE_CHECKING:  # pragma: no cover
    from nodepool.drivers.azure.config import AzureProvider

log = logging.getLogger("nodepool.drivers.azure")

AAD_ENDPOINT = "https://login.microsoftonline.com"
ARM_ENDPOINT = "https://management.azure.com/"
# One api-version per resource provider path (what ARM requires in every URL).
API_VERSIONS = {
    "resourceGroups": "2021-04-01",
    "Microsoft.Compute/virtualMachines": "2023-03-01",
    "Microsoft.Compute/disks": "2022-07-02",
    "Microsoft.Compute/images": "2022-11-01",
    "Microsoft.Compute/locations": "2023-03-01",
    "Microsoft.Network/networkInterfaces": "2022-07-01",
    "Microsoft.Network/publicIPAddresses": "2022-07-01",
}
HTTP_TIMEOUT = 60.0
# A token is fetched again this long before it expires.
TOKEN_MARGIN = 300.0
# Throttled (429) calls are retried this many times, waiting what ARM's
# Retry-After says (at most THROTTLE_WAIT_MAX each).
THROTTLE_RETRIES = 6
THROTTLE_WAIT_MAX = 60.0
# ARM error codes that mean "not now, for lack of quota or capacity": the
# launcher defers the request (and remembers capacity errors per vm size).
QUOTA_ERRORS = {"QuotaExceeded", "OperationNotAllowedQuota", "SkuNotAvailable",
                "AllocationFailed", "ZonalAllocationFailed",
                "OverconstrainedAllocationRequest",
                "OverconstrainedZonalAllocationRequest",
                "PublicIPCountLimitReached", "NetworkInterfaceCountLimitReached"}
NOT_FOUND_ERRORS = {"NotFound", "ResourceNotFound", "ResourceGroupNotFound"}


class AzureError(DriverError):
    """An ARM refusal: HTTP status, ARM error code and message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def error_of(status: int, body: Any) -> AzureError:
    """ARM's ``{"error": {"code", "message"}}`` (or an operation's
    ``{"status": "Failed", "error": ...}``) as an AzureError."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return AzureError(status, "Unknown", str(body)[:300])
    code = str(error.get("code") or "Unknown")
    message = str(error.get("message") or "")
    # An allocation failure often comes wrapped in a generic code.
    for detail in error.get("details") or []:
        if isinstance(detail, dict) and detail.get("code") in QUOTA_ERRORS:
            code, message = detail["code"], f"{message} ({detail.get('message')})"
    return AzureError(status, code, message)


def classify(exc: Exception) -> Exception:
    """An ARM error as the launcher understands it."""
    if not isinstance(exc, AzureError):
        if isinstance(exc, requests.RequestException):
            return DriverError(f"Azure unreachable: {exc}")
        return exc
    code = exc.code
    if code == "OperationNotAllowed" and "quota" in exc.message.lower():
        code = "OperationNotAllowedQuota"
    if code in QUOTA_ERRORS:
        return QuotaError(str(exc))
    if exc.status == 404 or code in NOT_FOUND_ERRORS:
        return NotFound(str(exc))
    return exc


@dataclass
class Credentials:
    subscription_id: str
    tenant_id: str
    client_id: str
    aad_endpoint: str = AAD_ENDPOINT
    arm_endpoint: str = ARM_ENDPOINT
    client_secret: str | None = None
    federated_token_file: str | None = None

    @classmethod
    def of(cls, provider: "AzureProvider") -> "Credentials":
        """From the auth file (``az ad sp create-for-rbac --sdk-auth``'s
        output, whose endpoints may point anywhere), or the federation keys."""
        from nodepool.drivers import DriverUnavailable
        if not provider.auth_path:
            return cls(subscription_id=provider.subscription_id or "",
                       tenant_id=provider.tenant_id or "",
                       client_id=provider.client_id or "",
                       federated_token_file=provider.federated_token_file)
        try:
            with open(provider.auth_path, encoding="utf-8") as handle:
                data = json.load(handle)
            return cls(subscription_id=data["subscriptionId"], tenant_id=data["tenantId"],
                       client_id=data["clientId"], client_secret=data["clientSecret"],
                       aad_endpoint=data.get("activeDirectoryEndpointUrl") or AAD_ENDPOINT,
                       arm_endpoint=data.get("resourceManagerEndpointUrl") or ARM_ENDPOINT)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DriverUnavailable(f"provider {provider.name}: cannot read the Azure "
                                    f"credentials in {provider.auth_path}: "
                                    f"{type(exc).__name__}: {exc}") from None


class TokenSource:
    """An Azure AD access token for ARM, fetched again before it expires
    (or when ARM says it has)."""

    def __init__(self, credentials: Credentials, session: requests.Session):
        self.credentials = credentials
        self.session = session
        self._token: str | None = None
        self._expires = 0.0
        self._lock = threading.Lock()

    def get(self, renew: bool = False) -> str:
        with self._lock:
            if renew or self._token is None or time.time() > self._expires - TOKEN_MARGIN:
                self._token, self._expires = self._fetch()
            return self._token

    def _fetch(self) -> tuple[str, float]:
        creds = self.credentials
        base = creds.aad_endpoint.rstrip("/") + "/" + creds.tenant_id
        resource = creds.arm_endpoint
        if creds.federated_token_file:
            with open(creds.federated_token_file, encoding="utf-8") as handle:
                assertion = handle.read().strip()
            url = base + "/oauth2/v2.0/token"
            form = {"grant_type": "client_credentials", "client_id": creds.client_id,
                    "client_assertion_type":
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    "client_assertion": assertion,
                    "scope": resource.rstrip("/") + "/.default"}
        else:
            url = base + "/oauth2/token"
            form = {"grant_type": "client_credentials", "client_id": creds.client_id,
                    "client_secret": creds.client_secret, "resource": resource}
        reply = self.session.post(url, data=form, timeout=HTTP_TIMEOUT)
        body = _json(reply)
        if reply.status_code != 200 or "access_token" not in body:
            raise AzureError(reply.status_code, str(body.get("error") or "AuthFailed"),
                             str(body.get("error_description") or "no token"))
        # expires_in is a string in the v1 answer, a number in v2.
        return body["access_token"], time.time() + float(body.get("expires_in", 3600))


def _json(reply: requests.Response) -> dict:
    try:
        body = reply.json() if reply.content else {}
    except ValueError:
        body = {"error": {"code": "Unparseable", "message": reply.text[:300]}}
    return body if isinstance(body, dict) else {"value": body}


@dataclass
class Lro:
    """A long-running operation ARM accepted (201/202): where to ask about
    it and how long it suggested to wait between asks."""

    what: str
    url: str | None          # Azure-AsyncOperation or Location; None: poll the resource
    kind: str                # "async", "location" or "resource"
    resource_url: str | None = None
    retry_after: float | None = None
    result: dict | None = None


class ArmApi:
    """One provider's ARM client; every request goes through :meth:`request`
    (rate limit, statsd timer, token, throttling, error classification)."""

    def __init__(self, provider: "AzureProvider", stats_client=None):
        self.provider = provider
        self.credentials = Credentials.of(provider)
        self.session = requests.Session()
        self.tokens = TokenSource(self.credentials, self.session)
        self.base = self.credentials.arm_endpoint.rstrip("/")
        self.calls = ApiCalls(provider.name, provider.rate, stats_client, classify)

    @property
    def subscription(self) -> str:
        return f"/subscriptions/{self.credentials.subscription_id}"

    def group_path(self, group: str | None = None) -> str:
        return f"{self.subscription}/resourceGroups/{group or self.provider.resource_group}"

    def resource_path(self, kind: str, name: str = "", group: str | None = None) -> str:
        """``kind`` like ``Microsoft.Compute/virtualMachines``."""
        path = f"{self.group_path(group)}/providers/{kind}"
        return f"{path}/{name}" if name else path

    # -- requests -------------------------------------------------------------------

    def request(self, method: str, path: str, kind: str, body: Any = None,
                operation: str | None = None) -> requests.Response:
        """One ARM request after its turn (``path`` is a resource path, or a
        URL ARM gave us); raises AzureError for any answer but 2xx."""
        if path.startswith("http"):
            url = path
        else:
            url = f"{self.base}{path}?api-version={API_VERSIONS[kind]}"
        name = operation or (kind.rsplit("/", 1)[-1][:1].upper() + kind.rsplit("/", 1)[-1][1:]
                             + method[:1] + method[1:].lower())
        return self.calls.run(name, method == "GET",
                              lambda: self._send(method, url, body))

    def _send(self, method: str, url: str, body: Any) -> requests.Response:
        renewed = False
        for attempt in range(THROTTLE_RETRIES + 1):
            headers = {"Authorization": f"Bearer {self.tokens.get(renew=renewed)}"}
            reply = self.session.request(method, url, json=body, headers=headers,
                                         timeout=HTTP_TIMEOUT)
            if reply.status_code == 401 and not renewed:
                renewed = True  # expired or revoked: once more with a new token
                continue
            renewed = False
            if reply.status_code == 429 and attempt < THROTTLE_RETRIES:
                wait = min(float(reply.headers.get("Retry-After") or 1), THROTTLE_WAIT_MAX)
                log.info("Provider %s: throttled by ARM (%s %s); retrying in %.1fs",
                         self.provider.name, method, url.split("?")[0], wait)
                time.sleep(wait)
                continue
            if reply.status_code >= 300:
                raise error_of(reply.status_code, _json(reply))
            return reply
        raise AzureError(429, "TooManyRequests", f"still throttled after "
                         f"{THROTTLE_RETRIES} retries")

    def get(self, path: str, kind: str) -> dict:
        return _json(self.request("GET", path, kind))

    def list(self, path: str, kind: str) -> list[dict]:
        """Every item of a listing, following ``nextLink`` page by page."""
        found: list[dict] = []
        url = path
        for _ in range(10_000):  # bounded: a listing that never ends is broken
            page = _json(self.request("GET", url, kind, operation=_list_name(kind)))
            found.extend(page.get("value") or [])
            url = page.get("nextLink")
            if not url:
                return found
        raise DriverError(f"listing {path} did not end")

    def begin(self, method: str, path: str, kind: str, body: Any = None) -> Lro:
        """Start a PUT, POST or DELETE; returns the operation to poll. A
        DELETE of what is already gone may answer 204 (done at once)."""
        reply = self.request(method, path, kind, body)
        headers = reply.headers
        retry = headers.get("Retry-After")
        lro = Lro(f"{method} {last_part(path)}", None, "done",
                  resource_url=path if method == "PUT" else None,
                  retry_after=float(retry) if retry else None,
                  result=_json(reply) if reply.content else None)
        if headers.get("Azure-AsyncOperation"):
            lro.url, lro.kind = headers["Azure-AsyncOperation"], "async"
        elif headers.get("Location") and reply.status_code == 202:
            lro.url, lro.kind = headers["Location"], "location"
        elif method == "PUT":
            lro.kind = "resource"
        return lro

    def poll(self, lro: Lro, kind: str) -> bool:
        """One look at a running operation: True once it ended well (for a
        PUT, with its resource in ``lro.result``); raises its error."""
        if lro.kind in ("async", "location"):
            reply = self.request("GET", lro.url or "", kind, operation="OperationsGet")
            retry = reply.headers.get("Retry-After")
            lro.retry_after = float(retry) if retry else None
            if lro.kind == "location":
                if reply.status_code == 202:
                    return False
                lro.result = _json(reply) if reply.content else lro.result
            else:
                body = _json(reply)
                status = str(body.get("status") or "InProgress")
                if status in ("Failed", "Canceled"):
                    raise classify(error_of(200, body))
                if status != "Succeeded":
                    return False
            lro.kind = "resource" if lro.resource_url else "done"
        if lro.kind == "resource":
            lro.result = self.get(lro.resource_url or "", kind)
            state = str((lro.result.get("properties") or {}).get("provisioningState")
                        or "Succeeded")
            if state in ("Failed", "Canceled"):
                raise AzureError(200, "ProvisioningFailed", f"{lro.what}: {state}")
            if state != "Succeeded":
                return False
            lro.kind = "done"
        return True

    def wait(self, lro: Lro, kind: str, timeout: float = 3600.0) -> Any:
        """Poll until the operation ends (blocking: only for the builder's
        and the cleanup's threads); returns its result."""
        deadline = time.monotonic() + timeout
        delay = 0.1
        while not self.poll(lro, kind):
            if time.monotonic() > deadline:
                raise DriverError(f"{lro.what} not done within {timeout:.0f}s")
            time.sleep(min(lro.retry_after or delay, 5.0))
            delay = min(delay * 2, 5.0)
        return lro.result


def _list_name(kind: str) -> str:
    last = kind.rsplit("/", 1)[-1]
    return last[:1].upper() + last[1:] + "List"


def tags_of(resource: dict) -> dict[str, str]:
    return {str(k): str(v) for k, v in (resource.get("tags") or {}).items()}


def last_part(resource_id: str | None) -> str:
    return (resource_id or "").rstrip("/").rsplit("/", 1)[-1]
