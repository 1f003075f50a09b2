"""Carrying on the work of a launcher that died (or stopped) mid-way.

A dead launcher's locks go with its ZooKeeper session; what it was doing
stays in the records: requests ``pending``, nodes ``building`` with their
launch's progress (:class:`~nodepool.zk.records.Progress`: the cloud id, the
driver machine's step, the attempt and its start time). The
:class:`Resumer` of every live launcher looks for such orphans when
something tells it one may exist - a launcher or pool unregistered, a
building node unlocked, our own session renewed - and on a timer:

* a pending request nobody holds is **adopted** by a pool of ours that runs
  its nodes' provider pool: it takes the request's lock, then its nodes -
  ready ones fill their slots, building ones have their launch resumed at
  the step where it stopped, nodes never started are dropped - and
  launches what is still missing. Without nodes to carry on (or nobody of
  ours serving their pool) the request is put back in the queue, as
  upstream does with lost requests;
* a building node whose request is not pending any more (it was cancelled,
  or put back) has its launch resumed alone, and once ready it is free for
  any request.

Who resumes what is decided by rendezvous hashing over the launchers
serving the pool (:mod:`nodepool.launcher.sharing`); locks make it safe
when two try. Deletes carry on through the delete worker, which reads the
delete's progress the same way.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from kazoo.exceptions import KazooException

from nodepool.launcher.lifecycle import LaunchResult
from nodepool.launcher.sharing import TAKEOVER_SECONDS
from nodepool.worker import PeriodicWorker
from nodepool.zk.locks import Lock
from nodepool.zk.records import (
    LaunchOperation, Node, NodeRequest, NodeState, RequestState,
)
from nodepool.zk.store import RecordNotFound, VersionConflict

if TYPE_CHECKING:  # pragma: no cover
    from nodepool.launcher.launcher import Launcher
    from nodepool.launcher.pool import PoolWorker

log = logging.getLogger("nodepool.launcher.resume")

# An orphaned launch nobody resumes for this long (no live launcher of ours
# can: its pool or label is gone) is deleted like upstream's.
GIVE_UP_SECONDS = 60.0
LOCK_TIMEOUT = 10.0


def launch_progress(node: Node):
    """The node's launch progress, if it is a launch that may be resumed."""
    if node.state != NodeState.BUILDING:
        return None
    progress = node.progress
    if progress is None or progress.operation != LaunchOperation.LAUNCH:
        return None
    return progress


