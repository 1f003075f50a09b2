"""Fill a ZooKeeper with the records the status pages show, in every shape
they come in: node requests as Zuul writes them (keys missing, nulls, three
precedences), nodes in every state with fields left empty (no image, no
launcher, no addresses, a redacted Kubernetes port, a bare-string label),
held and locked nodes, builds and uploads in every state, paused images,
build requests and pool registrations.

Used by the web load tests and ``tools/bench/web_status.py``. Every node
of :func:`fill` belongs to a provider named ``status-fill-*``, which no
launcher of the test serves, so a running launcher leaves the records as
written. :func:`fill_population` writes a deployment's nodes for providers a
launcher does serve (``tools/bench/scale.py``), locked where a launcher
would otherwise reclaim them.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from nodepool.zk import paths
from nodepool.zk.image_records import ImageBuild, ImageUpload
from nodepool.zk.locks import Lock
from nodepool.zk.records import (
    BuildState, Component, ComponentState, Node, NodeRequest, NodeState, PoolComponent,
    RequestState, UploadState,
)
from nodepool.zk.store import Store

PROVIDERS = ("status-fill-a", "status-fill-b", "status-fill-c")
LABELS = ("small", "large", "gpu", "arm64", "windows")


@dataclass
class Filled:
    """What was written (ids in writing order) and the locks still held."""

    request_ids: list[str] = field(default_factory=list)
    node_ids: list[str] = field(default_factory=list)
    locked_node_ids: list[str] = field(default_factory=list)
    builds: list[ImageBuild] = field(default_factory=list)
    uploads: list[ImageUpload] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    paused_images: list[str] = field(default_factory=list)
    requested_images: list[str] = field(default_factory=list)
    labels: set[str] = field(default_factory=set)
    locks: list[Lock] = field(default_factory=list)

    def release(self) -> None:
        for lock in self.locks:
            lock.release()
        self.locks.clear()


def _zuul_request(index: int, labels: Sequence[str] = LABELS,
                  providers: Sequence[str | None] = PROVIDERS) -> dict:
    """A request as Zuul writes it: always its own keys, often nulls, never
    the launcher-side ones (declined_by, nodes, reuse)."""
    data = {
        "requestor_data": None if index % 3 else {
            "build_set_uuid": f"bs{index:030d}", "tenant_name": "acme",
            "pipeline_name": "check", "job_uuid": f"j{index:031d}",
            "job_name": f"job-{index}", "span_info": None},
        "node_types": [labels[index % len(labels)]] * (1 + index % 3),
        "requestor": None if index % 7 == 0 else f"zuul-{index % 4}",
        "created_time": None if index % 2 else time.time() - index,
        "provider": None if index % 5 else providers[index % len(providers)],
        "state": RequestState.REQUESTED,
        "state_time": time.time() - index,
        "event_id": None if index % 4 == 0 else f"ev{index:030d}",
        "tenant_name": None if index % 6 == 0 else "acme",
    }
    if index % 8:
        # Older Zuuls leave it out; it then reads as 0.
        data["relative_priority"] = index % 4
    return data


def fill_requests(store: Store, count: int) -> list[str]:
    """Zuul-shaped requests (two thirds) and launcher-shaped ones in every
    state, in precedences 100, 200, 300 and 900 (min-ready)."""
    ids = []
    for index in range(count):
        priority = ("100", "200", "300", "900")[index % 4]
        if index % 3 != 2:
            path = store.kazoo.create(paths.request_prefix(priority),
                                      json.dumps(_zuul_request(index)).encode(),
                                      sequence=True, makepath=True)
            ids.append(path.rsplit("/", 1)[1])
            continue
        state = RequestState.ALL[index % len(RequestState.ALL)]
        request = NodeRequest(
            state=state, node_types=[LABELS[index % len(LABELS)]],
            nodes=[f"{index:010d}"] if state == RequestState.FULFILLED else [],
            declined_by=[f"pool-{n}" for n in range(index % 3)],
            reuse=priority != "900", relative_priority=index % 5,
            requestor="NodePool:min-ready" if priority == "900" else "zuul-0",
            event_id=None if index % 2 else f"ev{index:030d}")
        ids.append(store.submit_request(request, priority=priority))
        if request.event_id is not None and index % 2:
            # submit_request fills a missing event id; Zuul may not have.
            request.event_id = None
            store.update_request(request)
    return ids


def _node(index: int, state: str | None = None, provider: str | None = None,
          pool: str = "main", label: str | None = None,
          sparse: bool | None = None) -> Node:
    state = state or NodeState.ALL[index % len(NodeState.ALL)]
    provider = provider or PROVIDERS[index % len(PROVIDERS)]
    if sparse is None:
        sparse = index % 4 == 0  # a record with most optional fields empty
    node = Node(
        state=state, state_time=time.time() - index * 7,
        provider=provider,
        pool=None if sparse else pool,
        type=[label or LABELS[index % len(LABELS)]],
        launcher=None if sparse else f"host-PoolWorker.{provider}-{pool}-x",
        allocated_to=None if index % 5 else f"200-{index:010d}",
        external_id=None if sparse else f"server-{index}",
        public_ipv4=None if sparse else f"203.0.113.{index % 250}",
        private_ipv4=None if sparse else f"10.0.{index // 250}.{index % 250}",
        public_ipv6=None if index % 3 else f"2001:db8::{index:x}",
        hostname=None if sparse else f"np{index:010d}",
        az=None if sparse else "nova",
        username=None if index % 9 == 0 else "zuul",
        image_id=None if sparse else f"image-{index % 10}",
        connection_port={"token": "secret"} if index % 50 == 1 else 22,
        user_data=None if index % 11 else {"zuul_system": "z", "project_name": "p"},
        driver_data=None if index % 13 else {"index": index},
    )
    if state == NodeState.HOLD:
        node.hold_job = "acme review.example.org/acme/project job-a .*"
        node.comment = f"held for debugging {index}" if index % 2 else None
        node.hold_expiration = None if index % 3 else 86400
    return node


def fill_nodes(store: Store, count: int, locked: int = 0) -> tuple[list[str], list[Lock]]:
    """Nodes in every state; the first ``locked`` of them locked by ``store``'s
    client (kept until the returned locks are released)."""
    ids = []
    for index in range(count):
        node = _node(index)
        if index % 97 == 3:
            # Static nodes of upstream may carry a bare label string.
            data = node.to_dict()
            data["type"] = data["type"][0]
            path = store.kazoo.create(paths.NODES + "/", json.dumps(data).encode(),
                                      sequence=True, makepath=True)
            ids.append(path.rsplit("/", 1)[1])
        else:
            ids.append(store.create_node(node))
    locks = []
    for node_id in ids[:locked]:
        lock = store.lock_node(node_id, blocking=True, timeout=10)
        if lock is None:
            raise RuntimeError(f"cannot lock node {node_id}")
        locks.append(lock)
    return ids, locks


@dataclass
class Member:
    """One node of a deployment: where it is, its state, and whether it is
    written locked (as Zuul holds its in-use nodes and a launcher the nodes
    it builds or deletes)."""

    state: str
    provider: str
    pool: str
    label: str
    locked: bool = False


def _pipelined(results: Iterable, batch: int = 2000) -> list:
    """Wait for kazoo async results, at most ``batch`` in flight (the
    iterable issues each call as it is drawn)."""
    done, pending = [], []
    for result in results:
        pending.append(result)
        if len(pending) >= batch:
            done += [r.get(timeout=60) for r in pending]
            pending = []
    return done + [r.get(timeout=60) for r in pending]


def fill_population(store: Store, members: Sequence[Member],
                    resources: dict[str, float] | None = None) -> list[str]:
    """Write ``members`` as fully populated node records, pipelined, and give
    each locked one a lock contender in ``store``'s session (it stays locked
    while that session lives). Returns the node ids, in order.

    Records are recent and held nodes never expire, so no age limit of a
    launcher applies; ``resources`` is what each node counts against quota.
    """
    now = time.time()
    nodes = []
    for index, member in enumerate(members):
        node = _node(index, member.state, member.provider, member.pool, member.label,
                     sparse=False)
        node.state_time = node.created_time = now - index % 3600
        node.hold_expiration = None
        node.allocated_to = f"200-{index:010d}" \
            if member.state in (NodeState.IN_USE, NodeState.USED) else None
        node.resources = dict(resources or {})
        nodes.append(node)
    kazoo = store.kazoo
    kazoo.ensure_path(paths.NODES)
    created = _pipelined(kazoo.create_async(paths.NODES + "/", node.to_json(),
                                            sequence=True) for node in nodes)
    ids = [path.rsplit("/", 1)[1] for path in created]
    locked = [node_id for node_id, member in zip(ids, members) if member.locked]
    _pipelined(kazoo.create_async(paths.node_lock(node_id)) for node_id in locked)
    prefix = uuid.uuid4().hex + "__lock__"
    _pipelined(kazoo.create_async(f"{paths.node_lock(node_id)}/{prefix}", b"",
                                  ephemeral=True, sequence=True) for node_id in locked)
    return ids


def fill_open_requests(store: Store, labels: Sequence[str], count: int) -> list[str]:
    """Zuul-shaped requests (one to three nodes of one of ``labels``, no
    provider preference, precedences 100-300) written pipelined."""
    created = _pipelined(store.kazoo.create_async(
        paths.request_prefix(("100", "200", "300")[index % 3]),
        json.dumps(_zuul_request(index, labels, (None,))).encode(),
        sequence=True, makepath=True) for index in range(count))
    return [path.rsplit("/", 1)[1] for path in created]


def fill_images(store: Store, builds: int, images: int = 10
                ) -> tuple[list[ImageBuild], list[ImageUpload], list[str]]:
    """``builds`` builds spread over ``images`` images, with one upload per
    provider for every build but the failed ones."""
    names = [f"image-{n:02d}" for n in range(images)]
    made, uploads = [], []
    for index in range(builds):
        state = BuildState.ALL[index % len(BuildState.ALL)]
        build = ImageBuild(image_name=names[index % images], state=state,
                           state_time=time.time() - index * 60,
                           builder=None if index % 5 == 0 else f"builder-{index % 2}",
                           formats=[] if state == BuildState.BUILDING else ["qcow2"])
        store.store_build(build)
        made.append(build)
        if state == BuildState.FAILED:
            continue
        for offset, provider in enumerate(PROVIDERS[:1 + index % len(PROVIDERS)]):
            upload_state = UploadState.ALL[(index + offset) % len(UploadState.ALL)]
            upload = ImageUpload(
                image_name=build.image_name, build_id=build.id, provider_name=provider,
                state=upload_state, state_time=time.time() - index * 60 + offset,
                external_id=None if upload_state == UploadState.UPLOADING
                else f"cloud-image-{index}-{offset}",
                external_name=None if upload_state == UploadState.UPLOADING
                else f"{build.image_name}-{index}",
                format="qcow2")
            store.store_upload(upload)
            uploads.append(upload)
    return made, uploads, names


def fill_pools(store: Store, count: int) -> set[str]:
    """Pool-worker registrations (ephemeral, as a launcher's) and one
    launcher record; returns every label they support."""
    labels: set[str] = set()
    for index in range(count):
        supported = sorted({LABELS[index % len(LABELS)], LABELS[(index + 2) % len(LABELS)],
                            f"pool-label-{index:03d}"})
        labels.update(supported)
        pool = PoolComponent(hostname="fill-host", id=f"fill-host-PoolWorker.p{index}",
                             name="main", provider_name=PROVIDERS[index % 3],
                             supported_labels=supported, state=ComponentState.RUNNING)
        store.kazoo.create(paths.component_prefix("pool", "fill-host"), pool.to_json(),
                           ephemeral=True, sequence=True, makepath=True)
    launcher = Component(kind="launcher", hostname="fill-host",
                         state=ComponentState.RUNNING)
    store.kazoo.create(paths.component_prefix("launcher", "fill-host"),
                       launcher.to_json(), ephemeral=True, sequence=True, makepath=True)
    return labels


def fill(store: Store, *, nodes: int = 1000, requests: int = 100, builds: int = 100,
         pools: int = 20, locked_nodes: int = 25, images: int = 10) -> Filled:
    """Everything at once; the pool registrations and node locks live as
    long as ``store``'s session."""
    filled = Filled()
    filled.request_ids = fill_requests(store, requests)
    filled.node_ids, filled.locks = fill_nodes(store, nodes, locked_nodes)
    filled.locked_node_ids = filled.node_ids[:locked_nodes]
    filled.builds, filled.uploads, filled.images = fill_images(store, builds, images)
    filled.paused_images = filled.images[::3]
    for image in filled.paused_images:
        store.pause_image(image)
    filled.requested_images = filled.images[1::4]
    for image in filled.requested_images:
        store.request_build(image)
    filled.labels = fill_pools(store, pools)
    return filled
