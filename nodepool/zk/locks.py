"""Exclusive locks compatible with kazoo's ``Lock`` recipe.

Zuul locks nodes and requests with kazoo's recipe, so ours must be the same
protocol on the same paths: an ephemeral sequential contender named
``<uuid4 hex>__lock__`` in the lock directory, the lowest sequence holds the
lock, waiters watch their predecessor, release deletes the contender and
leaves the directory. Ours saves a round trip per acquisition against kazoo's
(the directory is created only when the contender create reports it missing),
and its release survives connection losses without blocking its caller.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

from kazoo.exceptions import (ConnectionLoss, NodeExistsError, NoNodeError,
                              OperationTimeoutError, SessionExpiredError)

from nodepool.zk import paths
from nodepool.zk.client import ZooKeeperClient

log = logging.getLogger("nodepool.zk.locks")


class LockError(Exception):
    """A lock could not be taken (held elsewhere, or timed out)."""


class Lock:
    """One acquisition of the lock at ``path``; not reusable after release.

    Release never blocks and is never lost: the contender's delete is sent
    asynchronously and, if the connection drops before it is answered, sent
    again once the connection is back (until it succeeds or the session ends,
    taking the ephemeral contender with it). A failed acquisition likewise
    leaves no contender of ours behind: anything created under our unique
    prefix is removed. Our own later requests are ordered after the delete
    (ZooKeeper applies one session's requests in order).
    """

    def __init__(self, client: ZooKeeperClient, path: str, identifier: str = "",
                 new_directory: bool = False, ephemeral: bool = True):
        self.client = client
        self.path = path
        self.identifier = identifier
        # A persistent contender outlives our session (the metastatic
        # driver's hold on its backing nodes); it goes only when deleted.
        self.ephemeral = ephemeral
        self.prefix = uuid.uuid4().hex + "__lock__"
        self.node: str | None = None
        self.generation = client.session_generation
        # The caller knows the lock directory does not exist yet (a node it
        # just created): make it first instead of failing into it.
        self.new_directory = new_directory
        self._released: threading.Event | None = None

    @property
    def is_acquired(self) -> bool:
        return self.node is not None

    def _took(self, node: str) -> None:
        self.node = node
        self.generation = self.client.session_generation

    def _abandon_attempt(self) -> None:
        """A create of ours may have been applied without our learning its
        name (connection loss): remove whatever carries our prefix."""
        self._released = self.client.delete_eventually(self.path, prefix=self.prefix)

    def _create_contender(self) -> str:
        kazoo = self.client.kazoo
        data = self.identifier.encode("utf-8")
        full = f"{self.path}/{self.prefix}"
        try:
            if self.new_directory:
                # Directory and first contender in one round trip; if the
                # directory exists after all, fall through to the plain create.
                tx = kazoo.transaction()
                tx.create(self.path, b"")
                tx.create(full, data, ephemeral=self.ephemeral, sequence=True)
                results = tx.commit()
                if not any(isinstance(r, Exception) for r in results) and results[1]:
                    return results[1]
            for _ in range(2):
                try:
                    return kazoo.create(full, data, ephemeral=self.ephemeral, sequence=True)
                except NoNodeError:
                    try:
                        kazoo.create(self.path, b"", makepath=True)
                    except NodeExistsError:
                        pass
            return kazoo.create(full, data, ephemeral=self.ephemeral, sequence=True)
        except (ConnectionLoss, OperationTimeoutError):
            self._abandon_attempt()
            raise

    def acquire_with_write(self, path: str, data: bytes, version: int = -1):
        """Take the lock of a directory that does not exist yet and write
        ``path`` in the same transaction, so the write happens exactly when
        the lock is held. Returns the write's stat, or None when the
        transaction did not apply (directory present, version changed): then
        nothing happened and the caller takes the ordinary path. On a
        connection loss the outcome is unknown: any contender of ours is
        removed and the error raised (a write that did apply is then
        unlocked, which every reader of that record must handle anyway)."""
        kazoo = self.client.kazoo
        full = f"{self.path}/{self.prefix}"
        tx = kazoo.transaction()
        tx.create(self.path, b"")
        tx.create(full, self.identifier.encode("utf-8"), ephemeral=True, sequence=True)
        tx.set_data(path, data, version)
        try:
            results = tx.commit()
        except (ConnectionLoss, OperationTimeoutError):
            self._abandon_attempt()
            raise
        if any(isinstance(r, Exception) for r in results):
            return None
        # A new directory's first contender holds the lock.
        self._took(results[1])
        return results[2]

    def _contenders(self) -> list[str]:
        children = self.client.kazoo.get_children(self.path)
        found = [c for c in children if paths.is_lock_contender(c)]
        return sorted(found, key=paths.contender_sequence)

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Take the lock. Non-blocking returns False at once if it is held."""
        if self.node is not None:
            raise LockError(f"lock {self.path} already acquired by this object")
        deadline = None if timeout is None else time.monotonic() + timeout
        node = self._create_contender()
        name = node.rsplit("/", 1)[1]
        if paths.contender_sequence(name) == "0000000000":
            # The first contender ever in this directory: nobody can be ahead.
            self._took(node)
            return True
        try:
            while True:
                contenders = self._contenders()
                if name not in contenders:
                    # Our ephemeral node is gone: the session was lost.
                    raise SessionExpiredError(f"lock contender {node} vanished")
                index = contenders.index(name)
                if index == 0:
                    self._took(node)
                    return True
                if not blocking:
                    self._delete(node)
                    return False
                predecessor = f"{self.path}/{contenders[index - 1]}"
                gone = threading.Event()

                def watch(event, gone=gone):
                    gone.set()

                if self.client.kazoo.exists(predecessor, watch=watch) is None:
                    continue
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    self._delete(node)
                    return False
                if not gone.wait(remaining):
                    self._delete(node)
                    return False
        except BaseException:
            self._delete(node)
            raise

    def _delete(self, node: str) -> None:
        self._released = self.client.delete_eventually(node)

    def release(self) -> None:
        """Give the lock up (never blocks, never lost; see the class)."""
        node, self.node = self.node, None
        if node is not None:
            self._delete(node)

    def forget(self) -> None:
        """The contender was deleted by a transaction of the caller's."""
        self.node = None

    def wait_released(self, timeout: float | None = None) -> bool:
        """Wait until the last release (or abandoned attempt) is done."""
        return self._released is None or self._released.wait(timeout)

    def contender_exists(self) -> bool:
        """Whether our contender is still on the server (a fresh read): after
        a transaction of ours whose reply was lost, this tells whether it
        deleted the contender, i.e. applied."""
        if self.node is None or self.session_lost:
            return False
        return self.client.kazoo.exists(self.node) is not None

    @property
    def session_lost(self) -> bool:
        """The session this lock was taken in has ended (so has the lock)."""
        return self.generation != self.client.session_generation

    @property
    def is_still_valid(self) -> bool:
        """False once the session that took the lock has been lost."""
        return (self.node is not None
                and self.generation == self.client.session_generation)

    def __enter__(self):
        if not self.acquire():  # pragma: no cover - blocking never fails
            raise LockError(self.path)
        return self

    def __exit__(self, *exc):
        self.release()


def lock_contenders(client: ZooKeeperClient, lock_path: str) -> list[str]:
    """Current contenders of a lock directory, lowest sequence first."""
    try:
        children = client.kazoo.get_children(lock_path)
    except NoNodeError:
        return []
    found = [c for c in children if paths.is_lock_contender(c)]
    return sorted(found, key=paths.contender_sequence)


def contender_identifiers(client: ZooKeeperClient, lock_path: str) -> list[tuple[str, str]]:
    """(contender name, identifier it was written with), lowest sequence
    first: who holds the lock and who waits (a contender gone meanwhile is
    left out)."""
    found = []
    for name in lock_contenders(client, lock_path):
        try:
            data, _ = client.kazoo.get(f"{lock_path}/{name}")
        except NoNodeError:
            continue
        found.append((name, data.decode("utf-8", errors="replace")))
    return found


def is_locked(client: ZooKeeperClient, lock_path: str) -> bool:
    return bool(lock_contenders(client, lock_path))
