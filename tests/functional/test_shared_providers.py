"""Several of our launchers serving one provider (issue 17): the work is
shared, quota holds at every moment, a launcher's death loses nothing, and
a provider that fails moves its requests to another."""

import json
import subprocess
import sys
import threading

import pytest

from conftest import wait_until
from launcher_fixtures import crash
from nodepool.drivers.fake.adapter import FakeCloud
from nodepool.launcher import capacity
from nodepool.testing.burst import Burst, Observer
from nodepool.zk.capacity import CapacityStore
from nodepool.zk.records import NodeState

SHARED = """
labels:
  - name: small
providers:
  - name: fake-cloud
    cloud: fake
    region-name: r1
    rate: 0.001
    launch-retries: 2
    simulation: {{max-instances: {max_servers}, boot-delay: {boot_delay}}}
    cloud-images:
      - name: precise
        image-name: Fake Precise
    pools:
      - name: main
        max-servers: {max_servers}
        labels:
          - name: small
            cloud-image: precise
            min-ram: 1024
"""

TWO_PROVIDERS = """
labels:
  - name: small
providers:
  - name: fake-a
    cloud: fake
    region-name: ra
    rate: 0.001
    priority: 1
    launch-retries: 2
    simulation: {{{simulation_a}}}
    cloud-images:
      - name: precise
        image-name: Fake Precise
    pools:
      - name: main
        max-servers: 10
        labels:
          - name: small
            cloud-image: precise
            min-ram: 1024
  - name: fake-b
    cloud: fake
    region-name: rb
    rate: 0.001
    priority: 2
    cloud-images:
      - name: precise
        image-name: Fake Precise
    pools:
      - name: main
        max-servers: 10
        labels:
          - name: small
            cloud-image: precise
            min-ram: 1024
"""


@pytest.fixture
def observer(env, zk_hosts):
    watcher = Observer(zk_hosts)
    yield watcher
    watcher.stop()


def shared(env, max_servers=20, boot_delay=0.0):
    return env.config(SHARED.format(max_servers=max_servers, boot_delay=boot_delay))


def fake_cloud():
    return FakeCloud.get("fake", "r1")


def check_burst(burst, launchers, max_servers):
    """Every request fulfilled, each node given to one request only, and
    node records of the provider never above its quota."""
    assert burst.unfinished == 0
    given = [n["id"] for nodes in burst.given.values() for n in nodes]
    assert len(given) == len(burst.submitted), "each request got its one node"
    assert len(set(given)) == len(given), "a node went to two requests"
    for request_id, nodes in burst.given.items():
        assert all(n["allocated_to"] == request_id for n in nodes)
    assert 0 < burst.observer.peaks["fake-cloud"] <= max_servers
    # The cloud never refused a create: our count was exact, not merely safe.
    assert CapacityStore(launchers[0].client).entries() == []


def test_three_launchers_share_a_burst_with_quota_exact_throughout(env, zuul, observer):
    path = shared(env, max_servers=20)
    launchers = [env.start(path) for _ in range(3)]
    wait_until(lambda: len(launchers[0].views.membership().serving(
        "fake-cloud", "main")) == 3, message="three launchers registered")
    burst = Burst(zuul, observer)
    try:
        burst.run([["small"]] * 300, timeout=240)
    finally:
        burst.stop()
    check_burst(burst, launchers, 20)
    # Spread over all three.
    shares = [launcher.counters["launches"] for launcher in launchers]
    assert all(share > 0 for share in shares), shares
    assert sum(shares) == 300
    env.settle()
    assert fake_cloud().servers == {}, "an instance outlived its node"


def test_launcher_killed_mid_burst_loses_nothing(env, zuul, observer):
    path = shared(env, max_servers=30, boot_delay=1.0)
    launchers = [env.start(path) for _ in range(3)]
    victim, survivors = launchers[1], [launchers[0], launchers[2]]
    wait_until(lambda: len(launchers[0].views.membership().serving(
        "fake-cloud", "main")) == 3, message="three launchers registered")
    in_flight: dict[str, object] = {}
    killed = threading.Event()

    def kill_mid_burst(finished: int) -> None:
        if killed.is_set() or finished < 60:
            return
        launches = {n.id: n.external_id for n in observer.nodes.nodes()
                    if n.state == NodeState.BUILDING and n.progress is not None
                    and n.progress.launcher == victim.id}
        if not launches:
            return
        in_flight.update(launches)
        killed.set()
        crash(victim)

    burst = Burst(zuul, observer)
    try:
        burst.run([["small"]] * 200, timeout=300, during=kill_mid_burst)
    finally:
        burst.stop()
    assert killed.is_set() and in_flight
    check_burst(burst, launchers, 30)
    resumed = sum(launcher.counters["launches_resumed"] for launcher in survivors)
    adopted = sum(launcher.counters["requests_adopted"] for launcher in survivors)
    print(f"{len(in_flight)} launches in flight at the kill, {resumed} resumed, "
          f"{adopted} requests adopted")
    assert resumed >= 1 and adopted >= 1
    # Each launch in flight ended in a fulfilled request, with the instance
    # it had when its launcher died: carried on, not abandoned and redone.
    given = {n["id"]: n for nodes in burst.given.values() for n in nodes}
    for node_id, external_id in in_flight.items():
        assert node_id in given, f"node {node_id} was abandoned"
        if external_id is not None:
            assert given[node_id]["external_id"] == external_id
    env.settle()
    assert fake_cloud().servers == {}, "leaked instances"


