"""Watch-driven caches against a real ZooKeeper server."""

import json
import logging
import random
import threading

import pytest

from conftest import expire_session, wait_until
from nodepool.zk import paths
from nodepool.zk.cache import ImageCache, NodeCache, RequestCache
from nodepool.zk.client import ZooKeeperClient
from nodepool.zk.image_records import ImageBuild, ImageUpload
from nodepool.zk.records import Node, NodeRequest, NodeState, PoolComponent
from nodepool.zk.components import ComponentRegistration, new_pool_component
from nodepool.zk.store import Store


@pytest.fixture
def node_cache(zk_client):
    cache = NodeCache(zk_client).start()
    assert cache.wait_synced(10)
    yield cache
    cache.stop()


@pytest.fixture
def request_cache(zk_client):
    cache = RequestCache(zk_client).start()
    assert cache.wait_synced(10)
    yield cache
    cache.stop()


@pytest.fixture
def writer(make_zk_client):
    """A separate session that changes data, as another daemon would."""
    return Store(make_zk_client())


def test_node_cache_follows_create_update_delete(node_cache, writer):
    node = Node(provider="p", pool="main", type=["a"])
    node_id = writer.create_node(node)
    assert node_cache.wait_for(lambda: node_cache.get(node_id) is not None, 5)
    assert node_cache.get(node_id).state == NodeState.INIT
    node.set_state(NodeState.READY)
    writer.update_node(node)
    assert node_cache.wait_for(
        lambda: node_cache.get(node_id).state == NodeState.READY, 5)
    assert node_cache.get(node_id).version == node.version
    writer.delete_node(node)
    assert node_cache.wait_for(lambda: node_cache.get(node_id) is None, 5)
    assert node_id not in node_cache.ids()


def test_node_cache_loads_existing_nodes_on_start(zk_client, writer):
    ids = [writer.create_node(Node(provider="p", type=["a"])) for _ in range(25)]
    lock = writer.lock_node(ids[3])
    cache = NodeCache(zk_client).start()
    try:
        assert cache.wait_synced(10)
        assert cache.ids() == sorted(ids)
        assert cache.is_locked(ids[3]) and not cache.is_locked(ids[4])
    finally:
        cache.stop()
        lock.release()


def test_node_cache_tracks_lock_contenders_from_zuul(node_cache, writer, zuul):
    node_id = writer.create_node(Node(provider="p", type=["a"]))
    assert node_cache.wait_for(lambda: node_cache.get(node_id) is not None, 5)
    assert not node_cache.is_locked(node_id)
    assert zuul.lock_node(node_id, blocking=False)
    assert node_cache.wait_for(lambda: node_cache.is_locked(node_id), 5)
    assert len(node_cache.lock_contenders(node_id)) == 1
    zuul.unlock_node(node_id)
    assert node_cache.wait_for(lambda: not node_cache.is_locked(node_id), 5)


def test_listeners_hear_changes(node_cache, writer):
    heard = []
    node_cache.add_listener(lambda kind, key, record: heard.append((kind, key)))
    node = Node(provider="p", type=["a"])
    node_id = writer.create_node(node)
    # Seen before it goes: a node deleted before the cache's read of it
    # reaches the server is never heard of at all (nothing to report).
    assert node_cache.wait_for(lambda: ("changed", node_id) in heard, 5)
    writer.delete_node(node)
    assert node_cache.wait_for(lambda: ("deleted", node_id) in heard, 5)


def test_corrupt_and_empty_nodes_are_skipped_and_logged(node_cache, writer, caplog):
    caplog.set_level(logging.WARNING, logger="nodepool.zk.cache")
    kazoo = writer.kazoo
    good = writer.create_node(Node(provider="p", type=["a"]))
    bad = kazoo.create(paths.NODES + "/", b'{"state": 17}', sequence=True)
    bad_id = bad.rsplit("/", 1)[1]
    empty = kazoo.create(paths.NODES + "/", b"", sequence=True).rsplit("/", 1)[1]
    assert node_cache.wait_for(lambda: empty in node_cache.empty_ids, 5)
    assert node_cache.wait_for(lambda: bad_id in node_cache.corrupt_ids, 5)
    assert node_cache.ids() == [good]
    assert any(bad_id in r.getMessage() and "corrupt" in r.getMessage()
               for r in caplog.records)
    # Repaired records appear; removed ones are forgotten.
    kazoo.set(bad, json.dumps({"state": "ready", "provider": "p"}).encode())
    assert node_cache.wait_for(lambda: node_cache.get(bad_id) is not None, 5)
    assert bad_id not in node_cache.corrupt_ids
    kazoo.delete(paths.node(empty))
    assert node_cache.wait_for(lambda: empty not in node_cache.empty_ids, 5)


