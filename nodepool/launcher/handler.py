"""One accepted request while a pool worker holds it: its node slots, what
it needs next, and how it ends (fulfilled, declined, released, handed back,
or dropped with a lost session) - in each case leaving no node locked or
allocated that should not be."""

from __future__ import annotations

import enum
import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

from kazoo.exceptions import KazooException

from nodepool.launcher.lifecycle import LaunchResult
from nodepool.resources import Resources
from nodepool.zk.locks import Lock
from nodepool.zk.records import Node, NodeRequest, NodeState, RequestState
from nodepool.zk.store import RecordNotFound

if TYPE_CHECKING:  # pragma: no cover
    from nodepool.launcher.pool import PoolWorker

log = logging.getLogger("nodepool.launcher.pool")


class Next(enum.Enum):
    """What a held request needs next (see :meth:`RequestHandler.evaluate`)."""

    BUSY = "busy"          # being filled or finished on another thread
    WAITING = "waiting"    # launches in progress
    NEEDS = "needs"        # empty slots to launch again (after a quota abort)
    FULFIL = "fulfil"
    DECLINE = "decline"    # a launch failed: the request goes to another provider
    MOVE = "move"          # capacity errors here: to another provider that has room
    CANCEL = "cancel"      # its requestor removed it
    LOST = "lost"          # our session, and the locks, are gone


# The ends a finisher thread carries out.
ENDINGS = (Next.FULFIL, Next.DECLINE, Next.MOVE, Next.CANCEL, Next.LOST)


# What other threads tell the pool thread about its handlers. The pool thread
# alone changes a handler's state from these (see PoolWorker.post). Each
# names the handler itself: a request dropped with a lost session and taken
# again gets a new handler, which old news must not reach.

@dataclass(frozen=True, eq=False)
class LaunchEnded:
    """A runner thread finished launching a slot's node."""

    handler: "RequestHandler"
    index: int
    node_id: str
    result: LaunchResult


@dataclass(frozen=True, eq=False)
class Cancelled:
    """The request cache saw the requestor delete the request."""

    handler: "RequestHandler"


@dataclass(frozen=True, eq=False)
class FillEnded:
    """An executor thread finished filling slots (reusing or launching)."""

    handler: "RequestHandler"


@dataclass(frozen=True, eq=False)
class Ended:
    """A finisher thread finished the request (fulfilled, declined...)."""

    handler: "RequestHandler"


HandlerEvent = Union[LaunchEnded, Cancelled, FillEnded, Ended]


