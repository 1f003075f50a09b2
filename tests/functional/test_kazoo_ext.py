"""What nodepool/zk/kazoo_ext.py takes from kazoo's internals is still there
(a kazoo upgrade that moved it fails here first), and the request-queue
gauge it feeds counts real queued requests."""

import inspect
import uuid
from collections import deque

import pytest
from kazoo.client import KazooClient, TransactionRequest
from kazoo.exceptions import NoNodeError
from kazoo.protocol import connection as connection_module
from kazoo.protocol import paths as paths_module
from kazoo.protocol.connection import ConnectionHandler

from conftest import wait_until
from nodepool.zk import kazoo_ext
from nodepool.zk.client import ZooKeeperClient, ZooKeeperTLS


def test_installed_kazoo_is_a_tested_release():
    assert kazoo_ext.kazoo_is_tested(), kazoo_ext.kazoo_version()


def test_the_kazoo_internals_we_extend_are_where_we_expect():
    assert list(inspect.signature(ConnectionHandler._read_watch_event).parameters) \
        == ["self", "buffer", "offset"]
    assert list(inspect.signature(KazooClient._call).parameters) \
        == ["self", "request", "async_object"]
    # The batched reading and sending replace these, with these signatures.
    for name, parameters in (("_read", ["self", "length", "timeout"]),
                             ("_write", ["self", "msg", "timeout"]),
                             ("_read_socket", ["self", "read_timeout"]),
                             ("_send_request", ["self", "read_timeout", "connect_timeout"]),
                             ("_connect", ["self", "host", "hostip", "port"])):
        assert list(inspect.signature(getattr(ConnectionHandler, name)).parameters) \
            == parameters, name
    # Sequential creates in transactions (add_sequential_create).
    assert list(inspect.signature(TransactionRequest._add).parameters) \
        == ["self", "request", "post_processor"]
    assert list(inspect.signature(paths_module._prefix_root).parameters) \
        == ["root", "path", "trailing"]
    assert isinstance(connection_module.CLOSE_RESPONSE, object)
    assert hasattr(connection_module, "_SESSION_EXPIRED")
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


@pytest.fixture(params=["plain", "tls"])
def any_client(request, make_zk_client):
    if request.param == "plain":
        yield make_zk_client()
        return
    server = request.getfixturevalue("zk_tls_server")
    files = server.tls_files
    client = ZooKeeperClient(f"{server.tls_hosts}/batch-{uuid.uuid4().hex}", timeout=10,
                             tls=ZooKeeperTLS(cert=files.client_cert,
                                              key=files.client_key, ca=files.ca))
    client.connect(timeout=20)
    yield client
    client.kazoo.delete("/", recursive=True)
    client.disconnect()


def test_batched_requests_and_buffered_replies_stay_paired(any_client):
    """Hundreds of requests queued at once go out in batches and their
    replies (several per read, some larger than one read) each reach the
    request they answer, over plain TCP and TLS."""
    zk_client = any_client
    kazoo = zk_client.kazoo
    kazoo.ensure_path("/batch")
    sizes = [0, 10, 70000, 1, 200000, 5] * 40
    creates = [kazoo.create_async(f"/batch/n{i}", b"x" * size)
               for i, size in enumerate(sizes)]
    assert [c.get(timeout=30) for c in creates] == \
        [f"/batch/n{i}" for i in range(len(sizes))]
    reads = [kazoo.get_async(f"/batch/n{i}") for i in range(len(sizes))]
    missing = kazoo.get_async("/batch/none")
    assert [len(r.get(timeout=30)[0]) for r in reads] == sizes
    with pytest.raises(NoNodeError):
        missing.get(timeout=10)
    assert zk_client.kazoo.queued_requests == 0
