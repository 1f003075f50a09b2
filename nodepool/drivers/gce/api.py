"""The ``gce`` driver's API plumbing: the Compute Engine v1 client built from
the discovery document the client library ships (no discovery fetch), with
Application Default Credentials; the ``rate`` limit every call waits for;
and GCE's errors, synchronous or in a finished Operation, as the launcher
understands them."""

from __future__ import annotations

import json
import logging
import os
import threading
from typing import TYPE_CHECKING, Any

from nodepool.drivers.base import DriverError, LaunchError, NotFound, QuotaError
from nodepool.drivers.listing import all_pages
from nodepool.drivers.ratelimit import ApiCalls

if TYPE_CHECKING:  # pragma: no cover
    from nodepool.drivers.gce.config import GceProvider

log = logging.getLogger("nodepool.drivers.gce")

SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
# gcloud's own override of the Compute API's address (e.g. a Private Service
# Connect endpoint): its value replaces ``https://compute.googleapis.com/compute/v1/``.
ENDPOINT_ENV = "CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE"
# What counts as a read (ApiCalls lets reads go faster than ``rate``).
READ_METHODS = ("get", "list", "aggregatedList", "getFromFamily", "getSerialPortOutput")
HTTP_TIMEOUT = 60.0
# Reads are retried by the client library on 5xx, 429 and broken connections
# (with its own backoff); writes are not: the launcher retries a launch.
READ_RETRIES = 2
# GCE error reasons (of an HTTP error) and codes (of a failed Operation) that
# mean "not now, for lack of quota or capacity": the launcher defers the
# request instead of failing it.
QUOTA_ERRORS = {
    "quotaExceeded", "QUOTA_EXCEEDED", "ZONE_RESOURCE_POOL_EXHAUSTED",
    "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS", "resourcePoolExhausted",
    "REGION_RESOURCE_POOL_EXHAUSTED", "RESOURCE_POOL_EXHAUSTED",
}
NOT_FOUND_ERRORS = {"notFound", "RESOURCE_NOT_FOUND"}


class GceApiError(DriverError):
    """Any other refusal of the Compute API."""


def http_error_reasons(exc: Exception) -> tuple[int, list[str], str]:
    """(HTTP status, error reasons, message) of a googleapiclient HttpError."""
    status = int(getattr(getattr(exc, "resp", None), "status", 0) or 0)
    reasons: list[str] = []
    message = str(exc)
    content = getattr(exc, "content", b"")
    try:
        error = json.loads(content or b"{}").get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    if isinstance(error, dict):
        message = error.get("message") or message
        reasons = [str(e.get("reason")) for e in error.get("errors") or []
                   if isinstance(e, dict) and e.get("reason")]
    return status, reasons, message


def classify(exc: Exception) -> Exception:
    """A client error as the launcher understands it."""
    from googleapiclient.errors import HttpError
    if not isinstance(exc, HttpError):
        return exc
    status, reasons, message = http_error_reasons(exc)
    text = f"{status} {','.join(reasons) or 'error'}: {message}"
    if QUOTA_ERRORS.intersection(reasons):
        return QuotaError(text)
    if status == 404 or NOT_FOUND_ERRORS.intersection(reasons):
        return NotFound(text)
    return GceApiError(text)


def operation_error(operation: dict, launching: bool = False) -> Exception | None:
    """The error of a finished Operation (None if it succeeded)."""
    errors = (operation.get("error") or {}).get("errors") or []
    if not errors:
        return None
    codes = {str(e.get("code")) for e in errors}
    text = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)
    text = f"{operation.get('operationType', 'operation')} of " \
           f"{operation.get('targetLink', '').rsplit('/', 1)[-1]} failed: {text}"
    if codes & QUOTA_ERRORS:
        return QuotaError(text)
    if codes & NOT_FOUND_ERRORS:
        return NotFound(text)
    return LaunchError(text) if launching else GceApiError(text)


def last_part(link: str | None) -> str:
    """``zones/us-central1-a/machineTypes/n2-standard-2`` -> ``n2-standard-2``."""
    return (link or "").rsplit("/", 1)[-1]


def metadata_dict(metadata: dict | None) -> dict[str, str]:
    return {item["key"]: item.get("value", "")
            for item in (metadata or {}).get("items") or [] if "key" in item}


def metadata_items(metadata: dict[str, Any]) -> dict:
    return {"items": [{"key": str(k), "value": str(v)} for k, v in metadata.items()]}


class GceApi:
    """The Compute client of one provider; every call goes through
    :meth:`call` (rate limit, statsd timer, error classification). The
    client library's HTTP transport is not thread-safe: each thread gets
    its own."""

    def __init__(self, provider: "GceProvider", stats_client=None):
        import google.auth
        import google.auth.exceptions
        from googleapiclient import discovery
        from nodepool.drivers import DriverUnavailable
        self.provider = provider
        try:
            self.credentials, _ = google.auth.default(scopes=SCOPES)
        except google.auth.exceptions.DefaultCredentialsError as exc:
            raise DriverUnavailable(f"provider {provider.name}: no Google credentials "
                                    f"({exc})") from None
        options = {}
        endpoint = os.environ.get(ENDPOINT_ENV)
        if endpoint:
            options["api_endpoint"] = endpoint
        self.compute = discovery.build(
            "compute", "v1", http=self._http(), static_discovery=True,
            cache_discovery=False, client_options=options)
        self._local = threading.local()
        self._collections: dict[str, Any] = {}
        self._lock = threading.Lock()
        # ``rate`` is operations per second, as for aws.
        self.calls = ApiCalls(provider.name, provider.rate, stats_client, classify)

    def _http(self):
        import google_auth_httplib2
        import httplib2
        return google_auth_httplib2.AuthorizedHttp(
            self.credentials, http=httplib2.Http(timeout=HTTP_TIMEOUT))

    def _thread_http(self):
        http = getattr(self._local, "http", None)
        if http is None:
            http = self._local.http = self._http()
        return http

    def _collection(self, resource: str):
        with self._lock:
            found = self._collections.get(resource)
            if found is None:
                found = self._collections[resource] = getattr(self.compute, resource)()
            return found

    def call(self, resource: str, method: str, **kwargs) -> dict:
        """``compute.<resource>().<method>(**kwargs).execute()`` after its
        turn, in this provider's project; errors classified."""
        kwargs.setdefault("project", self.provider.project)
        request = getattr(self._collection(resource), method)(**kwargs)
        operation = resource[:1].upper() + resource[1:] + method[:1].upper() + method[1:]
        read = method in READ_METHODS
        return self.calls.run(operation, read, lambda: request.execute(
            http=self._thread_http(), num_retries=READ_RETRIES if read else 0))

    def pages(self, resource: str, method: str, **kwargs) -> list[dict]:
        """Every item of a paginated listing, each page rate-limited."""
        return all_pages(lambda **args: self.call(resource, method, **args), kwargs,
                         "items", "nextPageToken", "pageToken", f"{resource}.{method}")
