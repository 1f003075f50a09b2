"""Records, ids and locks against a real ZooKeeper server."""

import json
import threading
import time

import pytest
from kazoo.exceptions import LockTimeout
from kazoo.recipe.lock import Lock as KazooLock

from nodepool.zk import paths
from nodepool.zk.locks import Lock, lock_contenders
from nodepool.zk.image_records import ImageBuild, ImageUpload
from nodepool.zk.records import (
    ComponentState, Node, NodeRequest, NodeState, PoolComponent, RequestState,
)
from nodepool.zk.components import ComponentRegistration, new_pool_component
from nodepool.zk.store import Store, VersionConflict


def test_request_round_trip_and_priority_prefix(store):
    request = NodeRequest(node_types=["a", "b"], requestor="r", tenant_name="t",
                          requestor_data={"k": [1, 2]}, relative_priority=7)
    request_id = store.submit_request(request, priority="200")
    assert paths.REQUEST_ID_RE.match(request_id) and request_id.startswith("200-")
    assert request_id[3] == "-"  # Zuul recognises nodepool ids by this
    loaded = store.get_request(request_id)
    assert loaded.to_dict() == request.to_dict()
    assert loaded.event_id  # filled in when missing
    loaded.set_state(RequestState.PENDING)
    loaded.declined_by.append("w1")
    store.update_request(loaded)
    again = store.get_request(request_id)
    assert again.state == "pending" and again.declined_by == ["w1"]
    assert again.version == 1
    assert store.delete_request(request_id)
    assert store.get_request(request_id) is None


def test_request_ids_are_sequential_within_the_parent(store):
    ids = [store.submit_request(NodeRequest(node_types=["a"]), priority=p)
           for p in ("100", "300", "099")]
    sequences = [int(i.split("-")[1]) for i in ids]
    assert sequences == sorted(sequences) and len(set(sequences)) == 3


def test_ephemeral_min_ready_request_vanishes_with_its_session(make_zk_client, store):
    other = make_zk_client()
    request_id = Store(other).submit_request(
        NodeRequest(node_types=["a"], requestor="NodePool:min-ready", reuse=False),
        priority="900", ephemeral=True)
    assert store.get_request(request_id) is not None
    other.disconnect()
    assert store.get_request(request_id) is None


def test_zuul_written_request_loads(zuul, store):
    request_id = zuul.submit(["debian", "debian"], priority="200", tenant="acme",
                             relative_priority=3)
    request = store.get_request(request_id)
    assert request.node_types == ["debian", "debian"]
    assert request.requestor == zuul.system_id and request.tenant_name == "acme"
    assert request.reuse is True and request.declined_by == []
    # Our update keeps what Zuul wrote and adds the launcher's keys.
    request.set_state(RequestState.PENDING)
    store.update_request(request)
    raw = zuul.get_request(request_id)
    for key in ("requestor_data", "requestor", "node_types", "provider", "state",
                "state_time", "event_id", "declined_by", "nodes", "reuse"):
        assert key in raw
    assert raw["requestor_data"]["pipeline_name"] == "check"


def test_versioned_revise_fails_after_a_concurrent_update(zuul, store):
    request_id = zuul.submit(["a"])
    assert zuul.revise(request_id, 5)
    assert store.get_request(request_id).relative_priority == 5
    stale = store.get_request(request_id)
    fresh = store.get_request(request_id)
    fresh.relative_priority = 9
    store.update_request(fresh, check_version=True)
    stale.relative_priority = 1
    with pytest.raises(VersionConflict):
        store.update_request(stale, check_version=True)


def test_node_round_trip_sequential_ids_and_deletion(store, zuul):
    first = Node(provider="p", pool="main", type=["a"], allocated_to="200-0000000001",
                 resources={"cores": 2, "instances": 1, "ram": 1024},
                 attributes={"executor-zone": "z"})
    second = Node(provider="p", pool="main", type=["a"])
    id1, id2 = store.create_node(first), store.create_node(second)
    assert paths.SEQUENCE_RE.match(id1) and int(id2) == int(id1) + 1
    loaded = store.get_node(id1)
    assert loaded.to_dict() == first.to_dict()
    assert loaded.created_time == first.state_time
    # Zuul reads it as the full object and writes it back with "id".
    raw = zuul.get_node(id1)
    assert raw["resources"]["cores"] == 2 and raw["ssh_port"] == 22
    raw["id"] = id1
    raw["state"] = "in-use"
    zuul.kazoo.set(paths.node(id1), json.dumps(raw).encode())
    assert store.get_node(id1).state == NodeState.IN_USE
    assert {n.id for n in store.get_nodes([id1, id2, "0000099999"])} == {id1, id2}
    lock = store.lock_node(id1)
    store.delete_node(loaded)
    lock.release()
    assert store.get_node(id1) is None
    assert store.kazoo.exists(paths.node(id1)) is None


