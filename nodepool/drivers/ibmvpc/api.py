"""The ``ibmvpc`` driver's API plumbing over IBM's Python SDK: the IAM
authenticator and the service addresses from the credentials file (read the
SDK's way), the VPC and Resource Manager clients, the
``rate`` limit every call waits for, paging by ``next.href``, throttling,
and the SDK's errors as the launcher understands them."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from nodepool.drivers.base import DriverError, NotFound, QuotaError
from nodepool.drivers.listing import all_pages
from nodepool.drivers.ratelimit import ApiCalls

if TYPE_CHECKING:  # pragma: no cover
    from nodepool.drivers.ibmvpc.config import IbmVpcProvider

log = logging.getLogger("nodepool.drivers.ibmvpc")

# The VPC API version we speak (the date of the API's shape we rely on).
VPC_VERSION = "2024-04-30"
HTTP_TIMEOUT = 60.0
# Throttled (429) calls are retried this many times, waiting what the
# Retry-After header says (at most THROTTLE_WAIT_MAX each). The SDK's own
# retries are left off: they would repeat a create refused with a 5xx.
THROTTLE_RETRIES = 6
THROTTLE_WAIT_MAX = 30.0
# Error codes meaning "not now, for lack of quota or capacity": the launcher
# defers the request. VPC codes vary by resource (over_quota,
# instance_quota_exceeded, ...), so they are recognised by these parts.
QUOTA_CODE_PARTS = ("quota", "capacity", "limit_exceeded")
# A failed instance's status reasons that mean the zone ran out of room.
CAPACITY_REASONS = ("cannot_start_capacity", "cannot_start_compute",
                    "cannot_start_placement_group")
# The SDK reads IBM_CREDENTIALS_FILE from the environment: one adapter at a
# time points it at its provider's file.
CREDENTIALS_FILE_LOCK = threading.Lock()


class IbmVpcError(DriverError):
    """Any other refusal of an IBM Cloud API."""


def error_codes(exc: Exception) -> list[str]:
    """The ``errors[].code`` of an ApiException's body."""
    response = getattr(exc, "http_response", None)
    try:
        body = response.json() if response is not None else {}
    except ValueError:
        return []
    errors = body.get("errors") if isinstance(body, dict) else None
    return [str(e.get("code")) for e in errors or [] if isinstance(e, dict)]


def classify(exc: Exception) -> Exception:
    """An SDK error as the launcher understands it."""
    from ibm_cloud_sdk_core import ApiException
    if not isinstance(exc, ApiException):
        if isinstance(exc, OSError) or type(exc).__module__.startswith("requests"):
            return IbmVpcError(f"IBM Cloud unreachable: {exc}")
        return exc
    codes = error_codes(exc)
    text = f"{exc.status_code} {','.join(codes) or 'error'}: {exc.message}"
    if any(part in code for code in codes for part in QUOTA_CODE_PARTS):
        return QuotaError(text)
    if exc.status_code == 404 or any(code.endswith("not_found") for code in codes):
        return NotFound(text)
    return IbmVpcError(text)


def next_start(page: dict) -> str | None:
    """The ``start`` token of a listing's next page (from ``next.href``)."""
    from ibm_cloud_sdk_core import get_query_param
    href = (page.get("next") or {}).get("href")
    return get_query_param(href, "start") if href else None


class Clients:
    """The SDK's clients of one provider, all sharing one IAM authenticator."""

    def __init__(self, provider: "IbmVpcProvider"):
        from ibm_cloud_sdk_core.get_authenticator import get_authenticator_from_environment
        from ibm_cloud_sdk_core.utils import read_external_sources
        from ibm_platform_services import ResourceManagerV2
        from ibm_vpc import VpcV1
        from nodepool.drivers import DriverUnavailable
        if provider.credentials_file and not os.access(provider.credentials_file, os.R_OK):
            raise DriverUnavailable(f"provider {provider.name}: cannot read the IBM "
                                    f"Cloud credentials in {provider.credentials_file}")
        with CREDENTIALS_FILE_LOCK:
            saved = os.environ.get("IBM_CREDENTIALS_FILE")
            try:
                if provider.credentials_file:
                    os.environ["IBM_CREDENTIALS_FILE"] = provider.credentials_file
                try:
                    self.authenticator = get_authenticator_from_environment("vpc")
                except ValueError as exc:
                    raise DriverUnavailable(f"provider {provider.name}: no usable IBM "
                                            f"Cloud credentials: {exc}") from None
                # Service addresses: VPC_URL (else the region's public
                # endpoint) and RESOURCE_MANAGER_URL.
                urls = {name: read_external_sources(name).get("URL") for name in
                        ("vpc", "resource_manager")}
            finally:
                if saved is None:
                    os.environ.pop("IBM_CREDENTIALS_FILE", None)
                else:
                    os.environ["IBM_CREDENTIALS_FILE"] = saved
        if self.authenticator is None:
            raise DriverUnavailable(f"provider {provider.name}: no IBM Cloud "
                                    "credentials (VPC_APIKEY or a credentials file)")
        self.vpc = VpcV1(version=VPC_VERSION, authenticator=self.authenticator)
        self.vpc.set_service_url(urls["vpc"] or
                                 f"https://{provider.region}.iaas.cloud.ibm.com/v1")
        self.manager = ResourceManagerV2(authenticator=self.authenticator)
        if urls["resource_manager"]:
            self.manager.set_service_url(urls["resource_manager"])
        for client in (self.vpc, self.manager):
            client.set_http_config({"timeout": HTTP_TIMEOUT})

    def token(self) -> str:
        """A current IAM access token (for Cloud Object Storage requests)."""
        return self.authenticator.token_manager.get_token()


class IbmApi:
    """One provider's calls: each rate-limited, timed in statsd, retried
    when throttled, its errors classified."""

    def __init__(self, provider: "IbmVpcProvider", stats_client=None):
        self.provider = provider
        self.clients = Clients(provider)
        self.calls = ApiCalls(provider.name, provider.rate, stats_client, classify)

    def call(self, client: str, method: str, *args, **kwargs) -> Any:
        """``getattr(clients.<client>, method)(...)``'s result (JSON)."""
        function = getattr(getattr(self.clients, client), method)
        read = method.startswith(("list_", "get_"))
        return self.calls.run(method, read, lambda: self._throttled(
            lambda: function(*args, **kwargs).get_result()))

    def vpc(self, method: str, *args, **kwargs) -> Any:
        return self.call("vpc", method, *args, **kwargs)

    def _throttled(self, send: Callable[[], Any]) -> Any:
        from ibm_cloud_sdk_core import ApiException
        for attempt in range(THROTTLE_RETRIES + 1):
            try:
                return send()
            except ApiException as exc:
                if exc.status_code != 429 or attempt == THROTTLE_RETRIES:
                    raise
                headers = getattr(exc.http_response, "headers", {}) or {}
                wait = min(float(headers.get("Retry-After") or 1), THROTTLE_WAIT_MAX)
                log.info("Provider %s: throttled by IBM Cloud; retrying in %.1fs",
                         self.provider.name, wait)
                time.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    def pages(self, method: str, items: str, **kwargs) -> list[dict]:
        """Every item of a VPC listing, following ``next.href`` page by page."""
        def page(**args) -> dict:
            reply = self.vpc(method, **args)
            return {"items": reply.get(items) or [], "start": next_start(reply)}
        return all_pages(page, kwargs, "items", "start", "start", method)
