"""One assignment pass of a pool, as pure decisions (no ZooKeeper, no cloud).

The pool worker gathers what it knows (room left in the pool, the cloud and
each tenant; ready nodes it may hand out; what each label needs) into an
:class:`AssignmentPass`, offers it the requests in order, and carries out the
decisions: accept (with the ready nodes claimed and the quota to launch the
rest), decline, or defer. Deferring keeps the quota claim, so requests
behind a deferred one cannot overtake it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Callable

from nodepool.resources import Resources
from nodepool.zk.records import Node, NodeRequest


@dataclass
class Room:
    """What this pass may still start."""

    pool: Resources
    # None: the cloud sets no limit (or the pool ignores it).
    cloud: Resources | None = None
    launches: int = 0               # launches in progress in the provider
    max_concurrency: int = -1       # <= 0: unlimited
    can_launch: bool = True         # False: the driver only has ready nodes
    # False until the cloud has told its limits: only ready nodes serve.
    limits_known: bool = True
    tenant_usage: dict[str, Resources] = field(default_factory=dict)
    tenant_limits: dict[str, Resources] = field(default_factory=dict)

    def fits(self, need: Resources) -> bool:
        return self.pool.fits(need) and (self.cloud is None or self.cloud.fits(need))

    def take(self, need: Resources) -> None:
        self.pool.subtract(need)
        if self.cloud is not None:
            self.cloud.subtract(need)

    def tenant_fits(self, tenant: str | None, need: Resources) -> bool:
        limit = self.tenant_limits.get(tenant or "")
        if limit is None:
            return True
        used = self.tenant_usage.get(tenant or "", Resources())
        return limit.copy().subtract(used).fits(need)

    def concurrency_allows(self, count: int) -> bool:
        return self.max_concurrency <= 0 or \
            self.launches + count <= self.max_concurrency


class Verdict(enum.Enum):
    ACCEPT = "accept"
    DECLINE = "decline"
    DEFER = "defer"


@dataclass
class Decision:
    verdict: Verdict
    # ACCEPT: per node_types slot, the ready node claimed or None (launch).
    claims: list[Node | None] = field(default_factory=list)
    need: Resources = field(default_factory=Resources)  # to launch
    reason: str | None = None                           # DECLINE


NeedOf = Callable[[str], Resources]


class AssignmentPass:
    def __init__(self, room: Room, reusable: dict[str, list[Node]], need_of: NeedOf):
        self.room = room
        # label -> ready nodes free to claim, oldest last.
        self.reusable = reusable
        self.need_of = need_of
        self.deferred = 0
        # Some request could not launch for lack of quota (not min-ready):
        # the worker may delete an unused ready node to make room.
        self.short_of_quota = False

    def relaunch(self, labels: list[str]) -> Resources | None:
        """A held request's empty slots: the quota to launch them now, or
        None (deferred, the quota claimed all the same)."""
        need = self._need(labels)
        fits = self.room.fits(need)
        self.room.take(need)
        if not fits:
            self.deferred += 1
            self.short_of_quota = True
            return None
        self.room.launches += len(labels)
        return need

    def offer(self, request: NodeRequest, decline: str | None,
              cloud_unanswered: bool = False) -> Decision:
        """Decide a request. ``decline`` is why this pool can never serve it
        (None: it can); ``cloud_unanswered``: the cloud has not yet said what
        its labels need, so only ready nodes may serve it."""
        if cloud_unanswered:
            claims = self.claim_ready(request)
            if claims is None:
                self.deferred += 1
                return Decision(Verdict.DEFER)
            return Decision(Verdict.ACCEPT, claims=claims)
        if decline is not None:
            return Decision(Verdict.DECLINE, reason=decline)
        room = self.room
        available = self.reusable if request.reuse else {}
        claims: list[Node | None] = []
        need = Resources()
        for label in request.node_types:
            nodes = available.get(label, [])
            node = nodes.pop() if nodes else None
            claims.append(node)
            if node is None:
                need.add(self.need_of(label))
        to_launch = sum(1 for node in claims if node is None)
        blocked = (to_launch and not (room.can_launch and room.limits_known)) \
            or not room.tenant_fits(request.tenant_name, need) \
            or (to_launch and not room.fits(need)) \
            or (to_launch and not room.concurrency_allows(to_launch))
        if blocked:
            for label, node in zip(request.node_types, claims):
                if node is not None:
                    available.setdefault(label, []).append(node)
            if room.can_launch:
                # Deleting a ready node to launch one for min-ready would
                # only churn: min-ready never makes room.
                self.short_of_quota = self.short_of_quota or (
                    not room.fits(need) and not request.is_min_ready)
                room.take(need)
            self.deferred += 1
            return Decision(Verdict.DEFER)
        room.take(need)
        room.launches += to_launch
        if (request.tenant_name or "") in room.tenant_limits:
            room.tenant_usage.setdefault(request.tenant_name or "", Resources()).add(need)
        return Decision(Verdict.ACCEPT, claims=claims, need=need)

    def claim_ready(self, request: NodeRequest) -> list[Node | None] | None:
        """Ready nodes for every node of the request, or None (and nothing
        taken) when some label has none."""
        if not request.reuse:
            return None
        taken: list[tuple[str, Node]] = []
        for label in request.node_types:
            nodes = self.reusable.get(label, [])
            if not nodes:
                for label_taken, node in taken:
                    self.reusable[label_taken].append(node)
                return None
            taken.append((label, nodes.pop()))
        return [node for _, node in taken]

    def _need(self, labels: list[str]) -> Resources:
        need = Resources()
        for label in labels:
            need.add(self.need_of(label))
        return need
