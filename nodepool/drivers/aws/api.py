"""The ``aws`` driver's API plumbing: boto3 clients from the usual AWS
configuration chain, the ``rate`` limit every call waits for, one
DescribeInstances shared by every waiting state machine, and batched
TerminateInstances."""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from nodepool.drivers.base import NotFound, QuotaError
from nodepool.drivers.listing import SharedListing, all_pages
from nodepool.drivers.ratelimit import ApiCalls

if TYPE_CHECKING:  # pragma: no cover
    from nodepool.drivers.aws.config import AwsProvider

log = logging.getLogger("nodepool.drivers.aws")

# A waiting state machine sees instances at most this long after they change.
LISTING_INTERVAL = 0.5
# Instances terminated together in one call (AWS advises small batches).
TERMINATE_BATCH = 50
LIVE_STATES = ["pending", "running", "shutting-down", "stopping", "stopped"]
# EC2 error codes that mean "not now, for lack of quota or capacity": the
# launcher defers the request instead of failing it.
QUOTA_ERRORS = {
    "VcpuLimitExceeded", "InstanceLimitExceeded", "InsufficientInstanceCapacity",
    "MaxSpotInstanceCountExceeded", "InsufficientHostCapacity", "HostLimitExceeded",
    "InsufficientCapacity", "InsufficientFreeAddressesInSubnet",
    "VolumeLimitExceeded",
}
NOT_FOUND_ERRORS = {
    "InvalidInstanceID.NotFound", "InvalidAMIID.NotFound", "InvalidAMIID.Unavailable",
    "InvalidSnapshot.NotFound", "InvalidVolume.NotFound", "NoSuchKey",
    "InvalidHostId.NotFound",
}


def error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str((response.get("Error") or {}).get("Code") or "")
    return ""


def classify(exc: Exception) -> Exception:
    """A boto3 error as the launcher understands it."""
    code = error_code(exc)
    if code in QUOTA_ERRORS:
        return QuotaError(f"{code}: {exc}")
    if code in NOT_FOUND_ERRORS:
        return NotFound(str(exc))
    return exc


def tag_list(tags: dict[str, Any]) -> list[dict[str, str]]:
    return [{"Key": str(k), "Value": str(v)} for k, v in tags.items()]


def tag_dict(tags: list[dict] | None) -> dict[str, str]:
    return {t["Key"]: t.get("Value", "") for t in tags or []}


class AwsApi:
    """boto3 clients for one provider; every call goes through :meth:`call`
    (rate limit, statsd timer, error classification)."""

    def __init__(self, provider: "AwsProvider", stats_client=None):
        import boto3
        import botocore.exceptions
        from botocore.config import Config
        from nodepool.drivers import DriverUnavailable
        self.provider = provider
        # Region and profile from the config; credentials, endpoint and the
        # rest from the usual chain (environment, ~/.aws, instance role).
        try:
            session = boto3.Session(region_name=provider.region_name,
                                    profile_name=provider.profile_name)
        except botocore.exceptions.ProfileNotFound as exc:
            raise DriverUnavailable(f"provider {provider.name}: {exc} (check "
                                    "~/.aws/config and ~/.aws/credentials)") from None
        config = Config(retries={"mode": "standard", "max_attempts": 5},
                        max_pool_connections=32)
        self.ec2 = session.client("ec2", config=config)
        self.s3 = session.client("s3", config=config)
        self.quotas = session.client("service-quotas", config=config)
        # ``rate`` is operations per second (OpenStack's is seconds apart).
        self.calls = ApiCalls(provider.name, provider.rate, stats_client, classify)
        self.writes = self.calls.writes

    def call(self, client, method: str, **kwargs) -> dict:
        """``client.<method>(**kwargs)`` after its turn; errors classified."""
        read = method.startswith(("describe_", "list_", "get_", "head_"))
        operation = "".join(part.title() for part in method.split("_"))
        return self.calls.run(operation, read,
                              lambda: getattr(client, method)(**kwargs))

    def pages(self, client, method: str, key: str, **kwargs) -> list[dict]:
        """Every item of a paginated listing, each page rate-limited."""
        s3 = client is self.s3
        return all_pages(lambda **args: self.call(client, method, **args), kwargs, key,
                         "NextContinuationToken" if s3 else "NextToken",
                         "ContinuationToken" if s3 else "NextToken", method)


class InstanceListing(SharedListing):
    """Every live instance, from one paginated DescribeInstances at most
    every LISTING_INTERVAL while anyone asks."""

    def __init__(self, api: AwsApi, name: str):
        self.api = api
        super().__init__(self._describe, f"aws-{name}", LISTING_INTERVAL)

    def _describe(self) -> dict[str, dict]:
        found = {}
        for reservation in self.api.pages(
                self.api.ec2, "describe_instances", "Reservations",
                Filters=[{"Name": "instance-state-name", "Values": LIVE_STATES}],
                MaxResults=1000):
            for instance in reservation.get("Instances") or []:
                found[instance["InstanceId"]] = instance
        return found


class TerminateBatcher:
    """Instance deletes queued by many state machines, sent as one
    TerminateInstances per batch of up to TERMINATE_BATCH ids."""

    def __init__(self, api: AwsApi, name: str):
        self.api = api
        self._queue: queue.Queue[tuple[str, Future] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=f"aws-terminate-{name}",
                                        daemon=True)
        self._thread.start()

    def terminate(self, instance_id: str) -> Future:
        future: Future = Future()
        self._queue.put((instance_id, future))
        return future

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < TERMINATE_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                batch.append(item)
            self._send(batch)

    def _send(self, batch: list[tuple[str, Future]]) -> None:
        ids = [instance_id for instance_id, _ in batch]
        try:
            self.api.call(self.api.ec2, "terminate_instances", InstanceIds=ids)
        except Exception as exc:
            if len(batch) > 1 and isinstance(exc, NotFound):
                # One bad id fails the whole call: tell them apart one by one.
                for item in batch:
                    self._send([item])
                return
            for _, future in batch:
                future.set_exception(exc)
            return
        log.debug("Provider %s: terminated %s", self.api.provider.name, ", ".join(ids))
        for _, future in batch:
            future.set_result(None)

    def stop(self) -> None:
        self._queue.put(None)
