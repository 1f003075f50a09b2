"""Connection trouble at the worst moments, with a real ZooKeeper behind a
TCP proxy that can hold traffic in one direction and then cut it: requests
the server never saw, and requests it applied whose replies were lost.

Nothing may stay locked or allocated afterwards: lock releases and abandoned
lock attempts are finished once the connection is back, and a fulfilment
whose write failed either applied (and counts) or frees its nodes."""

import threading

import pytest

from conftest import wait_until
from launcher_fixtures import FAKE_PROVIDER
from nodepool.zk import paths
from nodepool.zk.client import ZooKeeperClient
from nodepool.zk.locks import Lock, lock_contenders
from nodepool.zk.records import NodeState

LOCK_DIR = "/test/lock"


def cut_after(proxy, direction: str, delay: float = 0.3) -> None:
    """Hold traffic in ``direction`` now; after ``delay`` drop every
    connection (what was held is lost) and let traffic flow again."""
    proxy.hold(direction)

    def cut():
        proxy.drop_all()
        proxy.resume()
    threading.Timer(delay, cut).start()


@pytest.fixture
def proxied_client(zk_proxy, zk_chroot):
    client = ZooKeeperClient(f"{zk_proxy.hosts}{zk_chroot}", timeout=10)
    client.connect(timeout=15)
    yield client
    zk_proxy.resume()
    client.disconnect()


def test_release_the_server_never_saw_is_sent_again(proxied_client, zk_client,
                                                    zk_proxy):
    lock = Lock(proxied_client, LOCK_DIR)
    assert lock.acquire(blocking=False)
    generation = proxied_client.session_generation
    cut_after(zk_proxy, "to_server")
    lock.release()  # does not block, whatever the connection does
    assert lock.wait_released(20)
    assert proxied_client.session_generation == generation  # same session
    assert lock_contenders(zk_client, LOCK_DIR) == []
    # And the lock is free for someone else.
    other = Lock(zk_client, LOCK_DIR)
    assert other.acquire(blocking=False)
    other.release()


def test_release_whose_reply_was_lost_is_done(proxied_client, zk_client, zk_proxy):
    lock = Lock(proxied_client, LOCK_DIR)
    assert lock.acquire(blocking=False)
    cut_after(zk_proxy, "to_client")
    lock.release()
    assert lock.wait_released(20)
    assert lock_contenders(zk_client, LOCK_DIR) == []


def test_acquire_cut_after_the_server_created_the_contender(proxied_client,
                                                           zk_client, zk_proxy):
    zk_client.kazoo.ensure_path(LOCK_DIR)
    lock = Lock(proxied_client, LOCK_DIR)
    cut_after(zk_proxy, "to_client")
    with pytest.raises(Exception):
        lock.acquire(blocking=False)
    # The server made our contender; nobody told us its name. It must go,
    # or the lock would be held for as long as the session lives.
    assert lock.wait_released(20)
    wait_until(lambda: lock_contenders(zk_client, LOCK_DIR) == [], timeout=5,
               message="no contender left")
    assert lock.acquire(blocking=False)
    lock.release()


def test_lock_and_write_cut_after_applying_leaves_no_contender(proxied_client,
                                                              zk_client, zk_proxy):
    zk_client.kazoo.create("/test/record", b"old", makepath=True)
    lock = Lock(proxied_client, LOCK_DIR)
    cut_after(zk_proxy, "to_client")
    with pytest.raises(Exception):
        lock.acquire_with_write("/test/record", b"new")
    assert lock.wait_released(20)
    assert zk_client.kazoo.get("/test/record")[0] == b"new"  # it did apply
    assert lock_contenders(zk_client, LOCK_DIR) == []


def launcher_via(env, proxy):
    path = env.config("labels:\n  - name: small\nproviders:" + FAKE_PROVIDER)
    text = open(path).read().replace(f"port: {env.zk_server.port}",
                                     f"port: {proxy.port}")
    open(path, "w").write(text)
    return env.start(path)


def no_locks_anywhere(zuul) -> list[str]:
    held = []
    for node_id in zuul.kazoo.get_children(paths.NODES):
        lock_dir = paths.node_lock(node_id)
        if zuul.kazoo.exists(lock_dir) and zuul.kazoo.get_children(lock_dir):
            held.append(node_id)
    if zuul.kazoo.exists(paths.REQUEST_LOCKS):
        for request_id in zuul.kazoo.get_children(paths.REQUEST_LOCKS):
            if zuul.kazoo.get_children(paths.request_lock(request_id)):
                held.append(request_id)
    return held


@pytest.mark.parametrize("direction, failures", [
    ("to_server", 1),   # not applied: tried again, fulfilled
    ("to_server", 2),   # not applied twice: handed back, node freed, served again
    ("to_client", 1),   # applied, reply lost: recognised as done
])
def test_a_failed_fulfilment_leaves_nothing_locked_or_allocated(
        env, zuul, zk_proxy, direction, failures):
    launcher = launcher_via(env, zk_proxy)
    store = launcher.store
    original = store.fulfil_request
    calls = []

    def failing(request, node_locks, request_lock):
        calls.append(request.id)
        if len(calls) <= failures:
            cut_after(zk_proxy, direction)
        return original(request, node_locks, request_lock)

    store.fulfil_request = failing
    request_id = zuul.submit(["small"])
    request = zuul.wait_for_request(request_id, timeout=60)
    assert request["state"] == "fulfilled"
    [node_id] = request["nodes"]
    assert len(calls) == (1 if direction == "to_client" else failures + 1)
    wait_until(lambda: no_locks_anywhere(zuul) == [], timeout=20,
               message="every lock released")
    # One node allocated to the request, however many attempts it took; a
    # node freed by a give-back (if the next attempt launched anew rather
    # than reused it) is ready and free, not held.
    nodes = {n: zuul.get_node(n) for n in zuul.kazoo.get_children(paths.NODES)}
    assert [n for n, data in nodes.items() if data["allocated_to"]] == [node_id]
    assert all(data["state"] == "ready" for data in nodes.values())
    assert len(nodes) <= failures
    # Zuul can take it, and it goes away when returned.
    zuul.run_job(request_id)
    wait_until(lambda: zuul.get_node(node_id) is None, timeout=20,
               message="the used node deleted")
    assert no_locks_anywhere(zuul) == []


def test_a_node_write_cut_during_launch_is_written_again(env, zuul, zk_proxy):
    launcher = launcher_via(env, zk_proxy)
    store = launcher.store
    original = store.update_node
    cut = []

    def failing(node, check_version=False):
        if node.state == NodeState.READY and not cut:
            cut.append(node.id)
            cut_after(zk_proxy, "to_server")
        return original(node, check_version)

    store.update_node = failing
    request_id = zuul.submit(["small"])
    request = zuul.wait_for_request(request_id, timeout=60)
    assert request["state"] == "fulfilled" and request["nodes"] == cut
    assert zuul.get_node(cut[0])["state"] == "ready"
    wait_until(lambda: no_locks_anywhere(zuul) == [], timeout=20,
               message="every lock released")
    env.settle()
    assert zuul.kazoo.get_children(paths.NODES) == cut
