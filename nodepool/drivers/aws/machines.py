"""The ``aws`` driver's create and delete state machines. ``advance()`` only
submits calls to the adapter's executor (or the terminate batcher) and reads
their futures and the shared instance listing, so it never blocks."""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING

from nodepool.drivers.base import (
    CreateMachine, Instance, LaunchStatusError, NotFound, QuotaError, StateMachine,
)
from nodepool.drivers.aws.api import QUOTA_ERRORS

if TYPE_CHECKING:  # pragma: no cover
    from nodepool.drivers.aws.adapter import AwsAdapter
    from nodepool.drivers.aws.config import AwsLabel

log = logging.getLogger("nodepool.drivers.aws")


class AwsCreate(CreateMachine):
    """start -> creating (RunInstances, or CreateFleet, on the executor) ->
    booting (until the shared listing shows it running) -> complete."""

    adapter: "AwsAdapter"
    label: "AwsLabel"

    def __repr__(self) -> str:
        return f"<AwsCreate node {self.node_id} {self.external_id or self.hostname}>"

    def advance(self) -> Instance | None:
        if self.state == "start":
            self.future = self.adapter.executor.submit(
                self.adapter.launcher.launch, self.hostname, self.label,
                self.image_id, self.metadata, self.az)
            self.state = "creating"
        if self.state == "creating":
            if not self.future.done():
                self.poll_delay = 0.05
                return None
            created = self.future.result()  # quota and other errors raise here
            self.future = None
            self.external_id = created["InstanceId"]
            self.created_at = time.monotonic()
            self.state = "booting"
            log.debug("Node %s: instance %s created", self.node_id, self.external_id)
        listing = self.adapter.listing
        listing.request()
        if not listing.fresh_since(self.created_at):
            self.poll_delay = 0.1
            return None
        seen = listing.get(self.external_id)
        # AWS's listings are eventually consistent: a new instance may be
        # missing from the first ones; the launch timeout bounds the wait.
        status = ((seen or {}).get("State") or {}).get("Name")
        if status in ("shutting-down", "terminated", "stopped", "stopping"):
            reason = (seen.get("StateReason") or {})
            code = str(reason.get("Code") or "")
            message = f"instance {self.external_id} went {status}: " \
                      f"{reason.get('Message') or code}"
            if any(q in code for q in QUOTA_ERRORS):
                raise QuotaError(message)
            raise LaunchStatusError(message)
        if status != "running":
            self.poll_delay = LISTING_POLL
            return None
        self.complete = True
        return self.adapter.instance(seen, self.label)


LISTING_POLL = 0.25


class AwsDelete(StateMachine):
    """start -> terminating (batched TerminateInstances) -> waiting (until
    the listing no longer shows it) -> releasing its dedicated host, if any."""

    def __init__(self, adapter: "AwsAdapter", external_id: str):
        super().__init__()
        self.adapter = adapter
        self.external_id = external_id
        self.future: Future | None = None
        self.requested_at = 0.0
        self.host_id: str | None = None

    def __repr__(self) -> str:
        return f"<AwsDelete {self.external_id}>"

    def advance(self) -> Instance | None:
        listing = self.adapter.listing
        if self.state == "start":
            if not listing.started_at:
                # Nothing listed yet (a launcher just started): the listing
                # says whether a dedicated host goes with the instance.
                listing.request()
                self.poll_delay = 0.1
                return None
            seen = listing.get(self.external_id) or {}
            self.host_id = (seen.get("Placement") or {}).get("HostId")
            self.future = self.adapter.terminator.terminate(self.external_id)
            self.state = "terminating"
        if self.state == "terminating":
            if not self.future.done():
                self.poll_delay = 0.05
                return None
            future, self.future = self.future, None
            future.result()  # NotFound: already gone (the launcher's "done")
            self.requested_at = time.monotonic()
            self.state = "waiting"
        if self.state == "waiting":
            listing.request()
            if not listing.fresh_since(self.requested_at):
                self.poll_delay = 0.1
                return None
            if listing.get(self.external_id) is not None:
                self.poll_delay = LISTING_POLL
                return None
            if not self.host_id:
                self.complete = True
                return None
            self.state = "releasing"
            self.future = self.adapter.executor.submit(self.adapter.release_host,
                                                       self.host_id)
        if not self.future.done():
            self.poll_delay = 0.1
            return None
        try:
            self.future.result()
        except NotFound:
            pass
        self.complete = True
        return None
