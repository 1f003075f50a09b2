"""What nodepool/zk/kazoo_ext.py takes from kazoo's internals is still there
(a kazoo upgrade that moved it fails here first), and the request-queue
gauge it feeds counts real queued requests."""

import inspect
from collections import deque

from kazoo.client import KazooClient
from kazoo.protocol.connection import ConnectionHandler

from conftest import wait_until
from nodepool.zk import kazoo_ext
from nodepool.zk.client import ZooKeeperClient


def test_installed_kazoo_is_a_tested_release():
    assert kazoo_ext.kazoo_is_tested(), kazoo_ext.kazoo_version()


def test_the_kazoo_internals_we_extend_are_where_we_expect():
    assert list(inspect.signature(ConnectionHandler._read_watch_event).parameters) \
        == ["self", "buffer", "offset"]
    assert list(inspect.signature(KazooClient._call).parameters) \
        == ["self", "request", "async_object"]
    client = kazoo_ext.NodepoolKazooClient(hosts="127.0.0.1:1")
    try:
        assert type(client._connection).__mro__[1] is ConnectionHandler
        assert isinstance(client._queue, deque)
        assert hasattr(client._connection, "_write_sock")
        assert client.queued_requests == 0
    finally:
        client.close()


def test_queued_requests_count_what_waits_for_the_connection(zk_proxy, zk_chroot):
    client = ZooKeeperClient(f"{zk_proxy.hosts}{zk_chroot}", timeout=10)
    client.connect(timeout=15)
    try:
        zk_proxy.refusing = True
        zk_proxy.drop_all()
        wait_until(lambda: not client.connected, message="connection dropped")
        answers = [client.kazoo.exists_async("/") for _ in range(5)]
        assert client.queued_requests == 5
        zk_proxy.refusing = False
        assert all(answer.get(timeout=15) is not None for answer in answers)
        assert client.queued_requests == 0
    finally:
        zk_proxy.refusing = False
        client.disconnect()
