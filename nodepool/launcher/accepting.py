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
from nodepool.launcher.lifecycle import LaunchResult, NodeLaunch
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

    def _fill(self, handler: RequestHandler, missing: list[int]) -> None:
        """Create and start launching a node for each missing slot."""
        store = self.launcher.store
        request = handler.request
        for index in missing:
            label_name = request.node_types[index]
            label = self.pool.labels[label_name]
            node = Node(state=NodeState.INIT, provider=self.provider.name,
                        pool=self.pool.name, type=[label_name], launcher=self.id,
                        allocated_to=request.id, tenant_name=request.tenant_name,
                        requestor=request.requestor,
                        attributes=self.pool.node_attributes,
                        az=self._choose_az(handler),
                        resources=dict(self._need_of(label_name)))
            store.create_node(node)
            # Lock it and mark it building in one round trip (the lock is held
            # the moment "building" is written, as the protocol requires).
            node.set_state(NodeState.BUILDING)
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
                      label_name)
            self.manager.launch(NodeLaunch(
                node=node, lock=lock, store=store, adapter=self.manager.adapter,
                provider=self.provider, pool=self.pool, label=label,
                images=self.launcher.images, request=request,
                callback=lambda n, r, i=index: self.post(
                    LaunchEnded(handler, i, n.id, r)),
                stats=self.launcher.stats,
                diskimage=self.launcher.config.diskimages.get(label.diskimage or "")))