def test_a_provider_failing_every_create_moves_its_nodes_on(env, zuul, observer):
    failed_nodes: dict[str, list] = {}
    observer.node_watchers.append(
        lambda kind, node_id, node: failed_nodes.setdefault(
            node_id, node.failed_providers) if kind == "changed"
        and node.state == NodeState.FAILED else None)
    path = env.config(TWO_PROVIDERS.format(simulation_a="fail-creates: 1000000"))
    launchers = [env.start(path) for _ in range(2)]
    requests = [zuul.submit(["small"]) for _ in range(8)]
    results = [zuul.wait_for_request(r, timeout=60) for r in requests]
    assert all(r["state"] == "fulfilled" for r in results)
    for result in results:
        assert result["failed_providers"] == ["fake-a"]
        [node_id] = result["nodes"]
        node = zuul.get_node(node_id)
        assert node["provider"] == "fake-b"
        assert node["failed_providers"] == ["fake-a"]
        # Every pool of fake-a (in both launchers) declined it.
        pools_a = {c.id for c in launchers[0].components.pools()
                   if c.provider_name == "fake-a"}
        assert pools_a <= set(result["declined_by"])
    wait_until(lambda: len(failed_nodes) >= len(requests), message="failed nodes seen")
    assert all(providers == ["fake-a"] for providers in failed_nodes.values())


def test_a_provider_short_of_capacity_is_avoided_for_a_while(env, zuul, statsd):
    path = env.config(TWO_PROVIDERS.format(
        simulation_a="quota-error-servers: 1000000"))
    launcher = env.start(path)
    requests = [zuul.submit(["small"]) for _ in range(6)]
    results = [zuul.wait_for_request(r, timeout=60) for r in requests]
    assert all(r["state"] == "fulfilled" for r in results)
    assert {zuul.get_node(r["nodes"][0])["provider"] for r in results} == {"fake-b"}
    env.settle()
    entries = CapacityStore(launcher.client)
    [entry] = entries.entries("fake-a")
    assert entry.key == "Fake Flavor" and entry.labels == ["small"]
    assert entry.errors >= capacity.CAPACITY_ERRORS and entry.avoided()
    assert launcher.capacity.avoided_labels("fake-a") == {"small"}
    # Avoided now: a new request goes straight to fake-b, without an error.
    result = zuul.wait_for_request(zuul.submit(["small"]))
    assert zuul.get_node(result["nodes"][0])["provider"] == "fake-b"
    env.settle()
    assert entries.get("fake-a", "Fake Flavor").errors == entry.errors
    # Shown by nodepool info and statsd.
    info = subprocess.run([sys.executable, "-m", "nodepool.cmd.nodepool", "-c", path,
                           "info", "fake-a", "--json"], capture_output=True,
                          text=True, timeout=120)
    assert info.returncode == 0, info.stderr
    [row] = json.loads(info.stdout)[0]["capacity"]
    assert row["flavor"] == "Fake Flavor" and row["errors"] == entry.errors
    assert row["avoided_until"] is not None and row["labels"] == ["small"]
    assert statsd.wait_for(lambda keys: {
        "nodepool.provider.fake-a.capacity_errors",
        "nodepool.provider.fake-a.capacity.Fake Flavor.avoided"} <= keys, timeout=20)
    assert "nodepool.provider.fake-a.capacity.Fake Flavor.avoided:1|g" in statsd.packets


def test_expired_capacity_entries_are_forgotten(env, zuul, store):
    launcher = env.start(env.config(TWO_PROVIDERS.format(simulation_a="")))
    entries = CapacityStore(launcher.client)
    entries.change("fake-a", "Fake Flavor", lambda e: capacity.count_error(
        e, "small", "someone", "No valid host", 1000.0))
    wait_until(lambda: entries.entries() == [], message="expired entry removed")


def test_an_interrupted_delete_is_carried_on_where_it_stopped(env, zuul):
    path = env.config(SHARED.format(max_servers=5, boot_delay=0.0).replace(
        "boot-delay: 0.0", "boot-delay: 0.0, delete-delay: 30"))
    first = env.start(path)
    request_id = zuul.submit(["small"])
    zuul.wait_for_request(request_id)
    nodes = zuul.accept(request_id)
    zuul.use(nodes)
    zuul.release(nodes)
    [node] = nodes

    def deleting():
        current = first.nodes.get(node["id"])
        return current is not None and current.progress is not None and \
            current.progress.machine.get("state") == "deleting"
    wait_until(deleting, message="delete under way")
    calls = fake_cloud().calls
    crash(first)
    fake_cloud().servers[node["external_id"]].deleted_at = 0  # the cloud is done
    second = env.start(path)
    wait_until(lambda: zuul.get_node(node["id"]) is None, message="node deleted")
    assert second.counters["deletes_resumed"] == 1
    # The delete was not sent again: the machine went on polling.
    assert fake_cloud().calls == calls
