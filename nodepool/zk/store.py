"""Typed operations on nodepool's ZooKeeper records.

Everything that creates, reads, updates, locks or deletes a record goes
through here, so the wire format (:mod:`nodepool.zk.records`) and the layout
(:mod:`nodepool.zk.paths`) are applied in one place. The image records'
operations live in :mod:`nodepool.zk.image_store`, mixed into ``Store``.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Callable, Iterable

from kazoo.exceptions import (
    BadVersionError, NodeExistsError, NoNodeError, NotEmptyError, RolledBackError,
)

from nodepool.zk import paths
from nodepool.zk.client import ZooKeeperClient
from nodepool.zk.kazoo_ext import add_sequential_create
from nodepool.zk.locks import Lock, contender_identifiers
from nodepool.zk.treecache import TreeCache
from nodepool.zk.image_store import ImageRecords
from nodepool.zk.records import (
    Component, CorruptRecord, Node, NodeRequest, NodeState,
)

log = logging.getLogger("nodepool.zk.store")


class RecordNotFound(LookupError):
    pass


class VersionConflict(Exception):
    """A versioned update lost against a concurrent writer."""


class RecordTooLarge(Exception):
    """A write ZooKeeper would refuse: it drops the whole connection (and
    with it every request in flight) rather than answer with an error, so
    such a write is never sent."""


# ZooKeeper's default jute.maxbuffer: the largest request a server accepts.
ZK_MAX_REQUEST_BYTES = 0xFFFFF
# Room for a transaction's other operations and paths around the data.
WRITE_MARGIN_BYTES = 8192
MAX_RECORD_BYTES = ZK_MAX_REQUEST_BYTES - WRITE_MARGIN_BYTES


def request_fits(request: NodeRequest) -> bool:
    """Whether the request can be written back once fulfilled (its node ids
    and a decline added): a launcher must not take one it cannot finish."""
    extra = 16 * len(request.node_types) + 256
    return request.encoded_size() + extra <= MAX_RECORD_BYTES


def _check_size(what: str, data: bytes) -> bytes:
    if len(data) > MAX_RECORD_BYTES:
        raise RecordTooLarge(f"{what} is {len(data)} bytes; ZooKeeper accepts at "
                             f"most about {MAX_RECORD_BYTES}")
    return data


class Store(ImageRecords):
    """Typed access to requests, nodes, images and components."""

    def __init__(self, client: ZooKeeperClient):
        self.client = client
        # Caches fed with our own node and request writes, which they then
        # need not read back (see TreeCache.expect_write).
        self.node_mirror: TreeCache | None = None
        self.request_mirror: TreeCache | None = None

    def mirror_writes(self, nodes: TreeCache, requests: TreeCache) -> None:
        self.node_mirror = nodes
        self.request_mirror = requests

    def _set(self, mirror: TreeCache | None, path: str, data: bytes, version: int):
        """``kazoo.set``, telling ``mirror`` what was written."""
        if mirror is None:
            return self.kazoo.set(path, data, version=version)
        mirror.expect_write(path)
        try:
            stat = self.kazoo.set(path, data, version=version)
        except BaseException:
            mirror.write_failed(path)
            raise
        mirror.wrote(path, data, stat)
        return stat

    @property
    def kazoo(self):
        return self.client.kazoo

    # -- requests ----------------------------------------------------------

    def submit_request(self, request: NodeRequest, priority: str = "100",
                       ephemeral: bool = False) -> str:
        """Create a request znode; sets and returns ``request.id``."""
        if not request.event_id:
            request.event_id = uuid.uuid4().hex
        path = self.kazoo.create(paths.request_prefix(priority), request.to_json(),
                                 ephemeral=ephemeral, sequence=True, makepath=True)
        request.id = path.rsplit("/", 1)[1]
        request.version = 0
        return request.id

    def get_request(self, request_id: str) -> NodeRequest | None:
        """Fresh read; None if missing, empty or corrupt (logged)."""
        return self.client.read_record(
            paths.request(request_id),
            lambda data, version: NodeRequest.from_json(request_id, data, version),
            "node request")

    def update_request(self, request: NodeRequest, check_version: bool = False) -> None:
        """Write the whole request; raises RecordNotFound if it was deleted."""
        version = request.version if check_version else -1
        data = _check_size(f"node request {request.id}", request.to_json())
        try:
            stat = self._set(self.request_mirror, paths.request(request.id), data,
                             version)
        except NoNodeError:
            raise RecordNotFound(f"node request {request.id} does not exist") from None
        except BadVersionError:
            raise VersionConflict(f"node request {request.id} changed meanwhile") from None
        request.version = stat.version

    def delete_request(self, request_id: str) -> bool:
        try:
            self.kazoo.delete(paths.request(request_id))
            return True
        except NoNodeError:
            return False

    def request_ids(self) -> list[str]:
        try:
            return self.kazoo.get_children(paths.REQUESTS)
        except NoNodeError:
            return []

    def lock_request(self, request_id: str, blocking: bool = False,
                     timeout: float | None = None) -> Lock | None:
        # Launchers remove the lock directory of finished requests, so for a
        # new request it usually does not exist yet.
        lock = Lock(self.client, paths.request_lock(request_id), new_directory=True)
        return lock if lock.acquire(blocking=blocking, timeout=timeout) else None

    def _lock_and_write(self, mirror: TreeCache | None, lock_path: str, path: str,
                        record) -> Lock | None:
        lock = Lock(self.client, lock_path)
        data = record.to_json()
        if mirror is not None:
            mirror.expect_write(path)
        stat = None
        try:
            stat = lock.acquire_with_write(path, data, record.version)
        finally:
            if mirror is not None:
                if stat is None:
                    mirror.write_failed(path)
                else:
                    mirror.wrote(path, data, stat)
        if stat is None:
            return None
        record.version = stat.version
        return lock

    def lock_and_update_request(self, request: NodeRequest) -> Lock | None:
        """Lock a request whose lock directory does not exist yet and store it,
        conditioned on ``request.version``, in one round trip. None: not
        applied (the caller locks and writes step by step)."""
        return self._lock_and_write(self.request_mirror, paths.request_lock(request.id),
                                    paths.request(request.id), request)

    def lock_and_update_new_node(self, node: Node) -> Lock | None:
        """Lock a node we just created and store it, in one round trip."""
        return self._lock_and_write(self.node_mirror, paths.node_lock(node.id),
                                    paths.node(node.id), node)

    def fulfil_request(self, request: NodeRequest, node_locks: list[Lock],
                       request_lock: Lock) -> bool:
        """Unlock the nodes, store the request and unlock it, in one
        transaction (the lock directory stays, as upstream's does: an upstream
        launcher in the same cluster may still try to lock the request).

        True: done, every lock given up. False: the transaction did not apply
        (the request is gone, or a lock of ours was lost with the session) and
        every lock is as it was. A ZooKeeper error (a connection loss: it may
        or may not have applied) is raised to the caller, who re-reads.
        """
        data = _check_size(f"node request {request.id}", request.to_json())
        path = paths.request(request.id)
        tx = self.kazoo.transaction()
        for lock in node_locks:
            if lock.node:
                tx.delete(lock.node)
        written = len(tx.operations)
        tx.set_data(path, data)
        if request_lock.node:
            tx.delete(request_lock.node)
        mirror = self.request_mirror
        if mirror is not None:
            mirror.expect_write(path)
        results = None
        try:
            results = tx.commit()
        finally:
            failed = results is None or any(isinstance(r, Exception) for r in results)
            if mirror is not None:
                if failed:
                    mirror.write_failed(path)
                else:
                    mirror.wrote(path, data, results[written])
        if failed:
            return False
        for lock in node_locks:
            lock.forget()
        request_lock.forget()
        return True

    def stale_request_lock_dirs(self, request_exists: Callable[[str], bool],
                                min_age: float) -> list[str]:
        """Lock directories of requests that are gone, created at least
        ``min_age`` seconds ago (their stats read in one pipeline)."""
        try:
            names = self.kazoo.get_children(paths.REQUEST_LOCKS)
        except NoNodeError:
            return []
        orphans = [n for n in names if not request_exists(n)]
        if not orphans:
            return []
        now = time.time()
        stale = []
        for name, result in zip(orphans, self.client.get_many(
                paths.request_lock(n) for n in orphans)):
            if result is not None and now - result[1].ctime / 1000.0 >= min_age:
                stale.append(name)
        return stale

    def delete_request_lock_dir(self, request_id: str) -> bool:
        """Remove a request's lock directory unless someone contends for it."""
        try:
            self.kazoo.delete(paths.request_lock(request_id))
            return True
        except (NoNodeError, NotEmptyError):
            return False

    # -- nodes -------------------------------------------------------------

    def create_node(self, node: Node) -> str:
        """Create a node znode with a sequential id; sets and returns ``node.id``."""
        if node.created_time is None:
            node.created_time = node.state_time
        path = self.kazoo.create(paths.NODES + "/", node.to_json(), sequence=True,
                                 makepath=True)
        node.id = path.rsplit("/", 1)[1]
        node.version = 0
        return node.id

    # -- quota fences (ours: the order in which launchers create nodes) -----

    def fence_version(self, path: str) -> int:
        """The version of a quota fence (``paths.quota_fence`` or
        ``paths.tenant_fence``), created if missing."""
        for _ in range(2):
            stat = self.kazoo.exists(path)
            if stat is not None:
                return stat.version
            try:
                self.kazoo.create(path, b"", makepath=True)
            except NodeExistsError:
                pass
        raise RecordNotFound(f"quota fence {path} vanished as it was made")

    def create_nodes_fenced(self, fences: dict[str, int], nodes: list[Node]) -> bool:
        """Create the nodes (sequential ids) and move each fence (path ->
        version read) on, in one transaction: False, and nothing created, if
        another launcher created nodes behind one of them since (it moved)."""
        for node in nodes:
            if node.created_time is None:
                node.created_time = node.state_time
        for attempt in (1, 2):
            tx = self.kazoo.transaction()
            for path, version in fences.items():
                tx.set_data(path, b"", version)
            for node in nodes:
                add_sequential_create(tx, paths.NODES + "/", node.to_json())
            results = tx.commit()
            if not any(isinstance(r, Exception) for r in results):
                break
            if any(isinstance(r, BadVersionError) for r in results[:len(fences)]):
                return False
            failed = next(r for r in results if isinstance(r, Exception)
                          and not isinstance(r, RolledBackError))
            if attempt == 1 and isinstance(failed, NoNodeError):
                self.kazoo.ensure_path(paths.NODES)  # a new installation
                continue
            raise failed
        for node, path in zip(nodes, results[len(fences):]):
            node.id = path.rsplit("/", 1)[1]
            node.version = 0
        return True

    def get_node(self, node_id: str) -> Node | None:
        """Fresh read; None if missing, empty or corrupt (logged)."""
        return self.client.read_record(
            paths.node(node_id),
            lambda data, version: Node.from_json(node_id, data, version),
            "node record")

    def get_nodes(self, node_ids: Iterable[str]) -> list[Node]:
        """Pipelined read of many nodes; missing, empty and corrupt ones skipped."""
        ids = list(node_ids)
        nodes = []
        for node_id, result in zip(ids, self.client.get_many(
                paths.node(i) for i in ids)):
            if result is None:
                continue
            try:
                node = Node.from_json(node_id, result[0], result[1].version)
            except CorruptRecord as exc:
                log.warning("Corrupt node record %s: %s", node_id, exc)
                continue
            if node is not None:
                nodes.append(node)
        return nodes

    def update_node(self, node: Node, check_version: bool = False) -> None:
        version = node.version if check_version else -1
        data = _check_size(f"node {node.id}", node.to_json())
        try:
            stat = self._set(self.node_mirror, paths.node(node.id), data, version)
        except NoNodeError:
            raise RecordNotFound(f"node {node.id} does not exist") from None
        except BadVersionError:
            raise VersionConflict(f"node {node.id} changed meanwhile") from None
        node.version = stat.version

    def update_locked_node(self, node: Node, lock: Lock) -> None:
        """Write a node we hold locked, conditioned on the version we last
        wrote or read. A conflict while the lock is still ours is a write of
        ours that applied without our hearing of it (a connection loss): the
        node is written again over it. Raises VersionConflict when the lock
        went with a lost session: someone else may drive the node now."""
        try:
            self.update_node(node, check_version=True)
        except VersionConflict:
            if lock.session_lost:
                raise
            fresh = self.get_node(node.id)
            if fresh is None:
                raise RecordNotFound(f"node {node.id} does not exist") from None
            node.version = fresh.version
            self.update_node(node, check_version=True)

    def delete_locked_node(self, node: Node, lock: Lock) -> None:
        """Remove a node we hold locked. Our contender is usually the only one,
        so try that first (one round trip); else list and remove all."""
        if lock.node is not None:
            tx = self.kazoo.transaction()
            tx.delete(lock.node)
            tx.delete(paths.node_lock(node.id))
            tx.delete(paths.node(node.id))
            results = tx.commit()
            if not any(isinstance(r, Exception) for r in results):
                lock.node = None
                return
        self.delete_node(node)
        lock.node = None

    def delete_node(self, node: Node) -> None:
        """Remove a node record and its lock directory.

        Upstream writes ``deleted`` first so that whoever locks the node in
        the window before its removal knows it is gone; removing everything
        in one transaction leaves no such window. Only when the transaction
        cannot be used is ``deleted`` written and the removal done step by step.
        """
        if self._delete_node_atomically(node.id):
            return
        node.set_state(NodeState.DELETED)
        try:
            self.update_node(node)
        except RecordNotFound:
            return
        try:
            self.kazoo.delete(paths.node(node.id), recursive=True)
        except NoNodeError:
            pass

    def _delete_node_atomically(self, node_id: str) -> bool:
        lock_dir = paths.node_lock(node_id)
        try:
            contenders = self.kazoo.get_children(lock_dir)
        except NoNodeError:
            contenders = None
        tx = self.kazoo.transaction()
        for name in contenders or ():
            tx.delete(f"{lock_dir}/{name}")
        if contenders is not None:
            tx.delete(lock_dir)
        tx.delete(paths.node(node_id))
        results = tx.commit()
        return not any(isinstance(r, Exception) for r in results)

    def node_znode_is_empty(self, node_id: str) -> bool:
        """Whether the node's znode exists and holds no data."""
        try:
            data, _ = self.kazoo.get(paths.node(node_id))
        except NoNodeError:
            return False
        return not data

    def delete_node_znode(self, node_id: str) -> None:
        """Remove a node znode (already marked deleted, or empty)."""
        if self._delete_node_atomically(node_id):
            return
        try:
            self.kazoo.delete(paths.node(node_id), recursive=True)
        except NoNodeError:
            pass

    def delete_node_if(self, node_id: str, condition) -> Node | None:
        """Lock the node (non-blocking), re-read it and, if ``condition(node)``
        holds, mark it ``deleting`` for the delete worker. Returns the node
        marked, or None (locked elsewhere, gone, or no longer qualifying)."""
        lock = self.lock_node(node_id)
        if lock is None:
            return None
        try:
            fresh = self.get_node(node_id)
            if fresh is None or not condition(fresh):
                return None
            fresh.set_state(NodeState.DELETING)
            self.update_node(fresh)
            return fresh
        except RecordNotFound:
            return None
        finally:
            lock.release()

    def node_ids(self) -> list[str]:
        try:
            return sorted(self.kazoo.get_children(paths.NODES))
        except NoNodeError:
            return []

    def lock_node(self, node_id: str, blocking: bool = False,
                  timeout: float | None = None, new: bool = False,
                  identifier: str = "", ephemeral: bool = True) -> Lock | None:
        """Lock a node; ``new`` says we just created it (saves round trips).
        ``ephemeral=False`` takes a lock that outlives our session, held
        until :meth:`force_unlock_node` (upstream's metastatic hold)."""
        lock = Lock(self.client, paths.node_lock(node_id), new_directory=new,
                    identifier=identifier, ephemeral=ephemeral)
        return lock if lock.acquire(blocking=blocking, timeout=timeout) else None

    def node_lock_holders(self, node_id: str) -> list[str]:
        """The identifiers of a node's lock contenders, the holder first."""
        return [identifier for _, identifier in
                contender_identifiers(self.client, paths.node_lock(node_id))]

    def force_unlock_node(self, node_id: str, identifier: str) -> int:
        """Delete the node's lock contenders written with ``identifier``
        (persistent locks of ours, from this session or an earlier one);
        returns how many went."""
        lock_path = paths.node_lock(node_id)
        removed = 0
        for name, holder in contender_identifiers(self.client, lock_path):
            if holder != identifier:
                continue
            try:
                self.kazoo.delete(f"{lock_path}/{name}")
                removed += 1
            except NoNodeError:
                pass
        return removed

    # -- components --------------------------------------------------------

    def components(self, kind: str) -> list[Component]:
        base = paths.components(kind)
        try:
            names = self.kazoo.get_children(base)
        except NoNodeError:
            return []
        found = []
        for name, result in zip(names, self.client.get_many(
                f"{base}/{n}" for n in names)):
            if result is None:
                continue
            try:
                component = Component.from_json(name, result[0], result[1].version)
            except CorruptRecord as exc:
                log.warning("Corrupt component record %s/%s: %s", base, name, exc)
                continue
            if component is not None:
                found.append(component)
        return found
