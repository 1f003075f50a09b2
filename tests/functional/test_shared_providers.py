"""Several of our launchers serving one provider (issue 17): the work is
shared, quota holds at every moment, a launcher's death loses nothing, and
a provider that fails moves its requests to another."""

import json
import subprocess
import sys
import threading
import urllib.request

import pytest

from conftest import wait_until
from launcher_fixtures import crash
from nodepool.drivers.fake.adapter import FakeCloud
from nodepool.launcher import capacity
from nodepool.testing.burst import Burst, Observer
from nodepool.zk.capacity import CapacityStore
from nodepool.zk.records import NodeState

PROVIDER = """
  - name: {name}
    cloud: fake
    region-name: {region}
    rate: 0.001
    launch-retries: 2
{extra}    cloud-images:
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


def provider(name, region, max_servers=10, extra=""):
    return PROVIDER.format(name=name, region=region, max_servers=max_servers,
                           extra="".join(f"    {line}\n" for line in extra.splitlines()))


def shared(env, max_servers=20, simulation=""):
    """One provider, for several launchers; the cloud's quota is the pool's."""
    return env.config("labels:\n  - name: small\nproviders:" + provider(
        "fake-cloud", "r1", max_servers,
        f"simulation: {{max-instances: {max_servers}{simulation}}}"))


def two_providers(env, simulation_a):
    """fake-a, preferred (priority 1), and fake-b."""
    return env.config("labels:\n  - name: small\nproviders:" + provider(
        "fake-a", "ra", extra=f"priority: 1\nsimulation: {{{simulation_a}}}")
        + provider("fake-b", "rb", extra="priority: 2"))


@pytest.fixture
def observer(env, zk_hosts):
    watcher = Observer(zk_hosts)
    yield watcher
    watcher.stop()


def fake_cloud():
    return FakeCloud.get("fake", "r1")


def check_burst(burst, launchers, max_servers, exact=True):
    """Every request fulfilled, each node given to one request only, and
    node records of the provider never above its quota (``exact``: nor
    the cloud's instances, which refused none)."""
    assert burst.unfinished == 0
    given = [n["id"] for nodes in burst.given.values() for n in nodes]
    assert len(given) == len(burst.submitted), "each request got its one node"
    assert len(set(given)) == len(given), "a node went to two requests"
    for request_id, nodes in burst.given.items():
        assert all(n["allocated_to"] == request_id for n in nodes)
    assert 0 < burst.observer.peaks["fake-cloud"] <= max_servers
    if exact:
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
    wait_until(lambda: fake_cloud().servers == {}, timeout=60,
               message="every instance deleted with its node")


def test_launcher_killed_mid_burst_loses_nothing(env, zuul, observer):
    path = shared(env, max_servers=30, simulation=", boot-delay: 1.0")
    launchers = [env.start(path) for _ in range(3)]
    victim, survivors = launchers[1], [launchers[0], launchers[2]]
    wait_until(lambda: len(launchers[0].views.membership().serving(
        "fake-cloud", "main")) == 3, message="three launchers registered")
    in_flight: dict[str, object] = {}
    killed = threading.Event()
    joined = []

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
        # A new launcher joins: the work rebalances onto it too.
        joined.append(env.start(path))

    burst = Burst(zuul, observer)
    try:
        burst.run([["small"]] * 300, timeout=300, during=kill_mid_burst)
    finally:
        burst.stop()
    assert killed.is_set() and in_flight
    # (A create the dying launcher's threads sent after its kill - a
    # SIGKILL would not - may briefly hold an instance no record counts.)
    check_burst(burst, launchers, 30, exact=False)
    resumed = sum(launcher.counters["launches_resumed"]
                  for launcher in survivors + joined)
    adopted = sum(launcher.counters["requests_adopted"]
                  for launcher in survivors + joined)
    print(f"{len(in_flight)} launches in flight at the kill, {resumed} resumed, "
          f"{adopted} requests adopted")
    assert resumed >= 1 and adopted >= 1
    assert joined[0].counters["launches"] > 0
    # Each launch in flight ended in a fulfilled request, with the instance
    # it had when its launcher died: carried on, not abandoned and redone.
    given = {n["id"]: n for nodes in burst.given.values() for n in nodes}
    for node_id, external_id in in_flight.items():
        assert node_id in given, f"node {node_id} was abandoned"
        if external_id is not None:
            assert given[node_id]["external_id"] == external_id
    # Anything leaked (that create after the kill) goes with the leak cleanup.
    wait_until(lambda: fake_cloud().servers == {}, timeout=60,
               message="no instance left")


def test_a_provider_failing_every_create_moves_its_nodes_on(env, zuul, observer):
    failed_nodes: dict[str, list] = {}
    observer.node_watchers.append(
        lambda kind, node_id, node: failed_nodes.setdefault(
            node_id, node.failed_providers) if kind == "changed"
        and node.state == NodeState.FAILED else None)
    path = two_providers(env, "fail-creates: 1000000")
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
    path = two_providers(env, "quota-error-servers: 1000000")
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
    launcher = env.start(two_providers(env, ""))
    entries = CapacityStore(launcher.client)
    entries.change("fake-a", "Fake Flavor", lambda e: capacity.count_error(
        e, "small", "someone", "No valid host", 1000.0))
    wait_until(lambda: entries.entries() == [], message="expired entry removed")


def test_an_interrupted_delete_is_carried_on_where_it_stopped(env, zuul):
    path = shared(env, max_servers=5, simulation=", delete-delay: 30")
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
    # (Counted once the record is gone.)
    wait_until(lambda: second.counters["deletes_resumed"] == 1, message="counted")
    # The delete was not sent again: the machine went on polling.
    assert fake_cloud().calls == calls


def test_tenant_limits_hold_across_launchers_and_providers(env, zuul, observer):
    """tenant-resource-limits span providers: three launchers serving two
    providers never hold more of a tenant's nodes than its limit, counted
    at every change of the node records."""
    counts = {"acme": 0, "peak": 0}
    tenants: dict[str, str | None] = {}

    def count(kind, node_id, node):
        if kind == "changed" and node_id not in tenants:
            tenants[node_id] = node.tenant_name
            if node.tenant_name == "acme":
                counts["acme"] += 1
                counts["peak"] = max(counts["peak"], counts["acme"])
        elif kind == "deleted" and tenants.pop(node_id, None) == "acme":
            counts["acme"] -= 1
    observer.node_watchers.append(count)
    path = env.config("labels:\n  - name: small\nproviders:"
                      + provider("fake-a", "ra", max_servers=20)
                      + provider("fake-b", "rb", max_servers=20) + """
tenant-resource-limits:
  - tenant-name: acme
    max-servers: 5
""")
    launchers = [env.start(path) for _ in range(3)]
    wait_until(lambda: all(len(launchers[0].views.membership().serving(p, "main")) == 3
                           for p in ("fake-a", "fake-b")),
               message="three launchers on both providers")
    burst = Burst(zuul, observer)
    try:
        burst.run([["small"]] * 60, timeout=240, tenant="acme")
    finally:
        burst.stop()
    assert burst.unfinished == 0
    assert counts["peak"] == 5, counts
    # Both providers served the tenant.
    given = [n for nodes in burst.given.values() for n in nodes]
    assert {n["provider"] for n in given} == {"fake-a", "fake-b"}


def test_the_quota_fence_lets_one_of_two_racing_creations_through(store, make_zk_client):
    from nodepool.zk import paths
    from nodepool.zk.records import Node
    from nodepool.zk.store import Store
    other = Store(make_zk_client())
    fence = paths.quota_fence("cloud")
    version = store.fence_version(fence)
    assert other.fence_version(fence) == version

    def nodes(provider="cloud"):
        return [Node(state=NodeState.INIT, provider=provider, pool="main", type=["a"],
                     resources={"instances": 1}, tenant_name="acme") for _ in range(2)]
    first, second = nodes(), nodes()
    assert store.create_nodes_fenced({fence: version}, first)
    # The other decided on the same version: the fence moved, nothing created.
    assert not other.create_nodes_fenced({fence: version}, second)
    assert [n.id for n in second] == [None, None]
    assert sorted(store.node_ids()) == sorted(n.id for n in first)
    assert store.get_node(first[0].id).provider == "cloud"
    # Deciding again on the new version goes through.
    assert other.create_nodes_fenced({fence: other.fence_version(fence)}, second)
    assert len(store.node_ids()) == 4

    # A tenant's fence orders creations across providers: a launcher of
    # another provider that read the tenant's fence before it moved loses.
    tenant = paths.tenant_fence("acme")
    tenant_version = store.fence_version(tenant)
    other_fence = paths.quota_fence("other-cloud")
    other_version = other.fence_version(other_fence)
    assert store.create_nodes_fenced({fence: store.fence_version(fence),
                                      tenant: tenant_version}, nodes())
    third = nodes("other-cloud")
    assert not other.create_nodes_fenced({other_fence: other_version,
                                          tenant: tenant_version}, third)
    assert [n.id for n in third] == [None, None]
    assert other.fence_version(other_fence) == other_version  # nothing moved
    assert len(store.node_ids()) == 6


def test_list_web_and_statsd_show_who_drives_each_node(env, zuul, statsd):
    from nodepool import stats
    path = shared(env, max_servers=5, simulation=", boot-delay: 30")
    launcher = env.start(path, webapp=True, webapp_port=0, stats_name="launcher-a")
    zuul.submit(["small"])
    wait_until(lambda: any(n.state == NodeState.BUILDING and n.external_id
                           for n in launcher.nodes.nodes()), message="launch under way")
    [node_id] = launcher.nodes.ids()
    expected = f"{launcher.id} (launch)"
    listing = subprocess.run([sys.executable, "-m", "nodepool.cmd.nodepool", "-c", path,
                              "list", "--detail", "--json"], capture_output=True,
                             text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr
    [row] = json.loads(listing.stdout)
    assert row["id"] == node_id and row["driven_by"] == expected
    table = subprocess.run([sys.executable, "-m", "nodepool.cmd.nodepool", "-c", path,
                            "list", "--detail"], capture_output=True, text=True,
                           timeout=120).stdout
    assert "Driven By" in table and expected in table
    with urllib.request.urlopen(f"http://127.0.0.1:{launcher.webapp.port}"
                                "/node-list.json", timeout=10) as response:
        [web_row] = json.loads(response.read())
    assert web_row["driven_by"] == expected
    # Each launcher's share of the work, in statsd, under its stats name.
    key = stats.launcher_work_key("launcher-a", "launches")
    assert statsd.wait_for(lambda keys: key in keys, timeout=20)
    assert statsd.wait_for(lambda keys: stats.launcher_work_key(
        "launcher-a", "launches_running") in keys, timeout=20)