def test_request_cache_follows_zuul_requests(request_cache, zuul):
    first = zuul.submit(["a"], priority="200")
    urgent = zuul.submit(["b"], priority="100")
    assert request_cache.wait_for(lambda: len(request_cache) == 2, 5)
    assert [r.id for r in request_cache.sorted_requests()] == [urgent, first]
    zuul.revise(first, 4)
    assert request_cache.wait_for(
        lambda: request_cache.get(first).relative_priority == 4, 5)
    zuul.cancel(first)
    assert request_cache.wait_for(lambda: request_cache.get(first) is None, 5)
    zuul.kazoo.set(paths.request(urgent), b"not json")
    assert request_cache.wait_for(lambda: request_cache.get(urgent) is None, 5)
    assert urgent in request_cache.corrupt_ids


def test_image_cache(zk_client, writer):
    cache = ImageCache(zk_client).start()
    try:
        assert cache.wait_synced(10)
        old = ImageBuild(image_name="debian", state="ready", formats=["qcow2"])
        new = ImageBuild(image_name="debian", state="ready", formats=["qcow2"])
        writer.store_build(old)
        writer.store_build(new)
        uploads = []
        for build in (old, new):
            upload = ImageUpload(image_name="debian", build_id=build.id,
                                 provider_name="cloud-a", state="ready",
                                 external_id=f"ext-{build.id}")
            writer.store_upload(upload)
            uploads.append(upload)
        writer.store_upload(ImageUpload(image_name="debian", build_id=new.id,
                                        provider_name="cloud-b", state="uploading"))
        assert cache.wait_for(lambda: len(cache.uploads("debian")) == 3, 5)
        latest = cache.latest_ready_upload("debian", "cloud-a")
        assert latest.build_id == new.id and latest.path == uploads[1].path
        assert cache.latest_ready_upload("debian", "cloud-b") is None
        assert [b.id for b in cache.builds("debian")] == [new.id, old.id]
        # Deleting the newest upload makes the previous one current.
        writer.delete_upload(uploads[1])
        assert cache.wait_for(
            lambda: cache.latest_ready_upload("debian", "cloud-a").build_id == old.id, 5)
        # Markers and the build lock.
        writer.pause_image("debian")
        writer.request_build("debian")
        assert cache.wait_for(lambda: cache.flags("debian").paused, 5)
        assert cache.wait_for(
            lambda: cache.flags("debian").build_requested_at is not None, 5)
        lock = writer.lock_image_build("debian")
        assert cache.wait_for(lambda: cache.is_building("debian"), 5)
        lock.release()
        writer.unpause_image("debian")
        assert cache.wait_for(lambda: not cache.is_building("debian")
                              and not cache.flags("debian").paused, 5)
        writer.delete_build("debian", old.id)
        assert cache.wait_for(lambda: len(cache.builds("debian")) == 1, 5)
        assert cache.latest_ready_upload("debian", "cloud-a") is None
    finally:
        cache.stop()