class Resumer(PeriodicWorker):
    """Finds orphaned requests and launches and carries them on."""

    settle = 0.02  # one sweep for a burst of hints (a launcher's locks going)

    def __init__(self, launcher: "Launcher", interval: float):
        super().__init__("resumer", interval, launcher.client)
        self.launcher = launcher
        self._mutex = threading.Lock()
        # Request and node ids being adopted or resumed by our executor.
        self._working: set[str] = set()
        # Node id -> when we first saw it orphaned (for takeover and give-up).
        self._orphaned: dict[str, float] = {}
        self._generation = launcher.client.session_generation

    def start(self) -> None:
        self.launcher.client.add_state_listener(self._on_state)
        super().start()

    def stop(self) -> None:
        self.launcher.client.remove_state_listener(self._on_state)
        super().stop()

    def _on_state(self, state: str) -> None:
        # A new session: locks of ours are gone with the old one, and what
        # we drove is orphaned like a dead launcher's.
        if state == "CONNECTED" and \
                self._generation != self.launcher.client.session_generation:
            self._generation = self.launcher.client.session_generation
            self.wake.set()

    @property
    def busy(self) -> bool:
        with self._mutex:
            return bool(self._working) or self.pending

    # -- hints (cache threads: cheap) -------------------------------------------

    def hint(self, node: Node) -> bool:
        """Whether an unlocked node is an orphaned launch to leave to a
        resumer (ours, woken here, or another launcher's) rather than to
        delete."""
        progress = launch_progress(node)
        if progress is None:
            return False
        first = self._orphaned.setdefault(node.id or "", time.monotonic())
        if time.monotonic() - first > GIVE_UP_SECONDS:
            return False
        membership = self.launcher.views.membership()
        live = [m for m in membership.serving(node.provider or "", node.pool)
                if m != progress.launcher]
        if self._can_resume(node) is None and not live:
            return False
        self.wake.set()
        return True

    # -- the sweep -----------------------------------------------------------------

    def run_once(self) -> None:
        launcher = self.launcher
        launcher.nodes.barrier()
        launcher.requests.barrier()
        # What we hold in this session (a pool drops what the last one held
        # at its next pass; it is orphaned already).
        held = {handler.id for manager in list(launcher.managers.values())
                for worker in list(manager.workers.values())
                for handler in list(worker.handlers.values())
                if not handler.lock.session_lost}
        by_request: dict[str, list[Node]] = {}
        orphans = []
        for node in launcher.nodes.nodes():
            if node.allocated_to:
                by_request.setdefault(node.allocated_to, []).append(node)
            if launch_progress(node) is not None and \
                    not launcher.nodes.is_locked(node.id):
                orphans.append(node)
        now = time.monotonic()
        with self._mutex:
            self._orphaned = {n.id or "": self._orphaned.get(n.id or "", now)
                              for n in orphans}
        for request in launcher.requests.requests():
            if request.state == RequestState.PENDING and request.id not in held:
                self._consider_request(request, by_request.get(request.id, []))
        for node in orphans:
            request = launcher.requests.get(node.allocated_to or "")
            if request is None or request.state != RequestState.PENDING:
                self._consider_alone(node)

    def _owned(self, key: str, provider: str | None, pool: str | None,
               since: float | None) -> bool:
        """Whether we are the one to try ``key`` now: its owner among the
        launchers serving the pool (any launcher, when the pool is not
        known), or anyone once it has waited long."""
        membership = self.launcher.views.membership()
        return membership.owns(self.launcher.id, key, provider, pool) or (
            since is not None and time.monotonic() - since > TAKEOVER_SECONDS)

    def _start(self, key: str, work, *args) -> None:
        with self._mutex:
            if key in self._working:
                return
            self._working.add(key)

        def run():
            try:
                work(*args)
            except KazooException as exc:
                log.warning("Resuming %s: ZooKeeper error: %r", key, exc)
            except Exception:
                log.exception("Resuming %s failed", key)
            finally:
                with self._mutex:
                    self._working.discard(key)

        if not self.launcher.submit(run):
            with self._mutex:
                self._working.discard(key)

    def _consider_request(self, request: NodeRequest, nodes: list[Node]) -> None:
        """A pending request not held here: held by a live launcher (its
        nodes locked), or orphaned."""
        nodes_cache = self.launcher.nodes
        if nodes and all(nodes_cache.is_locked(n.id) for n in nodes):
            return  # its holder is at work
        places = {(n.provider, n.pool) for n in nodes if n.provider}
        provider, pool = next(iter(places)) if len(places) == 1 else (None, None)
        since = min((self._orphaned.get(n.id or "", time.monotonic()) for n in nodes),
                    default=None)
        if self._owned(request.id or "", provider, pool, since):
            self._start(request.id or "", self._adopt_request, request.id)

    def _consider_alone(self, node: Node) -> None:
        since = self._orphaned.get(node.id or "")
        if self._can_resume(node) is not None and \
                self._owned(node.id or "", node.provider, node.pool, since):
            self._start(node.id or "", self._resume_alone, node.id)

    def _can_resume(self, node: Node) -> "PoolWorker | None":
        """Our pool worker that can carry the node's launch on, if any."""
        manager = self.launcher.managers.get(node.provider or "")
        if manager is None or not manager.resumes_launches:
            return None
        worker = manager.workers.get(node.pool or "")
        if worker is None or not node.type or node.type[0] not in worker.pool.labels:
            return None
        return worker

    # -- adopting a request ---------------------------------------------------------

    def _adopt_request(self, request_id: str) -> None:
        launcher = self.launcher
        store = launcher.store
        lock = store.lock_request(request_id)
        if lock is None:
            return  # someone holds it: alive after all
        try:
            fresh = store.get_request(request_id)
            if fresh is None or fresh.state != RequestState.PENDING:
                lock.release()
                return
            launcher.nodes.barrier()
            nodes = [n for n in launcher.nodes.nodes() if n.allocated_to == request_id]
            places = {(n.provider, n.pool) for n in nodes if n.provider}
            worker = None
            if len(places) == 1:
                provider, pool = next(iter(places))
                manager = launcher.managers.get(provider or "")
                worker = manager.workers.get(pool or "") if manager else None
            if worker is None or not any(n.state in (NodeState.READY, NodeState.BUILDING)
                                         for n in nodes):
                self._requeue(fresh, lock, nodes)
                return
        except BaseException:
            lock.release()
            raise
        launcher.count("requests_adopted")
        worker.adopt(fresh, lock, nodes)

    def _requeue(self, request: NodeRequest, lock: Lock, nodes: list[Node]) -> None:
        """Back to the queue, its nodes freed (nothing of it to carry on here)."""
        try:
            for node in nodes:
                self._free_node(node.id, request.id)
            request.nodes = []
            request.set_state(RequestState.REQUESTED)
            self.launcher.store.update_request(request)
            log.info("Request %s was lost by its launcher; it is requested again",
                     request.id)
        except RecordNotFound:
            pass
        finally:
            lock.release()

    def _free_node(self, node_id: str | None, request_id: str | None) -> None:
        store = self.launcher.store
        # Bounded wait: one hung lock holder must not stall the resumer.
        lock = store.lock_node(node_id, blocking=True, timeout=LOCK_TIMEOUT)
        if lock is None:
            return
        try:
            node = store.get_node(node_id)
            if node is None or node.allocated_to != request_id:
                return
            if node.state == NodeState.INIT:
                node.set_state(NodeState.DELETING)
            node.allocated_to = None
            store.update_node(node)
        finally:
            lock.release()

    # -- a launch alone --------------------------------------------------------------

    def _resume_alone(self, node_id: str) -> None:
        """Carry on a launch whose request is gone or back in the queue;
        once ready the node is free for any request."""
        launcher = self.launcher
        store = launcher.store
        lock = store.lock_node(node_id)
        if lock is None:
            return
        try:
            node = store.get_node(node_id)
            worker = self._can_resume(node) if node is not None else None
            if node is None or worker is None or launch_progress(node) is None:
                lock.release()
                return
            request = store.get_request(node.allocated_to) if node.allocated_to else None
            if request is not None and request.state == RequestState.PENDING:
                lock.release()  # adopted with its request instead
                self.wake.set()
                return
            task = worker.resumed_launch(node, lock, request,
                                         lambda n, r: self._alone_done(n, r, lock))
        except BaseException:
            lock.release()
            raise
        if task is not None:
            log.info("Node %s: resuming its launch alone (request %s is %s)",
                     node_id, node.allocated_to,
                     request.state if request is not None else "gone")
            worker.manager.launch(task)

    def _alone_done(self, node: Node, result: LaunchResult, lock: Lock) -> None:
        """Runner thread: the node is free for any request now (or failed,
        and the delete worker takes it once unlocked)."""
        try:
            if result == LaunchResult.READY and node.allocated_to \
                    and not lock.session_lost:
                node.allocated_to = None
                self.launcher.store.update_node(node, check_version=True)
        except (RecordNotFound, VersionConflict):
            pass
        except KazooException as exc:
            log.warning("Node %s: cannot free it after its resumed launch: %r",
                        node.id, exc)
        finally:
            lock.release()
