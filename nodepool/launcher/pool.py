"""One worker per provider pool: take requests, reuse or launch nodes, fulfil.

The worker thread wakes on every change to requests, nodes, components or
images (cache listeners set ``wake``) and decides, in one pass over the
ordered open requests, which to take now, which to decline and which to
defer. Decisions use snapshots and running quota arithmetic, so a pass costs
O(requests + nodes), never O(requests x nodes). The ZooKeeper work of
accepting (:mod:`nodepool.launcher.accepting`), fulfilling and declining
runs on the launcher's executor, so round trips overlap instead of queueing
behind each other.

A pool at quota defers only what it cannot serve now: requests that ready
nodes can satisfy are still served, and impossible ones still declined.
Deferred requests keep their claim on the quota freed next, so a big request
is not starved by a stream of small ones behind it.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from typing import TYPE_CHECKING, Iterable

from kazoo.exceptions import KazooException

from nodepool.config.model import Pool, Provider
from nodepool.launcher import scheduler
from nodepool.launcher.accepting import Accepting
from nodepool.launcher.assign import AssignmentPass, Room, Verdict
from nodepool.launcher.cloudview import Unknown
from nodepool.launcher.sharing import TAKEOVER_SECONDS
from nodepool.launcher.handler import (
    ENDINGS, Cancelled, Ended, FillEnded, HandlerEvent, LaunchEnded, Next,
    RequestHandler, Reservations,
)
from nodepool.launcher.quota import pool_limits, tenant_limits
from nodepool.resources import Resources
from nodepool.zk.records import Node, NodeRequest, NodeState, RequestState
from nodepool.zk.components import ComponentRegistration, new_pool_component
from nodepool.zk.store import request_fits

if TYPE_CHECKING:  # pragma: no cover
    from nodepool.launcher.launcher import Launcher, ProviderManager

log = logging.getLogger("nodepool.launcher.pool")

# Time between two assignment passes of one worker: events arriving
# meanwhile are handled together instead of one pass each. The gap is the
# last pass's cost times the factor, within these bounds, so that passes over
# a long backlog take at most about 4% of a core.
MIN_PASS_GAP = 0.01
MAX_PASS_GAP = 0.1
PASS_GAP_FACTOR = 25.0


class PoolWorker(Accepting):
    """Serves requests for one (provider, pool) of this launcher."""

    def __init__(self, launcher: "Launcher", manager: "ProviderManager", pool: Pool):
        self.launcher = launcher
        self.manager = manager
        self.pool = pool
        self.component = new_pool_component(
            manager.provider.name, pool.name, pool.labels,
            manager.provider.pool_priority(pool), launcher=launcher.id)
        self.registration = ComponentRegistration(launcher.client, self.component)
        self.handlers: dict[str, RequestHandler] = {}
        # Requests being accepted right now, with the quota reserved for them.
        self.in_flight = Reservations()
        # What other threads told us about our handlers, not yet applied.
        self.events: list[HandlerEvent] = []
        # Handlers with empty slots to launch again (after a quota abort).
        self.needing: set[str] = set()
        self.claimed: set[str] = set()
        # Handlers holding nodes the usage index may not show yet (created
        # by us, not yet back from the node cache).
        self.unindexed: set[str] = set()
        # Requests too large to be served, each logged once.
        self.too_large: set[str] = set()
        self.mutex = threading.Lock()
        self.wake = threading.Event()
        self._stopped = threading.Event()
        self._generation = launcher.client.session_generation
        self.deferred = 0
        self.making_room = False
        self.in_pass = False
        # Events came in while the last assignment was too recent.
        self.assign_due = False
        self.thread = threading.Thread(
            target=self._run, daemon=True,
            name=f"pool-{manager.provider.name}-{pool.name}")

    @property
    def id(self) -> str:
        return self.component.id

    @property
    def provider(self) -> Provider:
        return self.manager.provider

    def __repr__(self) -> str:
        return f"<PoolWorker {self.provider.name}/{self.pool.name}>"

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        self.registration.register()
        self.thread.start()

    def stop(self) -> None:
        """Stop taking requests; hand back the ones held, unregister."""
        self._stopped.set()
        self.wake.set()
        if self.thread.is_alive() and threading.current_thread() is not self.thread:
            self.thread.join(timeout=30)
        for handler in list(self.handlers.values()):
            handler.hand_back()
        self.registration.unregister()

    def reconfigure(self, pool: Pool) -> None:
        self.pool = pool
        self.wake.set()

    def _run(self) -> None:
        interval = self.launcher.idle_interval
        last_assign = 0.0
        gap = MIN_PASS_GAP
        while not self._stopped.is_set():
            timeout = interval
            if self.assign_due:
                timeout = max(0.0, last_assign + gap - time.monotonic())
            self.wake.wait(timeout)
            self.wake.clear()
            if self._stopped.is_set():
                break
            if not self.launcher.client.connected:
                self.launcher.client.wait_until_connected(1.0)
                continue
            try:
                self.in_pass = True
                self._check_session()
                # Handler news (launches done, cancels) at once: finishing a
                # request never waits for the next assignment.
                self._poll_handlers()
                started = time.monotonic()
                if started < last_assign + gap:
                    self.assign_due = True
                    continue
                self.assign_due = False
                self._assign()
                # After the pass: it decides whether we are deferring (paused).
                self._update_component()
                last_assign = time.monotonic()
                # Events arriving during the gap are handled by one
                # assignment; a costly one (a long backlog) waits longer.
                gap = min(MAX_PASS_GAP,
                          max(MIN_PASS_GAP, PASS_GAP_FACTOR * (last_assign - started)))
            except KazooException as exc:
                log.warning("%r: ZooKeeper error during a pass: %s", self, exc)
                self.wake.set()
                self._stopped.wait(0.5)
            except Exception:
                log.exception("%r: pass failed", self)
                self._stopped.wait(0.5)
            finally:
                self.in_pass = False

    def pending_work(self) -> list[str]:
        """What this worker still has to do (empty: it waits for news)."""
        pending = []
        if self.wake.is_set() or self.in_pass or self.assign_due:
            pending.append("a pass")
        with self.mutex:
            if self.events:
                pending.append(f"{len(self.events)} events")
            if self.in_flight:
                pending.append("accepts in progress")
        busy = [h.id for h in list(self.handlers.values())
                if h.filling or h.launching or h.finishing]
        if busy:
            pending.append(f"requests {','.join(busy)} launching or ending")
        if self.making_room:
            pending.append("making room")
        return pending

    def _check_session(self) -> None:
        generation = self.launcher.client.session_generation
        if generation == self._generation:
            return
        # Every lock we held vanished with the old session: drop the work
        # without writing; whoever sees it next reclaims it.
        log.warning("%r: ZooKeeper session was lost; dropping %d requests in "
                    "progress", self, len(self.handlers))
        self._generation = generation
        with self.mutex:
            self.handlers.clear()
            self.in_flight.clear()
            self.claimed.clear()
            self.unindexed.clear()
            self.events.clear()
            self.needing.clear()

    def _update_component(self) -> None:
        self.registration.update(
            supported_labels=sorted(self.pool.labels),
            priority=self.provider.pool_priority(self.pool),
            paused=self.deferred > 0)

    # -- handler completion ------------------------------------------------

    def post(self, event: HandlerEvent) -> None:
        """Tell the pool thread about one of its handlers (any thread)."""
        with self.mutex:
            if isinstance(event, Ended):
                # The handler is done with: out of the registry at once, so
                # the next pass neither counts its nodes nor waits for it.
                if self.handlers.get(event.handler.id) is event.handler:
                    del self.handlers[event.handler.id]
            else:
                self.events.append(event)
        self.wake.set()

    def _apply_events(self) -> set[str]:
        """Change handler state as the events say (pool thread); returns
        the handlers concerned."""
        with self.mutex:
            events, self.events = self.events, []
        touched = set()
        for event in events:
            handler = event.handler
            if self.handlers.get(handler.id) is not handler:
                continue  # ended, or dropped with a lost session
            if isinstance(event, LaunchEnded):
                handler.launch_ended(event)
            elif isinstance(event, Cancelled):
                handler.cancelled = True
            elif isinstance(event, FillEnded):
                handler.filling = False
            touched.add(handler.id)
        return touched

    def _poll_handlers(self) -> None:
        dirty = self._apply_events()
        for request_id in dirty:
            handler = self.handlers.get(request_id)
            if handler is None:
                continue
            action = handler.evaluate()
            if action == Next.NEEDS:
                self.needing.add(request_id)
            if action in ENDINGS:
                handler.finishing = True
                self.launcher.finisher.submit(handler.finish, action)

    def decline_request(self, request: NodeRequest, reason: str, failed: bool = False,
                        provider_wide: bool = False) -> None:
        """Add our id to declined_by; fail if every registered pool has.
        ``provider_wide``: the ids of every registered pool of our provider
        too (ours in other launchers, other pools), so the request moves on
        to another provider; ``failed``: the provider is recorded as one
        that failed the request (its pools registering later decline it)."""
        components, _ = self._components()
        decliners = [self.id]
        if provider_wide:
            decliners += [c.id for c in components
                          if c.provider_name == self.provider.name and c.id]
        for pool_id in decliners:
            if pool_id not in request.declined_by:
                request.declined_by.append(pool_id)
        if failed:
            request.add_failed_provider(self.provider.name)
        request.nodes = []
        if scheduler.all_declined(request, components):
            request.set_state(RequestState.FAILED)
            log.info("Request %s failed: declined by every pool (%s: %s)",
                     request.id, self.id, reason)
            self.launcher.stats.request_done(request, "failed")
        else:
            request.set_state(RequestState.REQUESTED)
            log.info("Request %s declined by %s: %s", request.id, self.id, reason)
        self.launcher.store.update_request(request)

    def cancel(self, request_id: str) -> None:
        handler = self.handlers.get(request_id)
        if handler is not None:
            self.post(Cancelled(handler))

    # -- assignment ----------------------------------------------------------

    def _components(self) -> tuple[list, scheduler.PoolDirectory]:
        components, directory = self.launcher.views.pools()
        if not any(c.id == self.id for c in components):
            # Our own registration may not have reached the cache yet.
            components = components + [self.component]
            directory = scheduler.PoolDirectory(components)
        return components, directory

    def usage_now(self) -> tuple[Resources, Resources]:
        """Resources used in this pool and in the whole provider (any state):
        the cache's index, plus our nodes not yet in the cache, plus what
        accepts in progress have reserved."""
        usage = self.launcher.usage
        pool_used = usage.pool_usage(self.provider.name, self.pool.name)
        provider_used = usage.provider_usage(self.provider.name)
        with self.mutex:
            unindexed = list(self.unindexed)
        for request_id in unindexed:
            handler = self.handlers.get(request_id)
            pending = False
            for node in list(handler.nodes) if handler is not None else ():
                if node is not None and node.resources and not usage.contains(node.id):
                    pool_used.add(node.resources)
                    provider_used.add(node.resources)
                    pending = True
            if not pending:
                # Every node indexed (counted there from now on), or gone.
                with self.mutex:
                    self.unindexed.discard(request_id)
        with self.mutex:
            reserved = self.in_flight.total.copy()
        pool_used.add(reserved)
        provider_used.add(reserved)
        return pool_used, provider_used

    def _label_need(self, label: str) -> Resources | None | Unknown:
        return self.manager.label_quota(label)

    def _need_of(self, label: str) -> Resources:
        """What one node of the label uses, as far as is known."""
        need = self.manager.label_quota(label)
        return need if isinstance(need, Resources) else Resources()

    def _cloud_unanswered(self, request: NodeRequest) -> bool:
        """Whether the cloud has yet to say what a label of the request
        needs or whether its image exists (the request waits, not declined)."""
        for label in set(request.node_types):
            pool_label = self.pool.labels.get(label)
            if pool_label is not None and (
                    isinstance(self.manager.label_quota(label), Unknown)
                    or isinstance(self.manager.label_available(pool_label), Unknown)):
                return True
        return False

    def _image_available(self, label_name: str) -> bool | Unknown:
        label = self.pool.labels.get(label_name)
        if label is None:
            return False
        return self.manager.label_available(label)

    def _assign(self) -> None:
        provider = self.provider
        if provider.max_concurrency == 0:
            return
        pool = self.pool
        launcher = self.launcher
        my_labels = set(pool.labels)
        components, directory = self._components()
        me = next(c for c in components if c.id == self.id)
        room, cloud_limits = self._room()
        assignment = AssignmentPass(room, self._reusable_nodes(), self._need_of)
        capacity = launcher.capacity
        avoided = capacity.avoided_labels(provider.name)

        def move_on(labels: set[str], candidates) -> bool:
            """Labels whose flavor the provider keeps refusing go to
            another provider, when one could serve them."""
            return bool(avoided and labels & avoided) and capacity.alternatives(
                provider.name, labels, candidates)

        # Requests we already hold come first: they wait for relaunches.
        waiting = []
        for request_id in list(self.needing):
            handler = self.handlers.get(request_id)
            if handler is None or handler.finishing or handler.cancelled:
                self.needing.discard(request_id)
            elif not (handler.filling or handler.launching):
                waiting.append(handler)
        for handler in sorted(waiting, key=lambda h: h.request.sort_key()):
            missing = handler.missing()
            if not missing:
                self.needing.discard(handler.id)
                continue
            if move_on({handler.request.node_types[i] for i in missing},
                       directory.candidates(handler.request)):
                self.needing.discard(handler.id)
                handler.finishing = True
                launcher.finisher.submit(handler.finish, Next.MOVE)
                continue
            need = assignment.relaunch([handler.request.node_types[i] for i in missing])
            if need is not None:
                self.needing.discard(handler.id)
                self._submit_fill(handler, missing, need)

        handlers, in_flight, my_id = self.handlers, self.in_flight, self.id
        disabled = pool.max_servers is not None and pool.max_servers <= 0
        reasons: dict[tuple, str | None] = {}
        for seen, candidates in self._open_requests(directory):
            request = launcher.requests.current_open(seen.id)
            if request is None or request.id in handlers or request.id in in_flight \
                    or my_id in request.declined_by:
                continue
            if request is not seen:
                candidates = directory.candidates(request)
            if move_on(set(request.node_types), candidates) or scheduler.skip_reason(
                    request, me, my_labels, capacity.not_avoiding(
                        candidates, set(request.node_types))):
                continue
            if not request_fits(request):
                self._too_large(request)
                continue
            unanswered = not disabled and self._cloud_unanswered(request)
            if unanswered:
                reason = None
            else:
                # Within a pass the answer depends on the labels alone (and
                # on whether this provider failed the request before).
                labels = (tuple(request.node_types),
                          provider.name in request.failed_providers)
                if labels in reasons:
                    reason = reasons[labels]
                else:
                    reason = reasons[labels] = scheduler.decline_reason(
                        request, provider, pool, self._image_available,
                        self._label_need, cloud_limits)
            decision = assignment.offer(request, reason, cloud_unanswered=unanswered)
            if decision.verdict == Verdict.DEFER:
                continue
            with self.mutex:
                self.in_flight[request.id] = decision.need
                self.claimed.update(n.id for n in decision.claims if n is not None)
            launcher.executor.submit(self._accept, request, decision.reason,
                                     decision.claims, decision.need)
        self.deferred = assignment.deferred
        if assignment.short_of_quota:
            self._make_room(assignment.reusable)

    def _open_requests(self, directory: scheduler.PoolDirectory
                       ) -> Iterable[tuple[NodeRequest, list]]:
        """The open requests this pool has to look at, with their candidate
        pools: those it could serve and those nobody can (to decline)."""
        views = self.launcher.views
        if directory is not views.pools()[1]:
            # Not registered yet: the shared split does not know us.
            return ((r, directory.candidates(r)) for r in views.ordered_requests())
        mine, shared, orphans, current = views.requests_for(self.id)
        if not current:
            self.assign_due = True
        if shared:
            # Another launcher's pool owns these; we try those it has left
            # open for long (hung, or waiting for quota as we all are).
            cutoff = time.time() - TAKEOVER_SECONDS
            stale = [c for c in shared if c[0].state_time < cutoff]
            if stale:
                mine = heapq.merge(mine, stale, key=lambda c: c[0].sort_key())
        return itertools.chain(mine, orphans)

    def _room(self) -> tuple[Room, Resources | None]:
        """What this pool may still start, from usage and limits now; and
        the cloud's limits (None: none known or the pool ignores them)."""
        pool = self.pool
        launcher = self.launcher
        pool_used, provider_used = self.usage_now()
        cloud_limits = None if pool.ignore_provider_quota else self.manager.cloud_limits()
        limits_known = not isinstance(cloud_limits, Unknown)
        if not isinstance(cloud_limits, Resources):
            cloud_limits = None
        tenant_config = launcher.config.tenant_resource_limits
        room = Room(
            pool=pool_limits(pool).subtract(pool_used),
            cloud=cloud_limits.copy().subtract(provider_used)
            if cloud_limits is not None else None,
            launches=self.manager.active_launches(),
            max_concurrency=self.provider.max_concurrency,
            can_launch=self.manager.can_launch, limits_known=limits_known,
            tenant_usage=launcher.usage.tenant_usage() if tenant_config else {},
            tenant_limits={name: tenant_limits(t) for name, t in tenant_config.items()})
        return room, cloud_limits

    def _too_large(self, request: NodeRequest) -> None:
        """A request we could not write back once fulfilled (ZooKeeper would
        drop our connection): left untouched, for its requestor to cancel."""
        if request.id in self.too_large:
            return
        if len(self.too_large) > 10000:
            self.too_large.clear()
        self.too_large.add(request.id)
        log.error("Request %s is %d bytes: too large to be stored again once "
                  "fulfilled (ZooKeeper's limit is about 1 MiB); it is not served",
                  request.id, request.encoded_size())

    def _make_room(self, reusable: dict[str, list[Node]]) -> None:
        """At quota: delete the oldest unused ready node of this pool.

        Only one at a time: while a node of this pool is being deleted, its
        quota is about to come back, and deleting more would only waste nodes.
        """
        if self.making_room:
            return
        # Cheap test first: the scan below reads every node of the launcher.
        idle = {n.id: n for members in reusable.values() for n in members}
        if not idle:
            return
        if any(n.state == NodeState.DELETING and n.provider == self.provider.name
               and n.pool == self.pool.name for n in self.launcher.nodes.nodes()):
            return
        oldest = min(idle.values(), key=lambda n: n.state_time)
        self.making_room = True

        def delete():
            try:
                if self.launcher.store.delete_node_if(oldest.id, lambda n: n.idle):
                    log.info("%r is at quota; deleting unused node %s to make room",
                             self, oldest.id)
            except Exception:
                log.exception("%r: making room failed", self)
            finally:
                self.making_room = False

        self.launcher.executor.submit(delete)

    def _reusable_nodes(self) -> dict[str, list[Node]]:
        by_label: dict[str, list[Node]] = {}
        idle = self.launcher.usage.idle_nodes(self.provider.name, self.pool.name)
        locked = self.launcher.nodes.locked_among(n.id for n in idle)
        for node in idle:
            if node.id not in self.claimed and node.id not in locked:
                for label in node.type:
                    by_label.setdefault(label, []).append(node)
        for members in by_label.values():
            # Oldest last, so pop() hands out the oldest ready node first.
            members.sort(key=lambda n: n.state_time, reverse=True)
        return by_label