def test_image_records_round_trip(store):
    build = ImageBuild(image_name="debian", state="ready", builder="nb01",
                       builder_id="b-uuid", formats=["qcow2", "raw"],
                       username="zuul", python_path="auto")
    build_id = store.store_build(build)
    assert len(build_id) == 32
    loaded = store.get_build("debian", build_id)
    assert loaded.to_dict() == build.to_dict() and loaded.formats == ["qcow2", "raw"]
    upload = ImageUpload(image_name="debian", build_id=build_id,
                         provider_name="cloud-a", state="ready", external_id="ext-1",
                         external_name="debian-1", format="qcow2")
    upload_id = store.store_upload(upload)
    second = ImageUpload(image_name="debian", build_id=build_id,
                         provider_name="cloud-a", state="uploading")
    second_id = store.store_upload(second)
    assert int(second_id) == int(upload_id) + 1
    assert store.get_upload("debian", build_id, "cloud-a", upload_id).to_dict() == \
        upload.to_dict()
    assert [u.id for u in store.get_uploads("debian", build_id, "cloud-a")] == \
        [second_id, upload_id]
    assert store.upload_providers("debian", build_id) == ["cloud-a"]
    # Locks below builds must not be mistaken for builds or uploads.
    lock = store.lock_image_build("debian")
    upload_lock = store.lock_upload("debian", build_id, "cloud-a")
    assert store.build_ids("debian") == [build_id]
    assert len(store.get_uploads("debian", build_id, "cloud-a")) == 2
    lock.release()
    upload_lock.release()
    store.delete_build("debian", build_id)
    assert store.get_builds("debian") == []


def test_image_markers(store):
    assert not store.is_image_paused("never-built")
    store.pause_image("never-built")  # parents are created (upstream fails here)
    assert store.is_image_paused("never-built")
    store.pause_image("never-built")
    store.unpause_image("never-built")
    assert not store.is_image_paused("never-built")
    before = time.time()
    store.request_build("debian")
    requested = store.build_requested_at("debian")
    assert requested is not None and requested >= before - 5
    store.remove_build_request("debian")
    assert store.build_requested_at("debian") is None


def test_corrupt_records_are_skipped(store, zk_client):
    node_id = store.create_node(Node(provider="p", type=["a"]))
    zk_client.kazoo.set(paths.node(node_id), b"{garbage")
    assert store.get_node(node_id) is None
    good = store.create_node(Node(provider="p", type=["a"]))
    assert [n.id for n in store.get_nodes([node_id, good])] == [good]
    zk_client.kazoo.create(paths.request("100-0000009999"), b"[]", makepath=True)
    assert store.get_request("100-0000009999") is None


# -- locks: interoperability with kazoo's recipe (what Zuul uses) -----------


def test_node_locked_by_kazoo_is_locked_for_us(store, zuul):
    node_id = store.create_node(Node(provider="p", type=["a"]))
    assert zuul.lock_node(node_id, blocking=False)
    assert store.lock_node(node_id) is None
    assert lock_contenders(store.client, paths.node_lock(node_id))
    zuul.unlock_node(node_id)
    lock = store.lock_node(node_id)
    assert lock is not None
    lock.release()


def test_node_locked_by_us_is_locked_for_kazoo(store, zuul):
    node_id = store.create_node(Node(provider="p", type=["a"]))
    lock = store.lock_node(node_id)
    contender = lock.node.rsplit("/", 1)[1]
    # Same naming as the recipe: <uuid4 hex>__lock__<10 digits>.
    assert len(contender.split("__lock__")[0]) == 32
    assert paths.is_lock_contender(contender)
    assert not zuul.lock_node(node_id, blocking=False)
    with pytest.raises(LockTimeout):
        KazooLock(zuul.kazoo, paths.node_lock(node_id)).acquire(timeout=0.2)
    lock.release()
    assert zuul.lock_node(node_id, blocking=False)
    zuul.unlock_node(node_id)


def test_request_lock_interop_and_blocking_handover(store, zuul):
    request_id = zuul.submit(["a"])
    lock = store.lock_request(request_id)
    assert lock is not None
    assert not zuul.revise(request_id, 1)  # Zuul gives up while we hold it
    kazoo_lock = KazooLock(zuul.kazoo, paths.request_lock(request_id))
    acquired = threading.Event()

    def take():
        kazoo_lock.acquire(timeout=10)
        acquired.set()

    thread = threading.Thread(target=take)
    thread.start()
    time.sleep(0.2)
    assert not acquired.is_set()
    lock.release()
    assert acquired.wait(5)
    # Our blocking acquire waits for kazoo's holder in turn.
    ours = Lock(store.client, paths.request_lock(request_id))
    timer = threading.Timer(0.3, kazoo_lock.release)
    timer.start()
    start = time.monotonic()
    assert ours.acquire(blocking=True, timeout=10)
    assert time.monotonic() - start >= 0.25
    ours.release()
    thread.join()
    # Release leaves the lock directory in place, as the recipe does.
    assert store.kazoo.exists(paths.request_lock(request_id)) is not None


