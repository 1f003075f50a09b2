"""Housekeeping: deleting nodes, min-ready, leaks, lost requests, ages.

* :class:`DeleteWorker` reacts to node changes: a node that becomes ``used``
  (or failed, aborted, abandoned) and is unlocked is deleted at once, not at
  the next sweep. A slow sweep over the cache catches anything missed.
* :class:`MinReady` keeps ``min-ready`` ready nodes per label. The deficit is
  computed under a cluster-wide lock after a cache barrier, so several
  launchers sharing a label never over-provision it.
* :class:`Cleanup` runs the periodic tasks, each isolated from the others'
  errors: leaked instances and images, lost requests, max-ready-age,
  max-hold-age, lock directories of finished requests, empty node znodes.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import TYPE_CHECKING

from kazoo.exceptions import KazooException

from nodepool.drivers.base import META_BUILD_ID, META_NODE_ID, META_PROVIDER, \
    META_UPLOAD_ID
from nodepool.launcher.deletion import NodeDelete
from nodepool.launcher.sharing import TAKEOVER_SECONDS
from nodepool.worker import PeriodicWorker
from nodepool.zk import paths
from nodepool.zk.locks import Lock
from nodepool.zk.records import (
    MIN_READY_REQUESTOR, Node, NodeRequest, NodeState, RequestState,
)

if TYPE_CHECKING:  # pragma: no cover
    from nodepool.launcher.launcher import Launcher

log = logging.getLogger("nodepool.launcher.maintenance")

# States in which an unlocked node is reclaimed (spec 4.11.2), plus failed
# launches we store (upstream leaves them "building").
DELETABLE = {NodeState.USED, NodeState.IN_USE, NodeState.BUILDING, NodeState.FAILED,
             NodeState.DELETING, NodeState.DELETED, NodeState.ABORTED}
# An unlocked init node older than this was abandoned between its creation
# and its lock (upstream only reclaims these through lost requests).
INIT_GRACE = 60.0
# Lock directories of vanished requests older than this are removed.
REQUEST_LOCK_AGE = 300.0
LOCK_TIMEOUT = 10.0
MIN_READY_LOCK = f"{paths.ELECTIONS}/min-ready"


def _accounted_for(resource, node: Node | None) -> bool:
    """Whether the node record a resource names accounts for it. An
    instance whose node records another instance is a leak too (a create
    that went through after its launch was taken over, say) - unless the
    launch is still going, when the record's cloud id moves between
    attempts."""
    if node is None:
        return False
    if resource.type != "instance" or node.external_id is None \
            or node.state in (NodeState.INIT, NodeState.BUILDING):
        return True
    return str(node.external_id) == str(resource.id)


def deletable(node: Node) -> bool:
    """Whether an unlocked node in this state is to be reclaimed."""
    if node.state == NodeState.INIT:
        return time.time() - node.state_time >= INIT_GRACE
    return node.state in DELETABLE


class DeleteWorker:
    """Deletes reclaimable nodes and releases ready nodes of vanished requests."""

    def __init__(self, launcher: "Launcher", sweep_interval: float):
        self.launcher = launcher
        self.sweep_interval = sweep_interval
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._queued: set[str] = set()
        self._deleting: set[str] = set()
        self._working: set[str] = set()
        self._mutex = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="delete-worker")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    @property
    def busy(self) -> bool:
        """Nodes queued or being taken for deletion (deletes in progress
        run on the providers' runners)."""
        with self._mutex:
            return bool(self._queued or self._working)

    def consider(self, node: Node) -> None:
        """Cache listener hook: queue the node if it may need action.

        A locked node is left alone (its unlocking is an event of its own),
        and so is a ready node whose request still exists: most node events
        are one of these, and neither is worth a thread hop."""
        if node.state in DELETABLE or node.state == NodeState.INIT or (
                node.state == NodeState.READY and node.allocated_to):
            launcher = self.launcher
            if launcher.nodes.is_locked(node.id) or (
                    node.state == NodeState.READY
                    and launcher.requests.get(node.allocated_to) is not None):
                return
            if node.state == NodeState.BUILDING and launcher.resumer.hint(node):
                return  # a launch to carry on, not to delete
            with self._mutex:
                if node.id in self._queued or node.id in self._deleting:
                    return
                self._queued.add(node.id)
            self._queue.put(node.id)

    def _run(self) -> None:
        last_sweep = time.monotonic()
        while not self._stopped.is_set():
            timeout = max(0.0, last_sweep + self.sweep_interval - time.monotonic())
            try:
                node_id = self._queue.get(timeout=timeout)
            except queue.Empty:
                node_id = ""
            if self._stopped.is_set():
                return
            if node_id:
                with self._mutex:
                    self._queued.discard(node_id)
                self._dispatch(node_id)
            if time.monotonic() - last_sweep >= self.sweep_interval:
                last_sweep = time.monotonic()
                for node in self.launcher.nodes.nodes():
                    self.consider(node)

    def _dispatch(self, node_id: str) -> None:
        """Cheap checks here; locking and re-reading on the executor, so many
        nodes are taken in parallel."""
        node = self.launcher.nodes.get(node_id)
        if node is None or self.launcher.nodes.is_locked(node_id):
            return
        with self._mutex:
            if node_id in self._deleting or node_id in self._working:
                return
            self._working.add(node_id)

        def work():
            try:
                self._safe_handle(node_id)
            finally:
                with self._mutex:
                    self._working.discard(node_id)

        try:
            self.launcher.executor.submit(work)
        except RuntimeError:  # executor shut down: we are stopping
            with self._mutex:
                self._working.discard(node_id)

    def _safe_handle(self, node_id: str) -> None:
        if not self.launcher.client.connected:
            return
        try:
            self._handle(node_id)
        except KazooException as exc:
            log.warning("Node %s: ZooKeeper error in the delete worker: %s",
                        node_id, exc)
        except Exception:
            log.exception("Node %s: delete worker failed", node_id)

    def _handle(self, node_id: str) -> None:
        launcher = self.launcher
        node = launcher.nodes.get(node_id)
        if node is None or node_id in self._deleting:
            return
        manager = launcher.managers.get(node.provider or "")
        if manager is None and node.provider is not None:
            return
        if launcher.nodes.is_locked(node_id):
            return
        if node.state == NodeState.READY and node.allocated_to:
            self._release_if_orphaned(node)
            return
        if not deletable(node):
            return
        if node.state == NodeState.BUILDING and launcher.resumer.hint(node):
            return
        if node.provider is not None and not self._ours_to_delete(node):
            return
        store = launcher.store
        lock = store.lock_node(node_id)
        if lock is None:
            return
        if node.state == NodeState.DELETED or node.provider is None:
            try:
                store.delete_node_znode(node_id)  # our contender goes with it
                lock.forget()
            finally:
                lock.release()
            return
        log.info("Deleting node %s (%s, %s)", node_id, node.state, node.external_id)
        with self._mutex:
            self._deleting.add(node_id)
        # The task's first write is conditioned on the cached version, which
        # proves the copy current (or re-reads and re-checks).
        task = NodeDelete(node=node.copy(), lock=lock, store=store,
                          adapter=manager.adapter, still_deletable=deletable,
                          launcher_id=launcher.id)
        task.on_done = lambda done_node, deleted: self._deleted(task, done_node, deleted)
        manager.delete(task)

    def _ours_to_delete(self, node: Node) -> bool:
        """Launchers serving the node's provider share its deletes: the
        owner takes it at once, the others once it has waited a while."""
        launcher = self.launcher
        membership = launcher.views.membership()
        return membership.owns(launcher.id, node.id or "", node.provider) or \
            time.time() - node.state_time > TAKEOVER_SECONDS

    def _deleted(self, task: NodeDelete, node: Node, deleted: bool) -> None:
        with self._mutex:
            self._deleting.discard(node.id)
        if deleted:
            self.launcher.count("deletes")
            if task.resumed:
                self.launcher.count("deletes_resumed")
            self.launcher.node_deleted(node)

    def _release_if_orphaned(self, node: Node) -> None:
        """A ready node allocated to a request that no longer exists is free."""
        launcher = self.launcher
        if launcher.requests.get(node.allocated_to) is not None:
            return
        if launcher.store.get_request(node.allocated_to) is not None:
            return
        lock = launcher.store.lock_node(node.id)
        if lock is None:
            return
        try:
            fresh = launcher.store.get_node(node.id)
            if (fresh is not None and fresh.state == NodeState.READY
                    and fresh.allocated_to
                    and launcher.store.get_request(fresh.allocated_to) is None):
                log.info("Node %s: request %s is gone; the node is free again",
                         node.id, fresh.allocated_to)
                fresh.allocated_to = None
                launcher.store.update_node(fresh)
        finally:
            lock.release()


class MinReady(PeriodicWorker):
    """Keeps ``min-ready`` ready, unallocated nodes of each label."""

    settle = 0.05  # let a burst of changes settle before counting

    def __init__(self, launcher: "Launcher", interval: float):
        super().__init__("min-ready", interval, launcher.client)
        self.launcher = launcher
        self.submitted: set[str] = set()

    def run_once(self) -> None:
        self.tidy()
        self.top_up()

    def tidy(self) -> None:
        """Hand the nodes of our fulfilled min-ready requests to the pool."""
        launcher = self.launcher
        for request_id in list(self.submitted):
            request = launcher.requests.get(request_id)
            if request is None:
                if launcher.store.get_request(request_id) is None:
                    self.submitted.discard(request_id)
                continue
            if request.state == RequestState.FULFILLED:
                for node_id in request.nodes:
                    lock = launcher.store.lock_node(node_id, blocking=True,
                                                    timeout=LOCK_TIMEOUT)
                    if lock is None:
                        break
                    try:
                        node = launcher.store.get_node(node_id)
                        if node is not None and node.allocated_to == request_id:
                            node.allocated_to = None
                            launcher.store.update_node(node)
                    finally:
                        lock.release()
                else:
                    launcher.store.delete_request(request_id)
                    self.submitted.discard(request_id)
            elif request.state == RequestState.FAILED:
                launcher.store.delete_request(request_id)
                self.submitted.discard(request_id)

    def _wanted(self) -> dict[str, int]:
        config = self.launcher.config
        wanted = {}
        for label in config.labels.values():
            if label.min_ready <= 0:
                continue
            servable = any(manager.serves_label(label.name)
                           for manager in self.launcher.managers.values())
            if servable:
                wanted[label.name] = label.min_ready
        return wanted

    def top_up(self) -> None:
        wanted = self._wanted()
        if not wanted:
            return
        launcher = self.launcher
        lock = Lock(launcher.client, MIN_READY_LOCK)
        if not lock.acquire(blocking=True, timeout=5):
            return
        try:
            launcher.requests.barrier()
            launcher.nodes.barrier()
            ready: dict[str, int] = {}
            for node in launcher.nodes.nodes():
                if node.state == NodeState.READY and not node.allocated_to:
                    for label in node.type:
                        ready[label] = ready.get(label, 0) + 1
            outstanding: dict[str, int] = {}
            unserved: dict[str, int] = {}
            for request in launcher.requests.requests():
                if request.requestor == MIN_READY_REQUESTOR and \
                        request.state != RequestState.FAILED:
                    for label in request.node_types:
                        outstanding[label] = outstanding.get(label, 0) + 1
                        if request.state == RequestState.REQUESTED:
                            unserved[label] = unserved.get(label, 0) + 1
            for label, target in sorted(wanted.items()):
                deficit = target - ready.get(label, 0) - outstanding.get(label, 0)
                if deficit <= 0:
                    continue
                # No more requests in flight than the pools could start now
                # (a min-ready far above max-servers must not flood the queue
                # with requests that can only wait); freed room wakes us.
                room = self._room(label) - unserved.get(label, 0)
                count = int(min(deficit, max(0, room)))
                submitted = 0
                for _ in range(count):
                    if self.stopped:
                        break
                    request = NodeRequest(node_types=[label], reuse=False,
                                          requestor=MIN_READY_REQUESTOR)
                    launcher.store.submit_request(request, priority="900",
                                                  ephemeral=True)
                    self.submitted.add(request.id)
                    submitted += 1
                log.info("min-ready: requested %d %s node(s) (%d ready, %d "
                         "requested, %d wanted%s)", submitted, label,
                         ready.get(label, 0), outstanding.get(label, 0), target,
                         "" if submitted == deficit else
                         f"; the pools have room for {max(0, room):.0f} more now")
            # Make our requests visible to the next lock holder's barrier.
            launcher.requests.barrier()
        finally:
            lock.release()

    def _room(self, label: str) -> float:
        """How many nodes of ``label`` this launcher's pools could start now."""
        return sum(manager.room_for(label)
                   for manager in list(self.launcher.managers.values()))


class Cleanup(PeriodicWorker):
    """The periodic housekeeping tasks."""

    def __init__(self, launcher: "Launcher", interval: float):
        super().__init__("cleanup", interval, launcher.client)
        self.launcher = launcher
        self._suspects: dict[tuple[str, str, str], float] = {}
        self._orphan_lock_dirs: set[str] = set()

    def inventory_hosts(self) -> None:
        for manager in list(self.launcher.managers.values()):
            if manager.registrar is not None:
                manager.registrar.wake.set()

    def run_once(self) -> None:
        for task in (self.inventory_hosts, self.max_ready_age, self.max_hold_age,
                     self.leaked_resources, self.request_lock_dirs, self.empty_nodes,
                     self.launcher.capacity.expire):
            try:
                task()
            except KazooException as exc:
                # Connection trouble: the next pass does it.
                log.warning("Cleanup task %s: ZooKeeper error: %r", task.__name__, exc)
            except Exception:
                log.exception("Cleanup task %s failed", task.__name__)

    def _expire(self, node: Node, state: str, why: str) -> None:
        def still(fresh: Node) -> bool:
            return fresh.state == state and (state != NodeState.READY or fresh.idle)
        if self.launcher.store.delete_node_if(node.id, still) is not None:
            log.info("Node %s: %s; deleting it", node.id, why)

    def max_ready_age(self) -> None:
        launcher = self.launcher
        now = time.time()
        for node in launcher.nodes.nodes():
            if node.state != NodeState.READY or node.allocated_to \
                    or node.provider not in launcher.managers:
                continue
            ages = [launcher.config.labels[t].max_ready_age for t in node.type
                    if t in launcher.config.labels]
            limit = min((a for a in ages if a > 0), default=0)
            if limit and now - node.state_time >= limit \
                    and not launcher.nodes.is_locked(node.id):
                self._expire(node, NodeState.READY, f"ready for more than {limit}s")

    def max_hold_age(self) -> None:
        launcher = self.launcher
        now = time.time()
        max_hold = launcher.config.max_hold_age or 0
        for node in launcher.nodes.nodes():
            if node.state != NodeState.HOLD or node.provider not in launcher.managers:
                continue
            limits = [x for x in (node.hold_expiration, max_hold) if x and x > 0]
            if limits and now - node.state_time >= min(limits) \
                    and not launcher.nodes.is_locked(node.id):
                self._expire(node, NodeState.HOLD,
                             f"held for more than {min(limits)}s")

    def leaked_resources(self) -> None:
        """Cloud resources carrying our metadata that no record accounts for.

        A resource is deleted when it was already suspect on the previous
        pass, so a record still on its way into the cache is never mistaken
        for a leak.
        """
        launcher = self.launcher
        known_nodes = {(n.provider, n.id): n for n in launcher.nodes.nodes()}
        known_uploads = {(u.provider_name, u.build_id, u.id)
                         for u in launcher.images.uploads()}
        now = time.time()
        suspects = {}
        for name, manager in list(launcher.managers.items()):
            try:
                manager.adapter.cleanup_leaks(
                    lambda plural, count, name=name: launcher.stats.leaked(
                        name, plural, count))
            except Exception as exc:
                log.warning("Provider %s: driver leak cleanup failed: %s", name, exc)
            try:
                resources = manager.adapter.list_resources()
            except Exception as exc:
                log.warning("Provider %s: cannot list resources: %s", name, exc)
                continue
            for resource in resources:
                meta = resource.metadata or {}
                if meta.get(META_PROVIDER) != name:
                    continue
                if META_NODE_ID in meta:
                    leaked = not _accounted_for(
                        resource, known_nodes.get((name, meta[META_NODE_ID])))
                elif META_BUILD_ID in meta and META_UPLOAD_ID in meta:
                    leaked = (name, meta[META_BUILD_ID],
                              meta[META_UPLOAD_ID]) not in known_uploads
                else:
                    continue
                if not leaked:
                    continue
                key = (name, resource.type, str(resource.id))
                if key in self._suspects:
                    log.warning("Provider %s: deleting leaked %s %s (%s)", name,
                                resource.type, resource.id, meta)
                    try:
                        manager.adapter.delete_resource(resource)
                        launcher.stats.leaked(name, resource.plural_metric_name)
                    except Exception as exc:
                        log.warning("Provider %s: cannot delete leaked %s %s: %s",
                                    name, resource.type, resource.id, exc)
                        suspects[key] = self._suspects[key]
                else:
                    suspects[key] = now
        self._suspects = suspects

    def request_lock_dirs(self) -> None:
        """Remove lock directories whose request has been gone a while (kept
        meanwhile, as upstream does: another launcher may still lock it)."""
        launcher = self.launcher
        store = launcher.store

        def exists(request_id: str) -> bool:
            return launcher.requests.get(request_id) is not None

        # Removed only on the second sighting, so each stays for at least a
        # cleanup interval after its request went.
        stale = set(store.stale_request_lock_dirs(exists, REQUEST_LOCK_AGE))
        for name in stale & self._orphan_lock_dirs:
            # The cache may lag behind a request created just now.
            if store.get_request(name) is None:
                store.delete_request_lock_dir(name)
        self._orphan_lock_dirs = stale

    def empty_nodes(self) -> None:
        """Node znodes without data (a lock attempt raced a deletion)."""
        store = self.launcher.store
        for node_id in list(self.launcher.nodes.empty_ids):
            if store.node_znode_is_empty(node_id):
                log.info("Removing empty node znode %s", node_id)
                store.delete_node_znode(node_id)