def test_cache_converges_under_concurrent_churn(node_cache, make_zk_client):
    """Many writers creating, updating, deleting: the mirror ends exact."""
    stores = [Store(make_zk_client()) for _ in range(3)]
    rng = random.Random(7)

    def churn(store, seed):
        local = random.Random(seed)
        mine = []
        for _ in range(80):
            action = local.random()
            if action < 0.5 or not mine:
                node = Node(provider="p", type=["a"])
                store.create_node(node)
                mine.append(node)
            elif action < 0.8:
                node = local.choice(mine)
                node.set_state(local.choice(NodeState.ALL))
                store.update_node(node)
            else:
                node = mine.pop(local.randrange(len(mine)))
                store.delete_node(node)

    threads = [threading.Thread(target=churn, args=(s, rng.random())) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    truth = {n.id: n for n in stores[0].get_nodes(stores[0].node_ids())}

    def matches():
        cached = {n.id: n for n in node_cache.nodes()}
        return (cached.keys() == truth.keys()
                and all(cached[i].state == truth[i].state for i in truth))

    assert node_cache.wait_for(matches, 10)


def test_idle_cache_does_not_poll(node_cache, zk_client, writer):
    writer.create_node(Node(provider="p", type=["a"]))
    assert node_cache.wait_for(lambda: len(node_cache) == 1, 5)
    sent = []
    original = zk_client.send_ordered
    zk_client.send_ordered = lambda *args: (sent.append(args), original(*args))
    try:
        threading.Event().wait(1.5)
        assert sent == []
    finally:
        zk_client.send_ordered = original


def test_session_expiry_is_survived(zk_server, zk_hosts, make_zk_client, writer):
    client = make_zk_client()
    states = []
    client.add_state_listener(states.append)
    cache = NodeCache(client).start()
    registration = ComponentRegistration(client, new_pool_component("p", "main", ["a"]))
    registration.register()
    try:
        assert cache.wait_synced(10)
        before = writer.create_node(Node(provider="p", type=["a"]))
        assert cache.wait_for(lambda: cache.get(before) is not None, 5)
        expire_session(client, zk_hosts)
        assert "LOST" in states
        assert client.wait_until_connected(15)
        # Changes after the new session are still delivered (watch restored).
        after = writer.create_node(Node(provider="p", type=["a"]))
        assert cache.wait_for(lambda: cache.get(after) is not None, 10)
        writer.delete_node(writer.get_node(before))
        assert cache.wait_for(lambda: cache.get(before) is None, 10)
        # The ephemeral component record was registered again.
        wait_until(lambda: [c for c in writer.components("pool")
                            if isinstance(c, PoolComponent)
                            and c.id == registration.component.id], 10,
                   message="component re-registration")
    finally:
        registration.unregister()
        cache.stop()


def test_dropped_connection_is_survived_and_missed_changes_caught_up(
        zk_proxy, zk_chroot, writer):
    client = ZooKeeperClient(zk_proxy.hosts + zk_chroot, timeout=10)
    client.connect(timeout=15)
    states = []
    client.add_state_listener(states.append)
    cache = NodeCache(client).start()
    try:
        assert cache.wait_synced(10)
        keep = writer.create_node(Node(provider="p", type=["a"]))
        gone = Node(provider="p", type=["a"])
        writer.create_node(gone)
        assert cache.wait_for(lambda: len(cache) == 2, 5)
        zk_proxy.refusing = True
        assert zk_proxy.drop_all() >= 1
        wait_until(lambda: "SUSPENDED" in states, 10, message="suspension")
        assert client.suspended
        # While it is disconnected, the world changes.
        writer.delete_node(gone)
        changed = writer.get_node(keep)
        changed.set_state(NodeState.USED)
        writer.update_node(changed)
        new = writer.create_node(Node(provider="p", type=["a"]))
        zk_proxy.refusing = False
        assert client.wait_until_connected(20)
        assert "LOST" not in states  # same session, only the connection dropped
        assert cache.wait_for(lambda: sorted(cache.ids()) == sorted([keep, new])
                              and cache.get(keep).state == NodeState.USED, 10)
        # And the watch works again afterwards.
        later = writer.create_node(Node(provider="p", type=["a"]))
        assert cache.wait_for(lambda: cache.get(later) is not None, 10)
    finally:
        cache.stop()
        client.disconnect()


def test_connect_gives_a_clear_error_when_nobody_listens():
    from nodepool.zk.client import ZooKeeperError
    from nodepool.testing.zkserver import free_port
    client = ZooKeeperClient(f"127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(ZooKeeperError, match="cannot connect to ZooKeeper"):
        client.connect(timeout=1.5)


def test_request_cache_sees_min_ready_requests_written_by_us(request_cache, writer):
    request = NodeRequest(node_types=["a"], requestor="NodePool:min-ready", reuse=False)
    request_id = writer.submit_request(request, priority="900", ephemeral=True)
    assert request_cache.wait_for(lambda: request_cache.get(request_id) is not None, 5)
    assert request_cache.get(request_id).is_min_ready


# -- our own writes feed the cache without a read back ----------------------

@pytest.fixture
def mirrored(zk_client, node_cache, request_cache):
    """A store whose node and request writes feed the caches directly."""
    store = Store(zk_client)
    store.mirror_writes(node_cache, request_cache)
    return store


def test_own_writes_reach_the_cache_without_being_read_back(mirrored, node_cache,
                                                            request_cache, zuul):
    node = Node(provider="p", pool="main", type=["a"])
    mirrored.create_node(node)
    assert node_cache.wait_for(lambda: node_cache.get(node.id) is not None, 5)
    saved = node_cache.reads_saved
    for state in (NodeState.BUILDING, NodeState.READY, NodeState.DELETING):
        node.set_state(state)
        mirrored.update_node(node)
        # The write has returned: the cache holds it as soon as its queue
        # drains, with the version the server gave it.
        assert node_cache.wait_for(
            lambda: node_cache.get(node.id).version == node.version, 5)
        assert node_cache.get(node.id).state == state
    assert node_cache.reads_saved == saved + 3

    mirrored.kazoo.ensure_path(paths.REQUEST_LOCKS)
    request_id = zuul.submit(["a"])
    assert request_cache.wait_for(lambda: request_cache.get(request_id) is not None, 5)
    cached = request_cache.get(request_id)
    request = cached.copy()
    request.version = cached.version
    request.set_state("pending")
    lock = mirrored.lock_and_update_request(request)
    assert lock is not None
    request.set_state("fulfilled")
    request.nodes = [node.id]
    assert mirrored.fulfil_request(request, [], lock)
    assert request_cache.wait_for(
        lambda: request_cache.get(request_id).state == "fulfilled", 5)
    assert request_cache.get(request_id).nodes == [node.id]
    assert request_cache.get(request_id).version == request.version + 1
    assert request_cache.reads_saved == 2


def test_a_change_made_just_after_ours_wins_in_the_cache(mirrored, node_cache, writer):
    node = Node(provider="p", pool="main", type=["a"])
    mirrored.create_node(node)
    for attempt in range(20):
        node.set_state(NodeState.READY)
        mirrored.update_node(node)
        theirs = node.copy()
        theirs.set_state(NodeState.IN_USE)
        theirs.comment = f"theirs {attempt}"
        writer.update_node(theirs)
        assert node_cache.barrier(5)
        cached = node_cache.get(node.id)
        assert (cached.comment, cached.version) == (theirs.comment, theirs.version)
        node.version = theirs.version


def test_a_change_skipped_for_a_write_that_failed_is_read(node_cache, writer):
    node = Node(provider="p", pool="main", type=["a"], comment="before")
    writer.create_node(node)
    assert node_cache.wait_for(lambda: node_cache.get(node.id) is not None, 5)
    path = paths.node(node.id)
    # A write of ours is announced; the next change is somebody else's.
    node_cache.expect_write(path)
    node.comment = "theirs"
    writer.update_node(node)
    # The event was taken for ours: without news from the writer nothing
    # is read...
    assert not node_cache.wait_for(
        lambda: node_cache.get(node.id).comment == "theirs", 0.5)
    # ...and once our write is known to have failed, the change is read.
    node_cache.write_failed(path)
    assert node_cache.wait_for(lambda: node_cache.get(node.id).comment == "theirs", 5)


def test_a_barrier_does_not_wait_for_a_writer_to_report(node_cache, writer):
    node = Node(provider="p", pool="main", type=["a"], comment="before")
    writer.create_node(node)
    assert node_cache.wait_for(lambda: node_cache.get(node.id) is not None, 5)
    node_cache.expect_write(paths.node(node.id))
    node.comment = "after"
    writer.update_node(node)
    assert node_cache.barrier(5)
    assert node_cache.get(node.id).comment == "after"


def test_an_older_own_write_never_replaces_a_newer_read(node_cache, writer):
    node = Node(provider="p", pool="main", type=["a"], comment="v0")
    writer.create_node(node)
    assert node_cache.wait_for(lambda: node_cache.get(node.id) is not None, 5)
    path = paths.node(node.id)
    old_data = node.to_json()
    node_cache.expect_write(path)
    node.comment = "v1"
    writer.update_node(node)          # taken for ours, skipped
    node.comment = "v2"
    writer.update_node(node)          # read
    assert node_cache.wait_for(lambda: node_cache.get(node.id).comment == "v2", 5)

    class Stat:
        version = 1
    # Our (pretend) write comes back late with version 1: ignored.
    node_cache.wrote(path, old_data, Stat())
    assert node_cache.barrier(5)
    assert node_cache.get(node.id).comment == "v2"
