"""The ``azure`` driver's create and delete state machines. A node is
several ARM resources made one after the other (public IPs, a NIC, the VM
with its OS disk) and removed in the opposite order. ``advance()`` only
submits calls to the adapter's executor and reads their futures; ARM's
long-running operations are polled one request at a time, so it never
blocks."""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Callable

from nodepool.drivers.azure.api import Lro
from nodepool.drivers.base import CreateMachine, Instance, StateMachine

if TYPE_CHECKING:  # pragma: no cover
    from nodepool.drivers.azure.adapter import AzureAdapter

log = logging.getLogger("nodepool.drivers.azure")

# Seconds between polls of an operation (unless ARM's Retry-After says
# otherwise): short at first, then up to the cap.
POLL_FIRST = 0.1
POLL_MAX = 5.0


class Step:
    """One call on the adapter's executor and, if it starts a long-running
    operation, the polls of that operation. ``done()`` never blocks; it
    raises what the call or the operation raised."""

    def __init__(self, adapter: "AzureAdapter", kind: str, call: Callable[[], Any]):
        self.adapter = adapter
        self.kind = kind
        self.future: Future | None = adapter.executor.submit(call)
        self.lro: Lro | None = None
        self.result: Any = None
        self.delay = POLL_FIRST
        self.next_poll = 0.0

    def done(self) -> bool:
        if self.future is not None:
            if not self.future.done():
                return False
            future, self.future = self.future, None
            value = future.result()
            if self.lro is None and not isinstance(value, Lro):
                self.result = value
                return True
            if self.lro is None:
                self.lro = value
            self._schedule()
        if self.lro.kind == "done":
            self.result = self.lro.result
            return True
        if time.monotonic() >= self.next_poll:
            self.future = self.adapter.executor.submit(self.adapter.api.poll, self.lro,
                                                       self.kind)
        return False

    def _schedule(self) -> None:
        wait = self.delay
        if self.lro.retry_after is not None:
            wait = min(max(self.lro.retry_after, POLL_FIRST), POLL_MAX)
        self.delay = min(self.delay * 2, POLL_MAX)
        self.next_poll = time.monotonic() + wait


class StepMachine:
    """Runs a list of (state name, kind, call) steps in order."""

    state: str
    poll_delay: float

    def _run_steps(self, adapter: "AzureAdapter", steps: list[tuple[str, str, Callable]]
                   ) -> bool:
        """Advance; True once every step is done."""
        names = [name for name, _, _ in steps]
        while True:
            if self.state == "start" or self.state not in names:
                index = 0
            elif self.step is None:
                index = names.index(self.state) + 1
            else:
                if not self.step.done():
                    self.poll_delay = 0.05
                    return False
                self.finished(self.state, self.step.result)
                self.step = None
                index = names.index(self.state) + 1
            if index >= len(steps):
                return True
            self.state, kind, call = steps[index]
            self.step = Step(adapter, kind, call)

    step: Step | None = None

    def finished(self, state: str, result: Any) -> None:
        """A step's result (hook)."""


class AzureCreate(StepMachine, CreateMachine):
    """start -> group (the resource group, once per adapter) -> pip-IPv4 /
    pip-IPv6 (the public addresses asked for) -> nic -> vm (until ARM says
    it succeeded) -> disk-tags -> describe (its addresses) -> complete. The node's cloud
    id (the VM's name) is known before the first resource is made, so a
    failed attempt's resources are deleted with it."""

    adapter: "AzureAdapter"

    def __repr__(self) -> str:
        return f"<AzureCreate node {self.node_id} {self.hostname}>"

    def advance(self) -> Instance | None:
        adapter, label, name = self.adapter, self.label, self.hostname
        steps: list[tuple[str, str, Callable]] = [
            ("group", "resourceGroups", adapter.ensure_group)]
        for version in adapter.public_ip_versions(label):
            steps.append((f"pip-{version}", "Microsoft.Network/publicIPAddresses",
                          lambda v=version: adapter.create_public_ip(
                              name, v, self.metadata)))
        steps += [
            ("nic", "Microsoft.Network/networkInterfaces",
             lambda: adapter.create_nic(name, label, self.metadata)),
            ("vm", "Microsoft.Compute/virtualMachines",
             lambda: adapter.create_vm(name, label, self.image_id, self.metadata)),
            # ARM does not give the OS disk the VM's tags: without them a
            # disk left behind could not be told from someone else's.
            ("disk-tags", "Microsoft.Compute/disks",
             lambda: adapter.tag_disk(name, self.metadata)),
            ("describe", "Microsoft.Compute/virtualMachines",
             lambda: adapter.describe(name, label)),
        ]
        if self.state == "start":
            # From here on resources of this name may exist.
            self.external_id = name
        if not self._run_steps(adapter, steps):
            return None
        self.complete = True
        return self.instance

    def finished(self, state: str, result: Any) -> None:
        if state == "vm":
            self.created_at = time.monotonic()
            log.debug("Node %s: VM %s provisioned", self.node_id, self.hostname)
        elif state == "describe":
            self.instance = result

    instance: Instance | None = None


class AzureDelete(StepMachine, StateMachine):
    """vm -> nic -> pip-IPv4 -> pip-IPv6 -> disk, each deleted and waited
    for (what is already gone counts as deleted), then complete."""

    def __init__(self, adapter: "AzureAdapter", external_id: str):
        super().__init__()
        self.adapter = adapter
        self.external_id = external_id

    def __repr__(self) -> str:
        return f"<AzureDelete {self.external_id}>"

    def advance(self) -> Instance | None:
        adapter, name = self.adapter, str(self.external_id)
        steps = [(step, kind, lambda kind=kind, resource=resource:
                  adapter.delete(kind, resource))
                 for step, kind, resource in adapter.node_resources(name)]
        if self._run_steps(adapter, steps):
            log.info("VM %s and its NIC, public IPs and disk deleted", name)
            self.complete = True
        return None
