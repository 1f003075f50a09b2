"""Create and delete state machines of the Kubernetes-family drivers.

Each is a list of stages; a stage is one or a few blocking API calls run
on the adapter's executor, and may answer :data:`WAIT` to be run again
later (a token not yet filled in, a pod still Pending, a namespace still
terminating). ``advance()`` only submits stages and looks at futures.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any, Callable

from nodepool.drivers.base import Instance, LaunchStatusError, NotFound, StateMachine
from nodepool.drivers.kubernetes.config import KubernetesLabel

log = logging.getLogger("nodepool.drivers.kubernetes")

# A stage's answer: not yet, run me again after a while.
WAIT = object()
# Polls of a waiting stage start this fast and slow down to the maximum.
FIRST_POLL = 0.05
MAX_POLL = 1.0


@dataclass
class Stage:
    name: str
    run: Callable[[], Any]


@dataclass
class NodePlan:
    """One node as the cluster will have it, and what its stages learn."""

    node_id: str
    pool: str
    label: KubernetesLabel
    labels: dict[str, str]            # Kubernetes labels of every object made
    namespace: str
    pod: str | None                   # None: a namespace (or project) node
    external_id: str
    token: str | None = None
    ca_crt: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)


class Staged(StateMachine):
    def __init__(self, executor: Executor, stages: list[Stage],
                 finish: Callable[[], Instance | None], what: str):
        super().__init__()
        self.executor = executor
        self.stages = stages
        self.finish = finish
        self.what = what
        self.index = 0
        self.future: Future | None = None
        self.not_before = 0.0
        self.waits = 0

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.what} {self.state}>"

    def advance(self) -> Instance | None:
        while True:
            if self.future is None:
                if self.index == len(self.stages):
                    self.complete = True
                    return self.finish()
                now = time.monotonic()
                if now < self.not_before:
                    self.poll_delay = self.not_before - now
                    return None
                stage = self.stages[self.index]
                self.state = stage.name
                self.future = self.executor.submit(stage.run)
            if not self.future.done():
                self.poll_delay = 0.02
                return None
            future, self.future = self.future, None
            if future.result() is WAIT:  # a stage's error raises here
                self.waits += 1
                delay = min(MAX_POLL, FIRST_POLL * 2 ** min(self.waits - 1, 5))
                self.not_before = time.monotonic() + delay
                self.poll_delay = delay
                return None
            self.waits = 0
            self.index += 1


class NodeCreate(Staged):
    """Records the node's external id before its first object is made, so a
    crash leaves a node the launcher can delete."""

    def __init__(self, executor: Executor, plan: NodePlan, stages: list[Stage],
                 finish: Callable[[], Instance | None]):
        super().__init__(executor, stages, finish, f"node {plan.node_id}")
        self.plan = plan

    def advance(self) -> Instance | None:
        if self.external_id is None:
            self.external_id = self.plan.external_id
        return super().advance()


def wait_for_pod(read: Callable[[], Any], plan: NodePlan) -> Callable[[], Any]:
    """A stage: the pod is Running (WAIT while it is Pending)."""
    def run():
        pod = read()
        phase = pod.status.phase if pod.status else None
        if phase == "Running":
            plan.facts["host_id"] = pod.spec.node_name
            plan.facts["pod_ip"] = pod.status.pod_ip
            return pod
        if phase in ("Failed", "Succeeded", "Unknown"):
            raise LaunchStatusError(f"node {plan.node_id}: pod {plan.namespace}/"
                                    f"{plan.pod} is {phase}: "
                                    f"{pod.status.message or pod.status.reason or ''}")
        return WAIT
    return run


def deletion(executor: Executor, what: str, delete: Callable[[], Any],
             is_gone: Callable[[], bool]) -> Staged:
    """Ask for the deletion, then wait until the object is gone (a namespace
    is terminating for a while: its quota and name are still taken)."""
    def ask():
        try:
            delete()
        except NotFound:
            log.debug("%s: already gone", what)

    def wait():
        return None if is_gone() else WAIT
    return Staged(executor, [Stage("deleting", ask), Stage("waiting", wait)],
                  lambda: None, what)
