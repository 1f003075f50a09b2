"""The ``gce`` driver's create and delete state machines. ``advance()`` only
submits calls to the adapter's executor and reads their futures and the
shared instance listing, so it never blocks. GCE answers an insert or a
delete with an Operation, polled with zoneOperations.get until DONE."""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING

from nodepool.drivers.base import (
    META_NODE_ID, Instance, LaunchStatusError, StateMachine,
)
from nodepool.drivers.gce.api import operation_error

if TYPE_CHECKING:  # pragma: no cover
    from nodepool.drivers.gce.adapter import GceAdapter
    from nodepool.drivers.gce.config import GceLabel

log = logging.getLogger("nodepool.drivers.gce")

# Seconds between polls of an Operation: short at first, then up to the cap.
OPERATION_POLL_FIRST = 0.1
OPERATION_POLL_MAX = 2.0
LISTING_POLL = 0.25
# Statuses an instance being launched never comes back from.
FAILED_STATUSES = ("STOPPING", "STOPPED", "SUSPENDING", "SUSPENDED", "TERMINATED")


class OperationWait:
    """Polls one zone Operation on the adapter's executor; ``done()`` is
    True once it is DONE (its error, if any, raised by ``check()``)."""

    def __init__(self, adapter: "GceAdapter", operation: dict, launching: bool):
        self.adapter = adapter
        self.operation = operation
        self.launching = launching
        self.future: Future | None = None
        self.delay = OPERATION_POLL_FIRST
        self.next_poll = time.monotonic() + self.delay
        self.done_at = 0.0

    def done(self) -> bool:
        """Non-blocking: whether the operation has finished (raises what
        polling it raised)."""
        if self.future is not None:
            if not self.future.done():
                return False
            future, self.future = self.future, None
            self.operation = future.result()
        if self.operation.get("status") == "DONE":
            if not self.done_at:
                self.done_at = time.monotonic()
            return True
        now = time.monotonic()
        if now >= self.next_poll:
            self.future = self.adapter.executor.submit(self._poll)
            self.delay = min(self.delay * 2, OPERATION_POLL_MAX)
            self.next_poll = now + self.delay
        return False

    def _poll(self) -> dict:
        return self.adapter.api.call("zoneOperations", "get",
                                     zone=self.adapter.provider.zone,
                                     operation=self.operation["name"])

    def check(self) -> None:
        error = operation_error(self.operation, self.launching)
        if error is not None:
            raise error


class OperationMachine(StateMachine):
    """start -> calling (``call()`` on the executor, answering with an
    Operation) -> operating (the Operation polled until DONE) -> waiting:
    ``_operated()`` is True from then on (the Operation's error raised)."""

    launching = False

    def __init__(self, adapter: "GceAdapter"):
        super().__init__()
        self.adapter = adapter
        self.future: Future | None = None
        self.wait: OperationWait | None = None

    def call(self) -> dict:  # pragma: no cover - interface
        raise NotImplementedError

    def called(self) -> None:
        """The call was accepted (its Operation is under way)."""

    def _operated(self) -> bool:
        if self.state == "start":
            self.future = self.adapter.executor.submit(self.call)
            self.state = "calling"
        if self.state == "calling":
            if not self.future.done():
                self.poll_delay = 0.05
                return False
            operation = self.future.result()  # quota and other errors raise here
            self.future = None
            self.called()
            self.wait = OperationWait(self.adapter, operation, self.launching)
            self.state = "operating"
        if self.state == "operating":
            if not self.wait.done():
                self.poll_delay = 0.05
                return False
            self.wait.check()
            self.state = "waiting"
        return True


class GceCreate(OperationMachine):
    """instances.insert and its Operation (see :class:`OperationMachine`),
    then waiting until the shared listing shows the instance RUNNING."""

    launching = True

    def __init__(self, adapter: "GceAdapter", hostname: str, label: "GceLabel",
                 metadata: dict[str, str]):
        super().__init__(adapter)
        self.hostname = hostname
        self.label = label
        self.metadata = metadata
        self.node_id = metadata.get(META_NODE_ID)

    def __repr__(self) -> str:
        return f"<GceCreate node {self.node_id} {self.hostname}>"

    def call(self) -> dict:
        return self.adapter.launch(self.hostname, self.label, self.metadata)

    def called(self) -> None:
        # The instance's name is its id; from here on it may exist.
        self.external_id = self.hostname

    def advance(self) -> Instance | None:
        if not self._operated():
            return None
        listing = self.adapter.listing
        listing.request()
        if not listing.fresh_since(self.wait.done_at):
            self.poll_delay = 0.1
            return None
        seen = listing.get(self.external_id)
        status = (seen or {}).get("status")
        if status in FAILED_STATUSES:
            raise LaunchStatusError(f"instance {self.external_id} went {status}: "
                                    f"{seen.get('statusMessage') or 'no reason given'}")
        if status != "RUNNING":
            self.poll_delay = LISTING_POLL
            return None
        self.complete = True
        return self.adapter.instance(seen, self.label)


class GceDelete(OperationMachine):
    """instances.delete and its Operation (see :class:`OperationMachine`),
    then waiting until the listing no longer shows the instance. An
    instance already gone raises NotFound, which the launcher counts as
    deleted."""

    def __init__(self, adapter: "GceAdapter", external_id: str):
        super().__init__(adapter)
        self.external_id = external_id

    def __repr__(self) -> str:
        return f"<GceDelete {self.external_id}>"

    def call(self) -> dict:
        return self.adapter.delete_instance(self.external_id)

    def advance(self) -> Instance | None:
        if not self._operated():
            return None
        listing = self.adapter.listing
        listing.request()
        if not listing.fresh_since(self.wait.done_at) or \
                listing.get(self.external_id) is not None:
            self.poll_delay = LISTING_POLL
            return None
        self.complete = True
        return None
