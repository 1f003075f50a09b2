"""The ``ibmvpc`` driver's create and delete state machines. ``advance()``
only submits calls to the adapter's executor and reads their futures and the
shared instance listing, so it never blocks. A node is an instance and, if
its pool wants a public address, a floating IP of the same name bound to its
network interface once it runs."""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Callable

from nodepool.drivers.base import (
    CreateMachine, Instance, LaunchStatusError, QuotaError, StateMachine,
)
from nodepool.drivers.ibmvpc.api import CAPACITY_REASONS

if TYPE_CHECKING:  # pragma: no cover
    from nodepool.drivers.ibmvpc.adapter import IbmVpcAdapter

log = logging.getLogger("nodepool.drivers.ibmvpc")

CALL_POLL = 0.05
LISTING_POLL = 0.25


class Calls:
    """One call at a time on the adapter's executor; ``done()`` never blocks
    and raises what the call raised."""

    adapter: "IbmVpcAdapter"
    future: Future | None = None
    result: Any = None

    def _submit(self, call: Callable[[], Any]) -> None:
        self.future = self.adapter.executor.submit(call)

    def _done(self) -> bool:
        if self.future is None:
            return True
        if not self.future.done():
            self.poll_delay = CALL_POLL
            return False
        future, self.future = self.future, None
        self.result = future.result()
        return True

    poll_delay: float


class IbmVpcCreate(Calls, CreateMachine):
    """start -> instance (create_instance accepted) -> floating-ip (made,
    if the pool wants one) -> booting (until the listing shows the instance
    running) -> attaching (the floating IP bound to its interface) ->
    complete. The instance comes first, so a refusal (quota, capacity)
    leaves nothing. The node's cloud id (the instance's name) is known
    before anything is made, so a failed attempt's parts are deleted with it."""

    adapter: "IbmVpcAdapter"
    fip: dict | None = None
    vm: dict | None = None

    def __repr__(self) -> str:
        return f"<IbmVpcCreate node {self.node_id} {self.hostname}>"

    def advance(self) -> Instance | None:
        adapter, label = self.adapter, self.label
        if self.state == "start":
            self.external_id = self.hostname
            self._submit(lambda: adapter.create_instance(
                self.hostname, label, self.image_id, self.metadata))
            self.state = "instance"
        if self.state == "instance":
            if not self._done():
                return None
            self.vm = self.result
            self.created_at = time.monotonic()
            if label.public_ipv4:
                self._submit(lambda: adapter.create_floating_ip(self.hostname, label))
            self.state = "floating-ip"
        if self.state == "floating-ip":
            if not self._done():
                return None
            self.fip = self.result if label.public_ipv4 else None
            self.state = "booting"
        if self.state == "booting":
            if not self._running():
                return None
            if self.fip is not None:
                self._submit(lambda: adapter.attach_floating_ip(self.vm, self.fip))
            self.state = "attaching"
        if self.state == "attaching":
            if not self._done():
                return None
            if self.fip is not None:
                self.fip = self.result
        self.complete = True
        return adapter.instance(self.vm, self.fip, label)

    def _running(self) -> bool:
        listing = self.adapter.instances
        listing.request()
        self.poll_delay = LISTING_POLL
        if not listing.fresh_since(self.created_at):
            return False
        seen = listing.get(self.hostname)
        status = (seen or {}).get("status")
        if status == "failed":
            reasons = [r.get("code") for r in seen.get("status_reasons") or []]
            why = ", ".join(map(str, reasons)) or "no reason given"
            text = f"instance {self.hostname} failed: {why}"
            if set(reasons) & set(CAPACITY_REASONS):
                raise QuotaError(text)
            raise LaunchStatusError(text)
        if status != "running":
            return False
        self.vm = seen
        log.debug("Node %s: instance %s running", self.node_id, self.hostname)
        return True


class IbmVpcDelete(Calls, StateMachine):
    """floating-ip (deleted if there is one) -> instance (deleted if there
    is one) -> gone (until the listing no longer shows it) -> complete."""

    def __init__(self, adapter: "IbmVpcAdapter", external_id: str):
        super().__init__()
        self.adapter = adapter
        self.external_id = external_id
        self.asked_at = 0.0

    def __repr__(self) -> str:
        return f"<IbmVpcDelete {self.external_id}>"

    def advance(self) -> Instance | None:
        adapter, name = self.adapter, str(self.external_id)
        if self.state == "start":
            self._submit(lambda: adapter.delete_floating_ip(name))
            self.state = "floating-ip"
        if self.state == "floating-ip":
            if not self._done():
                return None
            self._submit(lambda: adapter.delete_instance(name))
            self.state = "instance"
        if self.state == "instance":
            if not self._done():
                return None
            self.asked_at = time.monotonic()
            self.state = "gone" if self.result else "done"
        if self.state == "gone":
            listing = adapter.instances
            listing.request()
            if not listing.fresh_since(self.asked_at) or listing.get(name) is not None:
                self.poll_delay = LISTING_POLL
                return None
            log.info("Instance %s and its floating IP deleted", name)
        self.complete = True
        return None
