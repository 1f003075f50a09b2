"""Node delete: the instance through the driver's delete state machine,
then the record, with the step stored in the node so that another launcher
can carry an unfinished delete on."""

from __future__ import annotations

import logging
import random
import time
from typing import Callable

from kazoo.exceptions import KazooException

from nodepool.drivers.base import Adapter, DriverError, NotFound
from nodepool.launcher.runner import Task, monotonic_since
from nodepool.zk.locks import Lock
from nodepool.zk.records import LaunchOperation, Node, NodeState, Progress
from nodepool.zk.store import RecordNotFound, Store, VersionConflict

log = logging.getLogger("nodepool.launcher.deletion")

# A delete failing this long gives the node up, for a later attempt.
DELETE_TIMEOUT = 600.0


class NodeDelete(Task):
    """Delete one locked node's instance, then its record.

    Its progress (who deletes, since when, the driver machine's step) is
    stored in the node, so a launcher that takes over a delete left
    unfinished carries on the same machine and the same deadline."""

    def __init__(self, *, node: Node, lock: Lock, store: Store, adapter: Adapter,
                 on_done: Callable[[Node, bool], None] | None = None,
                 still_deletable: Callable[[Node], bool] | None = None,
                 launcher_id: str = ""):
        self.node = node
        # Given when ``node`` is a cached copy taken before locking: the first
        # write is then version-checked, and on a conflict the node is re-read
        # and re-checked with this predicate.
        self.still_deletable = still_deletable
        self.lock = lock
        self.store = store
        self.adapter = adapter
        self.on_done = on_done
        self.launcher_id = launcher_id
        self.machine = None
        self.started = time.monotonic()
        self.failures = 0
        self.progress: Progress | None = None
        self.resumed = False
        # The machine's snapshot as stored (or as a new machine starts: not
        # worth a write).
        self.stored_snapshot: dict = {}

    def __repr__(self) -> str:
        return f"<NodeDelete {self.node.id}>"

    def _take_progress(self, node: Node) -> None:
        """Our progress for the node: a delete another launcher started
        goes on from where it stood, with its deadline."""
        progress = node.progress
        if progress is not None and progress.operation == LaunchOperation.DELETE:
            self.resumed = True
            self.started = monotonic_since(progress.started)
            progress.launcher = self.launcher_id
        else:
            progress = Progress(launcher=self.launcher_id,
                                operation=LaunchOperation.DELETE)
        self.progress = progress
        node.set_progress(progress)

    def step(self) -> float | None:
        node = self.node
        try:
            if self.machine is None:
                if self.progress is None:
                    if self.still_deletable is not None:
                        if not self._mark_deleting_checked():
                            return None
                        node = self.node
                    else:
                        self._take_progress(node)
                        node.set_state(NodeState.DELETING)
                        self.store.update_node(node)
                if node.external_id is None or node.provider is None:
                    return self._done()
                self.machine = self.adapter.delete_state_machine(node.external_id)
                if self.progress.machine:
                    self.machine.restore(self.progress.machine)
                    log.info("Node %s: delete resumed (%s)", node.id, self.machine.state)
                self.stored_snapshot = self.machine.snapshot()
            try:
                self.machine.advance()
            except NotFound:
                return self._done()
            if self.machine.complete:
                return self._done()
            snapshot = self.machine.snapshot()
            if snapshot != self.stored_snapshot:
                # The step the cloud has reached, for whoever takes over.
                self.progress.machine = self.stored_snapshot = snapshot
                node.set_progress(self.progress)
                self.store.update_locked_node(node, self.lock)
            return self.machine.poll_delay
        except (RecordNotFound, VersionConflict):
            # Gone, or taken over by another launcher (ours went with a lost
            # session): nothing more to do here.
            self.lock.release()
            self._notify(False)
            return None
        except KazooException as exc:
            # Unlocked, the node is taken up again by the next sweep.
            log.warning("Node %s: ZooKeeper error while deleting: %r", node.id, exc)
            self.lock.release()
            self._notify(False)
            return None
        except DriverError as exc:
            return self._retry(exc)
        except Exception as exc:
            # A cloud error the driver did not classify: retried all the same.
            log.debug("Node %s: delete error", node.id, exc_info=True)
            return self._retry(exc)

    def _mark_deleting_checked(self) -> bool:
        node = self.node
        self._take_progress(node)
        node.set_state(NodeState.DELETING)
        try:
            self.store.update_node(node, check_version=True)
        except VersionConflict:
            fresh = self.store.get_node(node.id)
            if fresh is None or not self.still_deletable(fresh):
                self.lock.release()
                self._notify(False)
                return False
            self.resumed = False
            self._take_progress(fresh)
            fresh.set_state(NodeState.DELETING)
            self.store.update_node(fresh)
            self.node = fresh
        self.still_deletable = None
        return True

    def _retry(self, exc: Exception) -> float | None:
        self.failures += 1
        if time.monotonic() - self.started > DELETE_TIMEOUT:
            log.error("Node %s: could not delete instance %s for %ss, leaving it "
                      "for a later attempt: %s", self.node.id, self.node.external_id,
                      DELETE_TIMEOUT, exc)
            self.lock.release()
            self._notify(False)
            return None
        log.warning("Node %s: delete failed (attempt %s), retrying: %s",
                    self.node.id, self.failures, exc)
        self.machine = None
        self.progress.machine = {}
        return min(30.0, 0.5 * 2 ** min(self.failures, 6)) * (0.5 + random.random())

    def _done(self) -> None:
        # The lock's contender goes with the node's znode.
        self.store.delete_locked_node(self.node, self.lock)
        log.info("Node %s deleted (instance %s)", self.node.id, self.node.external_id)
        self._notify(True)
        return None

    def _notify(self, deleted: bool) -> None:
        if self.on_done is not None:
            try:
                self.on_done(self.node, deleted)
            except Exception:
                log.exception("Delete callback for node %s failed", self.node.id)

    def abandon(self) -> None:
        self.lock.release()
