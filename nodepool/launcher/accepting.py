"""Taking a request: the ZooKeeper work a pool worker hands to the
launcher's executor, so round trips overlap instead of queueing behind each
other (lock and mark the request pending, take ready nodes, create and start
launching the others).

Mixed into :class:`nodepool.launcher.pool.PoolWorker`, which decides what to
take; these methods run on executor threads and report back through the
worker's events and shared sets, under its mutex.
"""

from __future__ import annotations

import logging
import random
import threading
from typing import TYPE_CHECKING

from kazoo.exceptions import KazooException

from nodepool.config.model import Pool, Provider
from nodepool.launcher import scheduler
from nodepool.launcher.handler import FillEnded, LaunchEnded, RequestHandler
from nodepool.launcher.lifecycle import LaunchResult, NodeLaunch, new_progress
from nodepool.launcher.reservation import ReservationFailed
from nodepool.resources import Resources
from nodepool.zk.locks import Lock
from nodepool.zk.records import Node, NodeRequest, NodeState, RequestState
from nodepool.zk.store import RecordNotFound, VersionConflict

if TYPE_CHECKING:  # pragma: no cover
    from nodepool.launcher.launcher import Launcher, ProviderManager

log = logging.getLogger("nodepool.launcher.pool")


class Accepting:
    """What a pool worker does on executor threads for a request it took.
    PoolWorker provides these attributes, and the methods ``post``,
    ``decline_request`` and ``_need_of``."""

    id: str
    launcher: "Launcher"
    manager: "ProviderManager"
    pool: Pool
    provider: Provider
    mutex: threading.Lock
    wake: threading.Event
    handlers: dict[str, RequestHandler]
    in_flight: dict[str, Resources]
    claimed: set[str]
    unindexed: set[str]

    def _accept(self, request: NodeRequest, reason: str | None,
                claims: list[Node | None], need: Resources) -> None:
        store = self.launcher.store
        lock = None
        try:
            fresh = request.copy()
            fresh.version = request.version
            if reason is None:
                # The common case in one round trip: lock and mark pending,
                # conditioned on the version we decided on.
                fresh.set_state(RequestState.PENDING)
                lock = store.lock_and_update_request(fresh)
                if lock is not None:
                    self._start_handler(fresh, lock, claims)
                    return
                fresh = request.copy()
            lock = store.lock_request(request.id)
            if lock is None:
                return
            # Instead of re-reading after locking, write conditioned on the
            # version we decided on: success proves our copy was current.
            if reason is not None:
                fresh = self._fresh_request(fresh)
                try:
                    if fresh is not None:
                        self.decline_request(fresh, reason)
                finally:
                    lock.release()
                return
            fresh.set_state(RequestState.PENDING)
            try:
                store.update_request(fresh, check_version=True)
            except VersionConflict:
                fresh = self._fresh_request(request)
                if fresh is None:
                    lock.release()
                    return
                fresh.set_state(RequestState.PENDING)
                store.update_request(fresh)
            except RecordNotFound:
                lock.release()
                return
            self._start_handler(fresh, lock, claims)
        except KazooException as exc:
            log.warning("Request %s: ZooKeeper error while accepting: %s",
                        request.id, exc)
            if lock is not None and request.id not in self.handlers:
                lock.release()
        except Exception:
            log.exception("Request %s: accepting failed", request.id)
            if lock is not None and request.id not in self.handlers:
                lock.release()
        finally:
            with self.mutex:
                self.in_flight.pop(request.id, None)
                self.claimed.difference_update(n.id for n in claims if n is not None)
            self.wake.set()

    def _start_handler(self, request: NodeRequest, lock: Lock,
                       claims: list[Node | None]) -> None:
        """The request is ours (locked, pending): reuse and launch its nodes."""
        handler = RequestHandler(self, request, lock)
        log.debug("Request %s accepted by %s (%s)", request.id, self.id,
                  ",".join(request.node_types))
        with self.mutex:
            self.handlers[request.id] = handler
        try:
            for index, node in enumerate(claims):
                if node is not None:
                    self._reuse(handler, index, node)
            missing = handler.missing()
            if missing and not self.manager.can_launch:
                # A ready node was taken by someone else meanwhile; a pool
                # that cannot launch hands the request back, undeclined.
                with self.mutex:
                    self.handlers.pop(request.id, None)
                handler.hand_back()
                return
            self._fill(handler, missing)
        finally:
            self.post(FillEnded(handler))

    def _fresh_request(self, request: NodeRequest) -> NodeRequest | None:
        """Re-read a request we hold locked; None unless still open for us."""
        fresh = self.launcher.store.get_request(request.id)
        if fresh is None or not scheduler.is_open(fresh, self.id):
            return None
        return fresh

    def _reuse(self, handler: RequestHandler, index: int, node: Node) -> None:
        store = self.launcher.store
        lock = store.lock_node(node.id)
        if lock is None:
            return
        try:
            fresh = store.get_node(node.id)
            if (fresh is None or fresh.state != NodeState.READY or fresh.allocated_to
                    or (handler.az and fresh.az and fresh.az != handler.az)):
                lock.release()
                return
            if not self.manager.reusable(fresh):
                fresh.set_state(NodeState.DELETING)
                store.update_node(fresh)
                lock.release()
                return
            request = handler.request
            fresh.allocated_to = request.id
            fresh.tenant_name = request.tenant_name
            fresh.requestor = request.requestor
            store.update_node(fresh)
        except BaseException:
            lock.release()
            raise
        log.debug("Request %s: reusing ready node %s", request.id, fresh.id)
        with handler.mutex:
            handler.nodes[index] = fresh
            handler.node_locks[index] = lock
            handler.results[index] = LaunchResult.READY
            handler.az = handler.az or fresh.az

    def _submit_fill(self, handler: RequestHandler, missing: list[int],
                     need: Resources) -> None:
        with self.mutex:
            self.in_flight[handler.id] = need
        handler.filling = True

        def fill():
            try:
                self._fill(handler, missing)
            except Exception:
                log.exception("Request %s: relaunching failed", handler.id)
            finally:
                with self.mutex:
                    self.in_flight.pop(handler.id, None)
                self.post(FillEnded(handler))

        self.launcher.executor.submit(fill)

    def _choose_az(self, handler: RequestHandler) -> str | None:
        if handler.az is None:
            zones = self.pool.availability_zones or self.manager.azs()
            handler.az = random.choice(zones) if zones else None
        return handler.az

    def _new_node(self, handler: RequestHandler, index: int) -> Node:
        request = handler.request
        label_name = request.node_types[index]
        node = Node(state=NodeState.INIT, provider=self.provider.name,
                    pool=self.pool.name, type=[label_name], launcher=self.id,
                    allocated_to=request.id, tenant_name=request.tenant_name,
                    requestor=request.requestor,
                    attributes=self.pool.node_attributes,
                    az=self._choose_az(handler),
                    resources=dict(self._need_of(label_name)))
        node.set_failed_providers(request.failed_providers)
        return node

    def _fill(self, handler: RequestHandler, missing: list[int]) -> None:
        """Create and start launching a node for each missing slot: all of
        them, or none while they do not fit the quota (the slots then wait
        for the pool's next pass)."""
        store = self.launcher.store
        request = handler.request
        nodes = [self._new_node(handler, index) for index in missing]
        try:
            reserved = self.manager.desk.reserve(self.pool, nodes)
        except ReservationFailed as exc:
            # ZooKeeper out of reach, say: the slots wait for the next pass.
            log.warning("Request %s: cannot reserve quota for %d node(s) now: %s",
                        request.id, len(nodes), exc)
            return
        if not reserved:
            log.info("Request %s: no quota for %d node(s) in %s/%s now; they wait",
                     request.id, len(nodes), self.provider.name, self.pool.name)
            return
        for index, node in zip(missing, nodes):
            label = self.pool.labels[request.node_types[index]]
            # Lock it and mark it building in one round trip (the lock is held
            # the moment "building" is written, as the protocol requires).
            node.set_state(NodeState.BUILDING)
            node.set_progress(new_progress(self.launcher.id))
            lock = store.lock_and_update_new_node(node)
            if lock is None:
                node.state = NodeState.INIT
                lock = store.lock_node(node.id, new=True)
                if lock is None:  # pragma: no cover - nobody knows this node yet
                    raise RuntimeError(f"cannot lock new node {node.id}")
                node.set_state(NodeState.BUILDING)
                store.update_node(node)
            with handler.mutex:
                handler.nodes[index] = node
                handler.node_locks[index] = lock
                handler.results[index] = None
                handler.launching.add(index)
            with self.mutex:
                self.unindexed.add(handler.id)
            log.debug("Request %s: launching node %s (%s)", request.id, node.id,
                      label.name)
            self.launcher.count("launches")
            self.manager.launch(self._launch_task(
                node, lock, label, request, self._slot_callback(handler, index)))

    def _slot_callback(self, handler: RequestHandler, index: int):
        return lambda node, result: self.post(LaunchEnded(handler, index, node.id,
                                                          result))

    def _launch_task(self, node: Node, lock: Lock, label, request: NodeRequest | None,
                     callback) -> NodeLaunch:
        """The launch of a node (a new one, or one resumed)."""
        return NodeLaunch(
            node=node, lock=lock, store=self.launcher.store,
            adapter=self.manager.adapter, provider=self.provider, pool=self.pool,
            label=label, images=self.launcher.images, request=request,
            callback=callback, stats=self.launcher.stats,
            launcher_id=self.launcher.id,
            diskimage=self.launcher.config.diskimages.get(label.diskimage or ""))

    # -- carrying on a dead launcher's work (see nodepool.launcher.resume) --------

    def resumed_launch(self, node: Node, lock: Lock, request: NodeRequest | None,
                       callback) -> NodeLaunch | None:
        """The launch of a building node we hold locked, carried on from its
        progress (None: it cannot be); the node now says we drive it."""
        progress = node.progress
        label = self.pool.labels.get(node.type[0]) if node.type else None
        if progress is None or label is None or not self.manager.resumes_launches:
            return None
        previous = progress.launcher
        progress.launcher = self.launcher.id
        node.set_progress(progress)
        self.launcher.store.update_node(node, check_version=True)
        task = self._launch_task(node, lock, label, request, callback)
        task.resume()
        self.launcher.count("launches_resumed")
        log.info("Node %s: launch left by %s resumed by %s (attempt %d, %s)",
                 node.id, previous, self.launcher.id, progress.attempt,
                 progress.step)
        return task

    def adopt(self, request: NodeRequest, lock: Lock, nodes: list[Node]) -> None:
        """Take over a pending request whose launcher left it (we hold its
        lock now): its ready nodes fill their slots, its launches go on,
        nodes never launched are dropped and missing ones launched."""
        handler = RequestHandler(self, request, lock)
        with self.mutex:
            self.handlers[request.id] = handler
        kept: list[str] = []
        try:
            free = list(range(len(request.node_types)))
            for node in sorted(nodes, key=lambda n: n.id or ""):
                index = next((i for i in free if request.node_types[i] in node.type),
                             None)
                outcome = self._adopt_node(handler, index, node)
                if outcome is not None:
                    free.remove(index)
                    kept.append(f"{node.id} {outcome}")
            missing = handler.missing()
            log.info("Request %s adopted by %s: %s; %d to launch", request.id,
                     self.id, ", ".join(kept) or "no nodes kept", len(missing))
            if missing and not self.manager.can_launch:
                with self.mutex:
                    self.handlers.pop(request.id, None)
                handler.hand_back()
                return
            if missing:
                self._fill(handler, missing)
        finally:
            self.post(FillEnded(handler))

    def _adopt_node(self, handler: RequestHandler, index: int | None,
                    node: Node) -> str | None:
        """Take one node of an adopted request: "ready", "resumed", or None
        (not kept: locked elsewhere, gone, never launched, ended badly)."""
        store = self.launcher.store
        request = handler.request
        lock = store.lock_node(node.id)
        if lock is None:
            return None
        try:
            fresh = store.get_node(node.id)
            if fresh is None or fresh.allocated_to != request.id:
                lock.release()
                return None
            if fresh.state == NodeState.INIT:
                # Created but never launched: nothing of it in the cloud.
                fresh.allocated_to = None
                fresh.set_state(NodeState.DELETING)
                store.update_node(fresh)
            elif index is not None and fresh.state == NodeState.READY:
                with handler.mutex:
                    handler.nodes[index] = fresh
                    handler.node_locks[index] = lock
                    handler.results[index] = LaunchResult.READY
                    handler.az = handler.az or fresh.az
                return "ready"
            elif index is not None and fresh.state == NodeState.BUILDING:
                task = self.resumed_launch(fresh, lock, request,
                                           self._slot_callback(handler, index))
                if task is not None:
                    with handler.mutex:
                        handler.nodes[index] = fresh
                        handler.node_locks[index] = lock
                        handler.results[index] = None
                        handler.launching.add(index)
                        handler.az = handler.az or fresh.az
                    self.manager.launch(task)
                    return "resumed"
            elif fresh.state == NodeState.READY:
                fresh.allocated_to = None  # a slot too many: free for others
                store.update_node(fresh)
        except BaseException:
            lock.release()
            raise
        lock.release()
        return None
