"""Static driver specifics, with real sshd hosts on loopback."""


import pytest

from conftest import wait_until
from nodepool.zk.records import NodeState

from nodepool.testing.sshdserver import SSHServer  # noqa: E402


@pytest.fixture
def hosts():
    servers = [SSHServer().start() for _ in range(2)]
    yield servers
    for server in servers:
        server.stop()


def static_config(nodes: str) -> str:
    return f"""
labels:
  - name: a
  - name: b
providers:
  - name: rack
    driver: static
    pools:
      - name: main
        node-attributes: {{rack: r1}}
        nodes:
{nodes}
"""


def host(server, labels="[a]", jobs=1, extra="", timeout=3):
    return (f"          - name: 127.0.0.1\n"
            f"            connection-port: {server.port}\n"
            f"            labels: {labels}\n"
            f"            max-parallel-jobs: {jobs}\n"
            f"            timeout: {timeout}\n{extra}")


def nodes_of(launcher, state=NodeState.READY):
    return [n for n in launcher.nodes.nodes() if n.state == state]


def test_registration_records_the_host(env, hosts):
    server = hosts[0]
    launcher = env.start(env.config(static_config(host(server, labels="a b", jobs=2))))
    registered = wait_until(lambda: len(nodes_of(launcher)) == 2 and nodes_of(launcher),
                            timeout=20, message="two slots registered")
    assert sorted(n.slot for n in registered) == [0, 1]
    for node in registered:
        assert node.type == ["a", "b"] and node.launcher == "static driver"
        assert node.hostname == node.external_id == node.interface_ip == "127.0.0.1"
        assert node.public_ipv4 == "127.0.0.1"
        assert node.connection_port == server.port
        assert set(node.host_keys) == set(server.host_keys)
        assert node.attributes == {"rack": "r1"}


def test_configured_key_must_match(env, hosts):
    good, bad = hosts
    wrong_key = f"            host-key: '{bad.host_keys[0]}'\n"
    right_key = f"            host-key: '{good.host_keys[0]}'\n"
    launcher = env.start(env.config(static_config(
        host(good, extra=right_key) + host(bad, extra=f"            host-key: "
                                                  f"'{good.host_keys[0]}'\n"))))
    wait_until(lambda: len(nodes_of(launcher)) == 1, timeout=20, message="registered")
    env.settle()
    [node] = nodes_of(launcher)
    assert node.connection_port == good.port  # the impostor was not registered
    assert wrong_key  # (the bad host presents its own keys, not the configured one)


def test_unreachable_host_is_not_registered_and_dead_host_is_retired(env, hosts,
                                                                      zuul):
    first, second = hosts
    launcher = env.start(env.config(static_config(host(first) + host(second))))
    wait_until(lambda: len(nodes_of(launcher)) == 2, timeout=20, message="registered")
    second.stop()
    # Two requests, one live slot: whichever picks the dead host's node
    # retires it (liveness check) instead of handing it out.
    requests = [zuul.submit(["a"]) for _ in range(2)]
    wait_until(lambda: all(n.connection_port != second.port
                           for n in launcher.nodes.nodes()), timeout=20,
               message="dead host's node retired")
    served = wait_until(lambda: [r for r in requests
                                 if (zuul.get_request(r) or {}).get("state")
                                 == "fulfilled"], timeout=20, message="one served")
    [served_id] = served
    node = zuul.get_node(zuul.get_request(served_id)["nodes"][0])
    assert node["connection_port"] == first.port
    [waiting] = [r for r in requests if r != served_id]
    env.settle()
    assert zuul.get_request(waiting)["state"] == "requested"  # waits, not failed


def test_dead_host_is_probed_with_backoff_and_registered_once_back(env, hosts, caplog,
                                                                   monkeypatch):
    from nodepool.launcher import inventory
    monkeypatch.setattr(inventory, "RETRY_FIRST", 2.0)
    alive, dead = hosts
    dead.stop()
    launcher = env.start(env.config(static_config(
        host(alive) + host(dead, jobs=3, timeout=1))))
    wait_until(lambda: len(nodes_of(launcher)) == 1, timeout=20, message="registered")

    def probes():
        return [r for r in caplog.records if "is not usable" in r.getMessage()
                and str(dead.port) in r.getMessage()]
    wait_until(probes, timeout=20, message="dead host probed")
    # Cleanup wakes the registrar every 0.3 s here; the dead host's three
    # slots share one probe, and it waits for its backoff.
    env.settle()
    assert len(probes()) == 1
    assert "next try in 2s" in probes()[0].getMessage()
    dead.start()
    wait_until(lambda: len(nodes_of(launcher)) == 4, timeout=20,
               message="host registered once back")
    assert sorted(n.slot for n in nodes_of(launcher)
                  if n.connection_port == dead.port) == [0, 1, 2]
    assert len(probes()) <= 2


def test_reconfiguration_adds_slots_and_retires_removed_hosts(env, hosts):
    first, second = hosts
    path = env.config(static_config(host(first) + host(second)))
    launcher = env.start(path)
    wait_until(lambda: len(nodes_of(launcher)) == 2, timeout=20, message="registered")
    env.rewrite(path, static_config(host(first, jobs=3)))
    wait_until(lambda: sorted(n.connection_port for n in nodes_of(launcher)) ==
               [first.port] * 3, timeout=20, message="slots added, host removed")
