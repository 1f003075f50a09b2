"""The ``metastatic`` driver: nodes that are slots of other nodepool nodes.

A metastatic label names a backing label. The first job of the label gets a
backing node requested through ZooKeeper like any Zuul request; the node is
then held for good (a lock that outlives the launcher, identified as
``NodePool:metastatic:<provider>``) and shared by up to
``max-parallel-jobs`` jobs. Once its last job is gone and ``grace-time`` has
passed (and ``min-retention-time`` since its launch), it is marked used and
unlocked, and nodepool deletes it like any used node.

What ZooKeeper keeps, as upstream Nodepool writes it, so that a restarted
launcher (ours or upstream's) rebuilds the same picture: the backing node's
``user_data`` is JSON naming the owner, the label, its slot count, whether it
failed and when it was launched; each metastatic node's ``driver_data`` names
its backing node and slot. Nothing about slots is written on the backing
node, so handing out a slot costs no write.

The driver talks to ZooKeeper only through the launcher's
:class:`~nodepool.drivers.base.BackingNodes` service; its writes run on the
adapter's own executor so that ``advance()`` never waits for them.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from nodepool.drivers.base import (
    Adapter, BackingNodes, Instance, LaunchError, StateMachine,
)
from nodepool.drivers.metastatic.config import MetastaticLabel, MetastaticProvider
from nodepool.resources import Resources

log = logging.getLogger("nodepool.drivers.metastatic")

# How often a launch waiting for its backing node looks at the request (a
# read of the launcher's cache, no round trip).
WAIT_POLL = 0.1


def owner_id(provider_name: str) -> str:
    """The requestor and lock identifier upstream uses for a provider."""
    return f"NodePool:metastatic:{provider_name}"


@dataclass
class BackingNode:
    """One backing node (or the request for one) and what its slots hold."""

    label: str
    slots: list[str | None]
    node_id: str | None = None
    request_id: str | None = None
    failed: bool = False
    launched: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.time)
    # Write in flight (submitting the request, or claiming its node).
    busy: Future | None = None
    # Nodes whose slot was handed out complete: a retry of one of them means
    # the launcher found the backing node unusable (its host-key check).
    delivered: set[str] = field(default_factory=set)

    def free_slot(self) -> int | None:
        if self.failed:
            return None
        for index, holder in enumerate(self.slots):
            if holder is None:
                return index
        return None

    @property
    def empty(self) -> bool:
        return not any(self.slots)

    def holds(self, node_id: str) -> bool:
        return node_id in self.slots

    def user_data(self, owner: str) -> str:
        return json.dumps({"owner": owner, "label": self.label,
                           "slots": len(self.slots), "failed": self.failed,
                           "launched": self.launched})

    def describe(self) -> str:
        return self.node_id or f"request {self.request_id or '(being made)'}"


class MetastaticCreate(StateMachine):
    def __init__(self, adapter: "MetastaticAdapter", label: MetastaticLabel,
                 metadata: dict[str, str]):
        super().__init__()
        self.adapter = adapter
        self.label = label
        self.metadata = metadata
        self.node_id = metadata.get("nodepool_node_id", "")
        self.backing: BackingNode | None = None
        self.slot: int | None = None

    def advance(self) -> Instance | None:
        adapter = self.adapter
        if self.state == "start":
            if not adapter.recovered.done():
                self.poll_delay = WAIT_POLL
                return None
            self.backing, self.slot = adapter.allocate(self.label, self.node_id)
            # The node's own id is its "cloud" id: that is what a delete frees.
            self.external_id = self.node_id
            self.state = "waiting"
        node = adapter.backing_ready(self.backing)
        if node is None:
            self.poll_delay = WAIT_POLL
            return None
        self.complete = True
        return adapter.instance(self.backing, node, self.slot, self.label,
                                self.node_id, self.metadata)


class MetastaticDelete(StateMachine):
    def __init__(self, adapter: "MetastaticAdapter", external_id):
        super().__init__()
        self.adapter = adapter
        self.external_id = external_id

    def advance(self) -> Instance | None:
        self.adapter.deallocate(str(self.external_id))
        self.complete = True
        return None


class MetastaticAdapter(Adapter):
    provider: MetastaticProvider

    def __init__(self, provider: MetastaticProvider):
        super().__init__(provider)
        self.owner = owner_id(provider.name)
        self.service: BackingNodes | None = None
        self.backing: list[BackingNode] = []
        self.lock = threading.RLock()
        self.executor = ThreadPoolExecutor(max_workers=2,
                                           thread_name_prefix=f"metastatic-{provider.name}")
        self.recovered: Future = Future()
        self._keeper_wake = threading.Condition(self.lock)
        self._stopped = False
        self._keeper = threading.Thread(target=self._keep, daemon=True,
                                        name=f"metastatic-keeper-{provider.name}")

    # -- set-up ----------------------------------------------------------------

    def attach_backing_nodes(self, service: BackingNodes) -> None:
        self.service = service
        future = self.executor.submit(self._recover)
        future.add_done_callback(self._recovery_done)
        self._keeper.start()

    def _recovery_done(self, future: Future) -> None:
        error = future.exception()
        if error is not None:
            log.error("Metastatic provider %s: cannot rebuild its backing nodes "
                      "from ZooKeeper: %r", self.provider.name, error)
        # Launches go ahead either way (without the old slots at worst).
        self.recovered.set_result(None)

    def _recover(self) -> None:
        """The backing nodes we hold and the slots our nodes occupy, from
        what ZooKeeper says (after a restart, or a takeover from upstream)."""
        service = self.service
        found: dict[str, BackingNode] = {}
        nodes = service.nodes()
        for node in nodes:
            data = _user_data(node.user_data)
            if data.get("owner") != self.owner:
                continue
            # user_data alone could be anyone's writing; the lock is ours only.
            holders = service.holders(node.id)
            if not holders or holders[0] != self.owner:
                continue
            try:
                slots = max(1, int(data.get("slots", 1)))
                launched = float(data.get("launched", 0) or 0)
            except (TypeError, ValueError):
                log.warning("Backing node %s has unreadable user_data %r; "
                            "releasing it", node.id, node.user_data)
                service.release(node.id, self.owner)
                continue
            found[node.id] = BackingNode(
                label=str(data.get("label", "")), slots=[None] * slots,
                node_id=node.id, failed=bool(data.get("failed", False)),
                launched=launched)
            log.info("Metastatic provider %s holds backing node %s (%s, %s slots)",
                     self.provider.name, node.id, data.get("label"), slots)
        for node in nodes:
            if node.provider != self.provider.name or not isinstance(node.driver_data, dict):
                continue
            backing = found.get(node.driver_data.get("backing_node"))
            slot = node.driver_data.get("slot")
            if backing is None or not isinstance(slot, int) or \
                    not 0 <= slot < len(backing.slots) or backing.slots[slot]:
                continue
            backing.slots[slot] = node.id
            log.info("Node %s is in slot %s of backing node %s", node.id, slot,
                     backing.node_id)
        # Requests made before a restart have no launch waiting for them.
        for request in service.requests_of(self.owner):
            service.cancel(request.id)
        with self.lock:
            self.backing.extend(found.values())
            self._keeper_wake.notify()

    # -- slots -------------------------------------------------------------------

    def allocate(self, label: MetastaticLabel, node_id: str) -> tuple[BackingNode, int]:
        """A slot for ``node_id``: on a backing node of the label with room,
        else on a new one (requested now)."""
        with self.lock:
            for backing in self.backing:
                if backing.holds(node_id):
                    # A retry of this node: its earlier slot is given up, and
                    # a backing node that was delivered and still failed the
                    # node is taken out of service (upstream: a failed check).
                    if node_id in backing.delivered and backing.node_id and \
                            not backing.failed:
                        log.warning("Backing node %s failed node %s; it takes no "
                                    "more jobs", backing.node_id, node_id)
                        backing.failed = True
                        self.executor.submit(self.service.update_user_data,
                                             backing.node_id, backing.user_data(self.owner))
                    self._free(backing, node_id)
            chosen = None
            for backing in self.backing:
                if backing.label == label.name and self._takes_jobs(backing, label) \
                        and backing.free_slot() is not None:
                    chosen = backing
                    break
            if chosen is None:
                chosen = BackingNode(label=label.name,
                                     slots=[None] * label.max_parallel_jobs)
                self.backing.append(chosen)
                chosen.busy = self.executor.submit(self._submit, chosen, label)
            slot = chosen.free_slot()
            chosen.slots[slot] = node_id
            log.info("Node %s goes to slot %s of backing node %s", node_id, slot,
                     chosen.describe())
            return chosen, slot

    def _takes_jobs(self, backing: BackingNode, label: MetastaticLabel) -> bool:
        if label.max_age is not None and backing.node_id is not None and \
                time.time() - backing.launched > label.max_age:
            if not backing.failed:
                log.info("Backing node %s is older than max-age %ss; it takes no "
                         "more jobs", backing.node_id, label.max_age)
            backing.failed = True
        return not backing.failed

    def _submit(self, backing: BackingNode, label: MetastaticLabel) -> None:
        request_id = self.service.submit(label.backing_label, self.owner)
        with self.lock:
            backing.request_id = request_id
            if backing not in self.backing:
                # Every node of it went while the request was being made.
                self.executor.submit(self.service.cancel, request_id)

    def backing_ready(self, backing: BackingNode):
        """The backing node record once it is ours; None while it is still
        requested. Raises LaunchError when the request failed."""
        with self.lock:
            if backing.busy is not None:
                if not backing.busy.done():
                    return None
                busy, backing.busy = backing.busy, None
                error = busy.exception()
                if error is not None:
                    self._give_up(backing, f"cannot request or claim it: {error!r}")
                    raise LaunchError(f"backing node: {error!r}")
            if backing.failed and backing.node_id is None:
                raise LaunchError(f"the backing node request {backing.request_id} failed")
            if backing.node_id is not None:
                node = self.service.node(backing.node_id)
                if node is None:
                    raise LaunchError(f"backing node {backing.node_id} is gone")
                return node
            if backing.request_id is None:
                return None
            request = self.service.request(backing.request_id)
            if request is None:
                return None
            if request.state == "failed":
                self._give_up(backing, "its request failed")
                raise LaunchError(f"the backing node request {backing.request_id} failed")
            if request.state == "fulfilled" and request.nodes:
                backing.busy = self.executor.submit(self._claim, backing,
                                                    backing.request_id, request.nodes[0])
            return None

    def _claim(self, backing: BackingNode, request_id: str, node_id: str) -> None:
        with self.lock:
            backing.launched = time.time()
            user_data = backing.user_data(self.owner)
        node = self.service.claim(request_id, node_id, self.owner, user_data)
        if node is None:
            raise LaunchError(f"backing node {node_id} could not be claimed")
        with self.lock:
            backing.node_id = node_id
            backing.request_id = None
            backing.last_used = time.time()
            if backing not in self.backing:
                # Nothing wants it any more: straight back.
                self.service.release(node_id, self.owner)
            # Its max-age (if any) counts from now.
            self._keeper_wake.notify()

    def _give_up(self, backing: BackingNode, why: str) -> None:
        log.error("Backing node %s for %s: %s", backing.describe(), backing.label, why)
        backing.failed = True
        if backing in self.backing and backing.node_id is None:
            self.backing.remove(backing)
            if backing.request_id is not None:
                # Fulfilled or not, nobody will take its node now.
                self.executor.submit(self.service.cancel, backing.request_id)

    def deallocate(self, node_id: str) -> None:
        with self.lock:
            for backing in list(self.backing):
                if backing.holds(node_id):
                    self._free(backing, node_id)

    def _free(self, backing: BackingNode, node_id: str) -> None:
        backing.slots[backing.slots.index(node_id)] = None
        backing.delivered.discard(node_id)
        backing.last_used = time.time()
        log.info("Node %s left backing node %s", node_id, backing.describe())
        if backing.empty and backing.node_id is None:
            # Never arrived and nobody waits: withdraw the request.
            self.backing.remove(backing)
            if backing.request_id is not None:
                self.executor.submit(self.service.cancel, backing.request_id)
        self._keeper_wake.notify()

    def instance(self, backing: BackingNode, node, slot: int, label: MetastaticLabel,
                 node_id: str, metadata: dict[str, str]) -> Instance:
        with self.lock:
            backing.delivered.add(node_id)
        ssh = (node.connection_type or "ssh") in ("ssh", "network_cli")
        return Instance(
            external_id=node_id, interface_ip=node.interface_ip,
            public_ipv4=node.public_ipv4, public_ipv6=node.public_ipv6,
            private_ipv4=node.private_ipv4, private_ipv6=None, cloud=node.cloud,
            region=node.region, az=node.az, host_id=node.host_id,
            driver_data={"metadata": dict(metadata), "backing_node": node.id,
                         "slot": slot, "node": node_id},
            slot=slot, metadata=dict(metadata), resources={"instances": 1},
            username=node.username, python_path=node.python_path,
            shell_type=node.shell_type, connection_port=node.connection_port,
            connection_type=node.connection_type, copies_login=True,
            # With host-key-checking the launcher scans the slot's address.
            host_keys=None if label.host_key_checking or not ssh
            else list(node.host_keys or []))

    # -- letting idle backing nodes go ----------------------------------------

    def _label(self, name: str) -> MetastaticLabel | None:
        for pool in self.provider.pools.values():
            label = pool.labels.get(name)
            if isinstance(label, MetastaticLabel):
                return label
        return None

    def _retire_time(self, backing: BackingNode) -> float | None:
        """When a backing node in service reaches max-age (None: never, or
        already out of service)."""
        label = self._label(backing.label)
        if backing.failed or backing.node_id is None or label is None or \
                label.max_age is None:
            return None
        if not self._takes_jobs(backing, label):
            return None
        return backing.launched + label.max_age

    def _release_time(self, backing: BackingNode) -> float | None:
        """When an idle backing node may go (None: not idle, or not ours yet)."""
        if backing.node_id is None or not backing.empty or \
                (backing.busy is not None and not backing.busy.done()):
            return None
        label = self._label(backing.label)
        if label is not None:
            self._takes_jobs(backing, label)
        if label is None or backing.failed:
            return backing.last_used
        return max(backing.last_used + label.grace_time,
                   backing.launched + label.min_retention_time)

    def _keep(self) -> None:
        """Release backing nodes whose time has come; sleeps until the next
        one is due or a slot is freed."""
        while True:
            due: list[BackingNode] = []
            with self.lock:
                if self._stopped:
                    return
                now = time.time()
                wait = None
                for backing in list(self.backing):
                    if backing.node_id is not None and \
                            self.service.node(backing.node_id) is None:
                        log.warning("Backing node %s was deleted by someone else",
                                    backing.node_id)
                        backing.failed = True
                        if backing.empty:
                            self.backing.remove(backing)
                        continue
                    retire = self._retire_time(backing)
                    if retire is not None:
                        wait = max(0.0, retire - now) if wait is None else \
                            max(0.0, min(wait, retire - now))
                    at = self._release_time(backing)
                    if at is None:
                        continue
                    if at <= now:
                        self.backing.remove(backing)
                        due.append(backing)
                    else:
                        wait = at - now if wait is None else min(wait, at - now)
                if not due:
                    # Max-age can come due with nothing else happening.
                    self._keeper_wake.wait(60.0 if wait is None else min(wait, 60.0))
                    continue
            for backing in due:
                log.info("Backing node %s (%s) has been idle since %s; releasing it",
                         backing.node_id, backing.label,
                         time.strftime("%H:%M:%S", time.localtime(backing.last_used)))
                try:
                    self.service.release(backing.node_id, self.owner)
                except Exception as exc:
                    log.warning("Cannot release backing node %s now (%r); retrying",
                                backing.node_id, exc)
                    with self.lock:
                        self.backing.append(backing)
                        self._keeper_wake.wait(5.0)

    # -- the rest of the contract ----------------------------------------------

    def create_state_machine(self, hostname, label, image_external_id, metadata,
                             request, az) -> StateMachine:
        return MetastaticCreate(self, label, metadata)

    def delete_state_machine(self, external_id) -> StateMachine:
        return MetastaticDelete(self, external_id)

    def list_instances(self) -> list[Instance]:
        # Nothing in any cloud: backing nodes are their own provider's.
        return []

    def quota_for_label(self, label) -> Resources:
        return Resources({"instances": 1})

    def held(self) -> list[BackingNode]:
        """The backing nodes as the driver sees them (for tests and status)."""
        with self.lock:
            return list(self.backing)

    def reconfigure(self, provider) -> None:
        super().reconfigure(provider)
        with self.lock:
            self._keeper_wake.notify()

    def stop(self) -> None:
        # Backing nodes stay held: a restarted launcher takes them up again.
        with self.lock:
            self._stopped = True
            self._keeper_wake.notify()
        if self._keeper.is_alive():
            self._keeper.join(timeout=5)
        self.executor.shutdown(wait=True)


def _user_data(value) -> dict:
    if not isinstance(value, str):
        return value if isinstance(value, dict) else {}
    try:
        data = json.loads(value)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
