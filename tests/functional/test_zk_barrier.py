"""The cache barrier against a real ZooKeeper: after ``barrier()`` returns,
every change committed before the call is visible in the cache, even while
other sessions keep writing (what min-ready's exact counts rely on)."""

import threading
import time

from conftest import wait_until
from nodepool.zk.cache import NodeCache
from nodepool.zk.records import Node
from nodepool.zk.store import Store

ROUNDS = 200


def test_barrier_sees_every_write_committed_before_it(make_zk_client):
    reader = make_zk_client()
    writer = Store(make_zk_client())
    noise = Store(make_zk_client())
    cache = NodeCache(reader).start()
    try:
        assert cache.wait_synced(10)
        # Background traffic from a third session: creates and updates that
        # keep the cache thread busy sending reads of its own.
        stop = threading.Event()
        noise_written = [0]

        def churn():
            nodes = [Node(provider="noise", type=["n"]) for _ in range(20)]
            for node in nodes:
                noise.create_node(node)
            deadline = time.monotonic() + 120
            while not stop.is_set() and time.monotonic() < deadline:
                for node in nodes:
                    node.comment = str(noise_written[0])
                    noise.update_node(node)
                    noise_written[0] += 1

        churner = threading.Thread(target=churn, daemon=True)
        churner.start()
        target = Node(provider="p", type=["a"], comment="start")
        writer.create_node(target)
        misses = []
        for round_number in range(ROUNDS):
            # A burst of writes, the last one the one that must be seen.
            for extra in range(3):
                writer.create_node(Node(provider="p", type=["b"]))
            target.comment = f"round-{round_number}"
            writer.update_node(target)
            assert cache.barrier(10)
            seen = cache.get(target.id)
            if seen is None or seen.comment != target.comment:
                misses.append((round_number, seen and seen.comment))
        stop.set()
        churner.join(10)
        assert noise_written[0] > ROUNDS  # the background really wrote meanwhile
        assert misses == []
    finally:
        cache.stop()


def test_barrier_waits_for_a_resync_in_progress(make_zk_client, zk_proxy):
    """A barrier asked for while the cache re-reads its tree after a
    reconnection returns only when the re-read is complete."""
    writer = Store(make_zk_client())
    hosts = f"{zk_proxy.hosts}{make_zk_client().kazoo.chroot}"
    reader = make_zk_client(hosts=hosts)
    cache = NodeCache(reader).start()
    try:
        assert cache.wait_synced(10)
        ids = [writer.create_node(Node(provider="p", type=["a"]))
               for _ in range(300)]
        assert cache.barrier(10)
        assert len(cache) == 300
        generation = cache._resync_generation
        zk_proxy.drop_all()
        wait_until(lambda: cache._resync_generation > generation, 15,
                   message="a resync after the reconnection")
        for node_id in ids[:100]:
            writer.delete_node(Node(id=node_id, provider="p"))
        assert cache.barrier(15)
        assert sorted(cache.ids()) == sorted(ids[100:])
    finally:
        cache.stop()