def test_blocking_lock_times_out(store):
    holder = Lock(store.client, "/nodepool/test-lock")
    assert holder.acquire(blocking=False)
    waiter = Lock(store.client, "/nodepool/test-lock")
    assert not waiter.acquire(blocking=True, timeout=0.3)
    assert len(lock_contenders(store.client, "/nodepool/test-lock")) == 1
    holder.release()


def test_only_one_of_many_threads_gets_a_lock(store):
    node_id = store.create_node(Node(provider="p", type=["a"]))
    winners = []
    barrier = threading.Barrier(8)

    def contend():
        barrier.wait()
        lock = store.lock_node(node_id)
        if lock is not None:
            winners.append(lock)

    threads = [threading.Thread(target=contend) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1
    winners[0].release()


# -- components ---------------------------------------------------------------


def test_pool_component_registration_update_and_unregister(store, zk_client):
    component = new_pool_component("cloud-a", "main", ["b", "a"], priority=50)
    assert component.id.split("-PoolWorker.")[1].startswith("cloud-a-main-")
    registration = ComponentRegistration(zk_client, component)
    registration.register()
    [found] = store.components("pool")
    assert isinstance(found, PoolComponent)
    assert found.id == component.id and found.supported_labels == ["a", "b"]
    assert found.model_api == 0 and found.state == ComponentState.RUNNING
    registration.update(paused=True)
    assert store.components("pool")[0].paused is True
    registration.unregister()
    assert store.components("pool") == []


def test_missing_chroot_is_created_on_connect(make_zk_client, zk_hosts, zk_admin,
                                              zk_chroot):
    client = make_zk_client(hosts=f"{zk_hosts}/nested/deeper")
    Store(client).create_node(Node(provider="p", type=["a"]))
    assert zk_admin.get_children(f"{zk_chroot}/nested/deeper/nodepool/nodes") == \
        ["0000000000"]


def test_bulk_reads_keep_order_and_report_missing_znodes(zk_client):
    """get_many/get_children_many span several multiRead requests (200 reads
    each); answers come back in request order, a missing znode as None."""
    kazoo = zk_client.kazoo
    kazoo.ensure_path("/bulk")
    present = {i for i in range(450) if i % 3}
    tx = kazoo.transaction()
    for i in sorted(present):
        tx.create(f"/bulk/{i:04d}", str(i).encode())
    tx.commit()
    kazoo.create("/bulk/0001/child-a")
    kazoo.create("/bulk/0001/child-b")
    paths = [f"/bulk/{i:04d}" for i in range(450)]
    datas = zk_client.get_many(paths)
    assert [d[0].decode() if d else None for d in datas] == \
        [str(i) if i in present else None for i in range(450)]
    children = zk_client.get_children_many(paths)
    assert sorted(children[1]) == ["child-a", "child-b"]
    assert children[0] is None and children[2] == []
    assert zk_client.get_many([]) == []


def test_cli_reads_nodes_with_their_locks_across_chunks(zk_client, capsys):
    """``nodepool list`` reads each node's data and lock directory in one
    pipeline of several multiRead requests: every node is paired with its
    own lock state, a corrupt record is skipped with a warning."""
    from nodepool.cmd.common import read_nodes
    from nodepool.zk.records import Node, NodeState
    kazoo = zk_client.kazoo
    count = 250  # 500 reads: three multiRead requests of 200
    for index in range(count):
        node_id = f"{index:010d}"
        raw = b"{broken" if index == 77 else Node(
            id=node_id, state=NodeState.READY, provider="p", type=["small"]).to_json()
        kazoo.create(paths.node(node_id), raw, makepath=True)
        if index % 7 == 0:
            kazoo.create(f"{paths.node_lock(node_id)}/{'a' * 32}__lock__0000000000",
                         makepath=True)
        elif index % 11 == 0:
            kazoo.ensure_path(paths.node_lock(node_id))  # lock released: empty
    nodes = read_nodes(zk_client)
    assert [n.id for n, _ in nodes] == [f"{i:010d}" for i in range(count) if i != 77]
    assert all(locked == (int(n.id) % 7 == 0) for n, locked in nodes)
    assert "skipping corrupt node 0000000077" in capsys.readouterr().err