class RequestHandler:
    """One accepted request: its node slots, in ``node_types`` order.

    Ownership: the pool thread owns the handler's state (``results``,
    ``launching``, ``cancelled``, ``filling``, ``finishing``) and changes it
    only from events (:class:`LaunchEnded`, :class:`Cancelled`...). While
    ``filling``, one executor thread writes the slots (``nodes``,
    ``node_locks``); once ``finishing``, one finisher thread ends the request.
    Slot writes hold ``mutex`` so the pool thread can read usage meanwhile.
    """

    def __init__(self, worker: "PoolWorker", request: NodeRequest, lock: Lock):
        self.worker = worker
        self.request = request
        self.lock = lock
        count = len(request.node_types)
        self.nodes: list[Node | None] = [None] * count
        self.node_locks: list[Lock | None] = [None] * count
        self.results: list[LaunchResult | None] = [None] * count
        self.launching: set[int] = set()
        self.cancelled = False
        self.finishing = False
        # Set while an executor thread creates nodes for missing slots.
        self.filling = True
        self.az: str | None = None
        self.mutex = threading.Lock()

    @property
    def id(self) -> str:
        return self.request.id

    def missing(self) -> list[int]:
        with self.mutex:
            return [i for i, node in enumerate(self.nodes) if node is None]

    def node_ids(self) -> list[str]:
        with self.mutex:
            return [n.id for n in self.nodes if n is not None and n.id]

    def launch_ended(self, event: LaunchEnded) -> None:
        """Record a launch's result (pool thread)."""
        with self.mutex:
            current = self.nodes[event.index]
            if current is None or current.id != event.node_id:
                return  # a slot reassigned meanwhile; not ours any more
            self.results[event.index] = event.result
            self.launching.discard(event.index)

    def evaluate(self) -> Next:
        """What the handler needs next (pool thread)."""
        with self.mutex:
            if self.finishing or self.filling:
                return Next.BUSY
            if self.launching:
                return Next.WAITING
            if LaunchResult.LOST in self.results:
                return Next.LOST
            if self.cancelled:
                return Next.CANCEL
            if LaunchResult.FAILED in self.results:
                return Next.DECLINE
            for index, result in enumerate(self.results):
                if result == LaunchResult.ABORTED:
                    # Cloud quota: forget the node (the delete worker removes
                    # it once unlocked) and launch this slot again later.
                    lock = self.node_locks[index]
                    self.nodes[index] = None
                    self.node_locks[index] = None
                    self.results[index] = None
                    if lock is not None:
                        lock.release()
            if any(node is None for node in self.nodes):
                return Next.NEEDS
            return Next.FULFIL

    # -- how it ends (on the launcher's finisher threads) ----------------------

    def finish(self, action: Next) -> None:
        """Fulfil, decline, release (cancelled) or drop (session lost). Any
        failure hands the request back with its nodes freed."""
        worker = self.worker
        try:
            if action == Next.FULFIL:
                self.fulfil()
            elif action == Next.DECLINE:
                self.decline("a node launch failed", failed=True)
            elif action == Next.MOVE:
                self.decline("the provider keeps answering with capacity errors",
                             provider_wide=True)
            elif action == Next.LOST:
                self.drop_lost()
            else:
                self.release()
        except Exception as exc:
            if isinstance(exc, KazooException):
                log.warning("Request %s: finishing (%s) failed: %r", self.id,
                            action.value, exc)
            else:
                log.exception("Request %s: finishing (%s) failed", self.id,
                              action.value)
            self.hand_back()
        finally:
            worker.post(Ended(self))

    def fulfil(self) -> None:
        """Store the request fulfilled, its nodes and itself unlocked at once.

        When the write fails, nothing may stay locked or allocated: after a
        connection loss, whether it applied is read back; if it did not, it is
        tried once more, then the request is handed back with its ready nodes
        freed for reuse."""
        request = self.request
        request.nodes = [n.id for n in self.nodes]
        request.set_state(RequestState.FULFILLED)
        launcher = self.worker.launcher
        store = launcher.store
        with self.mutex:
            locks = [lock for lock in self.node_locks if lock is not None]
        for attempt in (1, 2):
            if self.lock.session_lost or any(lock.session_lost for lock in locks):
                self.drop_lost()
                return
            try:
                applied = store.fulfil_request(request, locks, self.lock)
            except KazooException as exc:
                log.warning("Request %s: storing the fulfilment failed (%r); "
                            "checking whether it applied", request.id, exc)
                applied = self._fulfilment_applied()
                if applied is None:
                    # Out of reach: whatever we hold is released when the
                    # connection is back, or goes with the session; the
                    # request, pending and unlocked, is then requeued and its
                    # nodes freed by the lost-request cleanup.
                    self.drop_lost()
                    return
                if applied:
                    for lock in locks:
                        lock.forget()
                    self.lock.forget()
                elif attempt == 1:
                    continue
            if applied:
                with self.mutex:
                    self.node_locks = [None] * len(self.nodes)
                log.info("Request %s fulfilled with nodes %s", request.id,
                         ",".join(request.nodes))
                launcher.stats.request_done(request, "fulfilled")
                return
            if store.get_request(request.id) is None:
                log.info("Request %s vanished before fulfilment; its nodes are "
                         "released", request.id)
                self.release_nodes(clear=True)
                self.lock.release()
                return
        log.warning("Request %s: could not store its fulfilment; handing it back "
                    "with its nodes freed", request.id)
        self.hand_back()

    def _fulfilment_applied(self) -> bool | None:
        """After a fulfilment whose reply was lost: whether it applied. The
        transaction deletes our request-lock contender, and nothing else of
        ours would, so its absence says it did (even if Zuul has already
        taken the nodes and removed the request). None: cannot tell, the
        server is out of reach or the session is gone."""
        client = self.worker.launcher.client
        if not client.wait_until_connected(client.timeout * 2):
            return None
        if self.lock.session_lost:
            return None
        try:
            return not self.lock.contender_exists()
        except KazooException:
            return None

    def drop_lost(self) -> None:
        """Our locks went with the session (or cannot be told apart from
        gone): write nothing, give up whatever may still be held."""
        log.warning("Request %s: ZooKeeper session lost or out of reach; "
                    "leaving it to be requeued", self.id)
        with self.mutex:
            locks = [lock for lock in self.node_locks if lock is not None]
            self.node_locks = [None] * len(self.nodes)
        for lock in locks:
            lock.release()
        self.lock.release()

    def release(self) -> None:
        """The request was cancelled: nodes become free, ready ones reusable.
        (The request lock directory stays, as upstream's: the cleanup
        removes it once the request has been gone for a while.)"""
        log.info("Request %s was cancelled; releasing %s", self.id,
                 self.node_ids() or "no nodes")
        self.release_nodes(clear=True)
        self.lock.release()

    def release_nodes(self, clear: bool) -> None:
        """Unlock the nodes; with ``clear``, ready ones are freed (allocated
        to no request) first, so they can be reused."""
        with self.mutex:
            pairs = list(zip(self.nodes, self.node_locks))
            self.node_locks = [None] * len(self.nodes)
        store = self.worker.launcher.store
        for node, lock in pairs:
            if lock is None:
                continue
            try:
                if clear and node is not None and node.state == NodeState.READY \
                        and not lock.session_lost:
                    node.allocated_to = None
                    store.update_node(node)
            except RecordNotFound:
                pass
            except Exception as exc:
                log.warning("Node %s: cannot free it: %r", node.id, exc)
            finally:
                lock.release()

    def decline(self, reason: str, failed: bool = False,
                provider_wide: bool = False) -> None:
        """Give the request up; ``failed``: the provider failed its launch
        (recorded on the request, and no pool of the provider takes it
        again); ``provider_wide``: every pool of the provider declines."""
        self.release_nodes(clear=True)
        try:
            self.worker.decline_request(self.request, reason, failed=failed,
                                        provider_wide=provider_wide or failed)
        except RecordNotFound:
            pass
        self.lock.release()

    def hand_back(self) -> None:
        """Return the request to the queue, undeclined, its nodes freed (the
        pool is stopping, or finishing it failed)."""
        self.release_nodes(clear=True)
        request = self.request
        try:
            if not self.lock.session_lost:
                request.nodes = []
                request.set_state(RequestState.REQUESTED)
                self.worker.launcher.store.update_request(request)
        except RecordNotFound:
            pass
        except Exception as exc:
            log.warning("Request %s: cannot hand it back: %r", request.id, exc)
        self.lock.release()


class Reservations:
    """Quota reserved by accepts in progress, with a running total."""

    def __init__(self):
        self._items: dict[str, Resources] = {}
        self.total = Resources()

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __setitem__(self, key: str, need: Resources) -> None:
        self.pop(key, None)
        self._items[key] = need
        self.total.add(need)

    def pop(self, key: str, default=None):
        need = self._items.pop(key, None)
        if need is None:
            return default
        self.total.subtract(need)
        return need

    def clear(self) -> None:
        self._items.clear()
        self.total = Resources()
