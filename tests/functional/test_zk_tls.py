"""ZooKeeper over TLS, against a server with a real TLS port."""

import pytest

from nodepool.config import load_config
from nodepool.zk.cache import NodeCache
from nodepool.zk.client import ZooKeeperClient, ZooKeeperError, ZooKeeperTLS, \
    client_from_config
from nodepool.zk.records import Node
from nodepool.zk.store import Store


@pytest.fixture
def tls_files(zk_tls_server):
    return zk_tls_server.tls_files


def test_tls_connection_from_config_reads_writes_and_watches(zk_tls_server, tls_files,
                                                             tmp_path):
    config_path = tmp_path / "nodepool.yaml"
    config_path.write_text(f"""
zookeeper-servers:
  - host: 127.0.0.1
    port: {zk_tls_server.tls_port}
    chroot: /tls-test
zookeeper-tls:
  cert: {tls_files.client_cert}
  key: {tls_files.client_key}
  ca: {tls_files.ca}
labels: []
""")
    config = load_config(str(config_path))
    client = client_from_config(config)
    client.connect(timeout=20)
    try:
        cache = NodeCache(client).start()
        assert cache.wait_synced(10)
        store = Store(client)
        node_id = store.create_node(Node(provider="p", type=["a"]))
        assert store.get_node(node_id).provider == "p"
        assert cache.wait_for(lambda: cache.get(node_id) is not None, 5)
        cache.stop()
        client.kazoo.delete("/", recursive=True)
    finally:
        client.disconnect()


def test_tls_rejects_a_server_signed_by_another_ca(zk_tls_server, tls_files):
    tls = ZooKeeperTLS(cert=tls_files.client_cert, key=tls_files.client_key,
                       ca=tls_files.other_ca)
    client = ZooKeeperClient(zk_tls_server.tls_hosts, timeout=5, tls=tls)
    with pytest.raises(ZooKeeperError, match="cannot connect"):
        client.connect(timeout=3)


def test_plain_client_cannot_talk_to_the_tls_port(zk_tls_server):
    client = ZooKeeperClient(zk_tls_server.tls_hosts, timeout=5)
    with pytest.raises(ZooKeeperError):
        client.connect(timeout=3)


def test_unreadable_tls_file_is_reported_before_connecting(zk_tls_server, tls_files):
    tls = ZooKeeperTLS(cert=tls_files.client_cert, key="/nonexistent/client.key",
                       ca=tls_files.ca)
    client = ZooKeeperClient(zk_tls_server.tls_hosts, timeout=5, tls=tls)
    with pytest.raises(ZooKeeperError, match="key file '/nonexistent/client.key' is "
                       "not readable"):
        client.connect(timeout=3)


def test_connection_counters_of_tls_clients_come_from_the_tls_port(zk_tls_server,
                                                                   tls_files):
    """The benches count each launcher's ZooKeeper packets with ``cons``; a
    TLS client's connection is listed only by the TLS port's ``cons``."""
    client = ZooKeeperClient(f"127.0.0.1:{zk_tls_server.tls_port}",
                             tls=ZooKeeperTLS(cert=tls_files.client_cert,
                                              key=tls_files.client_key, ca=tls_files.ca))
    client.connect(timeout=20)
    try:
        local_port = client.kazoo._connection._socket.getsockname()[1]
        for _ in range(5):
            client.kazoo.exists("/")
        secure = zk_tls_server.four_letter("cons", secure=True)
        plain = zk_tls_server.four_letter("cons")
    finally:
        client.disconnect()
    assert f":{local_port}[" in secure
    line = next(x for x in secure.splitlines() if f":{local_port}[" in x)
    assert int(line.split("recved=")[1].split(",")[0]) >= 6
    assert f":{local_port}[" not in plain
