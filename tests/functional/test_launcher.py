"""The launcher against a real ZooKeeper, driven as Zuul drives it."""

import time

from conftest import wait_until
from launcher_fixtures import FAKE_PROVIDER, add_upload, crash
from nodepool.drivers.fake.adapter import FakeCloud
from nodepool.zk.records import Node, NodeState

BASE = """
labels:
  - name: small
{small_options}
  - name: large
providers:
  - name: fake-cloud
    cloud: fake
    region-name: r1
    rate: 0.001
    launch-retries: {retries}
    boot-timeout: {boot_timeout}
    cloud-images:
      - name: precise
        image-name: Fake Precise
{provider_extra}
    pools:
      - name: main
        max-servers: {max_servers}
        node-attributes: {{executor-zone: z1}}
        availability-zones: [az1]
        labels:
          - name: small
            cloud-image: precise
            min-ram: 1024
            instance-properties: {{prop1: foo}}
            dynamic-instance-properties:
              dynamic-tenant: "Tenant is {{request.tenant_name}}"
          - name: large
            cloud-image: precise
            flavor-name: Unreal
{extra}
"""


def body(max_servers=10, retries=3, boot_timeout=60, extra="", provider_extra="",
         small_options="", tail=""):
    """The configuration text; small_options are extra keys of label 'small'."""
    options = "\n".join(f"    {line}" for line in small_options.splitlines())
    return BASE.format(max_servers=max_servers, retries=retries,
                       boot_timeout=boot_timeout, extra=extra,
                       provider_extra=provider_extra, small_options=options) + tail


def config(env, name="nodepool.yaml", **kwargs):
    return env.config(body(**kwargs), name=name)


def cloud():
    return FakeCloud.get("fake", "r1")


def test_fulfil_single_request_like_zuul(env, zuul):
    env.start(config(env))
    request_id = zuul.submit(["small"], tenant="acme")
    request = zuul.wait_for_request(request_id)
    assert request["state"] == "fulfilled"
    [node_id] = request["nodes"]
    node = zuul.get_node(node_id)
    # What Zuul needs from a fulfilled node (spec 8.5 item 4).
    assert node["state"] == "ready" and node["allocated_to"] == request_id
    assert node["type"] == ["small"] and node["provider"] == "fake-cloud"
    assert node["interface_ip"] == "fake" and node["host_keys"] == ["ssh-rsa FAKEKEY"]
    assert node["connection_port"] == 22 and node["connection_type"] == "ssh"
    # The cloud image names no username: null, for Zuul's default_username.
    assert node["username"] is None and node["python_path"] == "auto"
    assert node["attributes"] == {"executor-zone": "z1"}
    assert node["resources"] == {"cores": 4, "instances": 1, "ram": 8192}
    assert node["tenant_name"] == "acme" and node["requestor"] == zuul.system_id
    assert node["cloud"] == "fake" and node["region"] == "r1" and node["az"] == "az1"
    assert node["image_id"] == "precise" and node["external_id"]
    # Every request key survives, requestor_data verbatim.
    assert request["requestor_data"]["pipeline_name"] == "check"
    # The instance carries the metadata leak detection depends on.
    server = cloud().servers[node["external_id"]]
    assert server.metadata["nodepool_node_id"] == node_id
    assert server.metadata["nodepool_provider_name"] == "fake-cloud"
    assert server.metadata["nodepool_pool_name"] == "main"
    assert server.metadata["groups"] == "fake-cloud,precise,small"
    assert server.metadata["prop1"] == "foo"
    assert server.metadata["dynamic-tenant"] == "Tenant is acme"
    assert server.name == f"np{node_id}"
    # Zuul takes, uses and returns the node; the launcher deletes it.
    nodes = zuul.accept(request_id)
    zuul.use(nodes)
    assert zuul.get_node(node_id)["state"] == "in-use"
    zuul.release(nodes)
    wait_until(lambda: zuul.get_node(node_id) is None, message="node deletion")
    wait_until(lambda: node["external_id"] not in cloud().servers,
               message="instance deletion")


def test_multi_node_request_keeps_node_types_order(env, zuul):
    env.start(config(env))
    labels = ["large", "small", "large"]
    request = zuul.wait_for_request(zuul.submit(labels))
    assert request["state"] == "fulfilled"
    types = [zuul.get_node(n)["type"] for n in request["nodes"]]
    assert types == [["large"], ["small"], ["large"]]
    assert len(set(request["nodes"])) == 3
    azs = {zuul.get_node(n)["az"] for n in request["nodes"]}
    assert len(azs) == 1  # one request, one AZ


def test_ready_nodes_are_reused(env, zuul, store):
    launcher = env.start(config(env, small_options="min-ready: 1"))
    ready = wait_until(lambda: [n for n in launcher.nodes.nodes()
                                if n.state == NodeState.READY and not n.allocated_to],
                       message="min-ready node")
    launched = len(cloud().servers)
    request = zuul.wait_for_request(zuul.submit(["small"]))
    assert request["nodes"] == [ready[0].id]
    assert len(cloud().servers) >= launched  # min-ready replaces it afterwards
    # A request with reuse: false never takes a ready node.
    other = zuul.wait_for_request(zuul.submit(["small"], reuse=False))
    assert other["state"] == "fulfilled" and other["nodes"] != request["nodes"]


def test_unknown_label_fails_when_every_pool_declined(env, zuul):
    launcher = env.start(config(env))
    wait_until(lambda: launcher.components.pools(), message="pool registered")
    request = zuul.wait_for_request(zuul.submit(["gpu"]))
    assert request["state"] == "failed"
    [pool] = launcher.components.pools()
    assert request["declined_by"] == [pool.id]
    assert request["nodes"] == []


def test_decline_leaves_request_for_other_pools(env, zuul):
    # Pool "big" declines "small" it does not offer but another pool can serve.
    extra = """      - name: big
        max-servers: 5
        labels:
          - name: large
            cloud-image: precise
            flavor-name: Unreal
"""
    launcher = env.start(config(env, extra=extra))
    wait_until(lambda: len(launcher.components.pools()) == 2, message="two pools")
    request = zuul.wait_for_request(zuul.submit(["small"]))
    assert request["state"] == "fulfilled"
    assert zuul.get_node(request["nodes"][0])["pool"] == "main"


def test_max_servers_zero_disables_the_pool(env, zuul):
    env.start(config(env, max_servers=0))
    request = zuul.wait_for_request(zuul.submit(["small"]))
    assert request["state"] == "failed"
    assert cloud().servers == {}


def test_cancelled_request_releases_its_nodes_for_reuse(env, zuul):
    env.start(config(env, provider_extra="    simulation: {boot-delay: 0.5}"))
    request_id = zuul.submit(["small"])
    wait_until(lambda: (zuul.get_request(request_id) or {}).get("state") == "pending",
               message="pending")
    zuul.cancel(request_id)
    launcher = env.launchers[0]
    node = wait_until(lambda: [n for n in launcher.nodes.nodes()
                               if n.state == NodeState.READY and not n.allocated_to
                               and not launcher.nodes.is_locked(n.id)],
                      timeout=10, message="released ready node")[0]
    # The next request reuses it.
    request = zuul.wait_for_request(zuul.submit(["small"]))
    assert request["nodes"] == [node.id]


def test_quota_defers_instead_of_failing_and_serves_in_order(env, zuul):
    launcher = env.start(config(env, max_servers=1))
    first = zuul.submit(["small"])
    zuul.wait_for_request(first)
    held = zuul.accept(first)
    zuul.use(held)
    low = zuul.submit(["small"], relative_priority=5)
    high = zuul.submit(["large"], relative_priority=1)
    env.settle()
    assert zuul.get_request(low)["state"] == "requested"
    assert zuul.get_request(high)["state"] == "requested"
    [pool] = launcher.components.pools()
    assert pool.paused  # deferring for quota is visible to other launchers
    zuul.release(held)
    # The higher relative priority is served first when quota frees.
    served = zuul.wait_for_request(high)
    assert served["state"] == "fulfilled"
    assert zuul.get_request(low)["state"] == "requested"
    zuul.release(zuul.accept(high))
    assert zuul.wait_for_request(low)["state"] == "fulfilled"


def test_pool_at_quota_still_serves_ready_nodes(env, zuul):
    path = config(env, max_servers=1, small_options="min-ready: 1")
    first = env.start(path)
    ready = wait_until(lambda: [n for n in first.nodes.nodes()
                                if n.state == NodeState.READY and not n.allocated_to],
                       message="min-ready")[0]
    first.stop()
    # The pool is full (one ready node). A large request comes first, then a
    # small one; the large one must wait, the small one is served at once.
    large = zuul.submit(["large"], relative_priority=0)
    small = zuul.submit(["small"], relative_priority=1)
    env.start(path)
    served = zuul.wait_for_request(small, timeout=5)
    assert served["state"] == "fulfilled" and served["nodes"] == [ready.id]
    assert zuul.get_request(large)["state"] == "requested"
    # Once the small node is used and gone, the large request gets its turn.
    zuul.run_job(small)
    assert zuul.wait_for_request(large)["state"] == "fulfilled"


def test_min_ready_does_not_churn_at_quota(env, zuul):
    launcher = env.start(config(env, max_servers=1, small_options="min-ready: 2"))
    first = wait_until(lambda: [n.id for n in launcher.nodes.nodes()
                                if n.state == NodeState.READY], message="ready")[0]
    env.settle()
    # The second min-ready node cannot fit; the first is not sacrificed for it.
    assert [n.id for n in launcher.nodes.nodes()] == [first]


def test_pool_at_quota_deletes_an_idle_node_of_another_label(env, zuul):
    launcher = env.start(config(env, max_servers=1, small_options="min-ready: 1"))
    idle = wait_until(lambda: [n for n in launcher.nodes.nodes()
                               if n.state == NodeState.READY], message="min-ready")[0]
    request = zuul.wait_for_request(zuul.submit(["large"]))
    assert request["state"] == "fulfilled"
    assert launcher.nodes.get(idle.id) is None or \
        launcher.nodes.get(idle.id).state != NodeState.READY


def test_revised_priority_is_respected(env, zuul):
    launcher = env.start(config(env, max_servers=1))
    first = zuul.submit(["small"])
    zuul.wait_for_request(first)
    held = zuul.accept(first)
    a = zuul.submit(["small"], relative_priority=1)
    b = zuul.submit(["small"], relative_priority=2)
    env.settle()
    assert zuul.revise(b, 0)  # Zuul moves b ahead of a
    wait_until(lambda: launcher.requests.get(b).relative_priority == 0,
               message="revision seen")
    zuul.release(held)
    assert zuul.wait_for_request(b)["state"] == "fulfilled"
    assert zuul.get_request(a)["state"] == "requested"


def test_tenant_limits(env, zuul):
    env.start(config(env, tail="""
tenant-resource-limits:
  - tenant-name: acme
    max-servers: 1
"""))
    first = zuul.submit(["small"], tenant="acme")
    zuul.wait_for_request(first)
    blocked = zuul.submit(["small"], tenant="acme")
    other = zuul.submit(["small"], tenant="other")
    assert zuul.wait_for_request(other)["state"] == "fulfilled"
    assert zuul.get_request(blocked)["state"] == "requested"
    zuul.release(zuul.accept(first))
    assert zuul.wait_for_request(blocked)["state"] == "fulfilled"


def test_launch_retry_then_success(env, zuul):
    env.start(config(env, retries=3, provider_extra="    simulation: {fail-creates: 2}"))
    request = zuul.wait_for_request(zuul.submit(["small"]))
    assert request["state"] == "fulfilled"
    assert cloud().settings.fail_creates == 0


def test_launch_fails_after_retries_and_nothing_leaks(env, zuul):
    env.start(config(env, retries=2,
                      provider_extra="    simulation: {error-servers: 2}"))
    request = zuul.wait_for_request(zuul.submit(["small"]))
    assert request["state"] == "failed"
    # Both errored instances are removed: the retry deleted the first, the
    # delete worker the second (the failed node).
    wait_until(lambda: cloud().servers == {}, message="no instance left")
    launcher = env.launchers[0]
    wait_until(lambda: launcher.nodes.nodes() == [], message="no node left")


def test_cloud_quota_error_aborts_and_relaunches(env, zuul):
    env.start(config(env, provider_extra="    simulation: {quota-error-servers: 1}"))
    request = zuul.wait_for_request(zuul.submit(["small"]))
    assert request["state"] == "fulfilled"
    wait_until(lambda: len(cloud().servers) == 1, message="aborted instance removed")


def test_boot_timeout_fails_the_launch(env, zuul):
    from nodepool.testing.zkserver import free_port
    port = free_port()  # nothing listens there
    path = config(env, retries=1, boot_timeout=1,
                  provider_extra="    simulation: {interface-ip: 127.0.0.1}")
    path_text = open(path).read().replace(
        "        image-name: Fake Precise\n",
        f"        image-name: Fake Precise\n        connection-port: {port}\n")
    open(path, "w").write(path_text)
    env.start(path)
    start = time.monotonic()
    request = zuul.wait_for_request(zuul.submit(["small"]), timeout=20)
    assert request["state"] == "failed"
    assert time.monotonic() - start >= 1.0
    wait_until(lambda: cloud().servers == {}, message="instance removed")


def test_leaked_instance_is_removed(env, zuul):
    launcher = env.start(config(env))
    leaked = cloud().create_server("np9999", "Fake Flavor", "fake-image-id", "az1", {
        "nodepool_provider_name": "fake-cloud", "nodepool_node_id": "0000009999",
        "nodepool_pool_name": "main"})
    foreign = cloud().create_server("someone-else", "Fake Flavor", "fake-image-id",
                                    "az1", {"owner": "not nodepool"})
    launcher.cleanup.wake.set()
    wait_until(lambda: leaked.id not in cloud().servers, timeout=10,
               message="leak removed")
    assert foreign.id in cloud().servers


def test_held_node_expires(env, zuul):
    env.start(config(env))
    request_id = zuul.submit(["small"])
    node_id = zuul.wait_for_request(request_id)["nodes"][0]
    nodes = zuul.accept(request_id)
    zuul.use(nodes)
    zuul.hold(nodes, "acme project job .*", "debugging", expiration=1)
    zuul.unlock_node(node_id)
    assert zuul.get_node(node_id)["state"] == "hold"
    wait_until(lambda: zuul.get_node(node_id) is None, timeout=10,
               message="held node deleted after expiry")


def test_max_hold_age(env, zuul):
    env.start(config(env, tail="max-hold-age: 1\n"))
    request_id = zuul.submit(["small"])
    node_id = zuul.wait_for_request(request_id)["nodes"][0]
    nodes = zuul.accept(request_id)
    zuul.hold(nodes, "job", "no expiration of its own")
    zuul.unlock_node(node_id)
    wait_until(lambda: zuul.get_node(node_id) is None, timeout=10,
               message="held node deleted by max-hold-age")


def test_max_ready_age(env, zuul):
    launcher = env.start(config(env, small_options="min-ready: 1\nmax-ready-age: 1"))
    first = wait_until(lambda: [n.id for n in launcher.nodes.nodes()
                                if n.state == NodeState.READY], message="ready")[0]
    wait_until(lambda: launcher.nodes.get(first) is None, timeout=10,
               message="old ready node deleted")
    wait_until(lambda: any(n.state == NodeState.READY for n in launcher.nodes.nodes()),
               message="replaced by min-ready")


def test_min_ready_is_met_exactly(env, zuul):
    launcher = env.start(config(env, small_options="min-ready: 3"))

    def ready():
        return [n for n in launcher.nodes.nodes()
                if n.state == NodeState.READY and not n.allocated_to]
    wait_until(lambda: len(ready()) == 3, message="three ready nodes")
    env.settle()
    assert len(launcher.nodes.nodes()) == 3  # no over-provisioning
    assert not [r for r in launcher.requests.requests()]  # min-ready requests tidied


def test_config_reload_applies_changes_and_survives_bad_files(env, zuul):
    path = config(env, max_servers=1)
    launcher = env.start(path)
    first = zuul.submit(["small"])
    zuul.wait_for_request(first)
    waiting = zuul.submit(["small"])
    env.settle()
    assert zuul.get_request(waiting)["state"] == "requested"
    # A broken file is reported and the old configuration keeps running.
    env.rewrite(path, "labels: [oops\n")
    wait_until(lambda: launcher.config_errors >= 1, message="error noticed")
    assert launcher.managers["fake-cloud"].provider.pools["main"].max_servers == 1
    # Raising max-servers lets the waiting request through, without a restart.
    text = body(max_servers=5)
    env.rewrite(path, text)
    assert zuul.wait_for_request(waiting, timeout=10)["state"] == "fulfilled"
    # Adding a pool registers it; removing it unregisters it.
    extra = """      - name: second
        max-servers: 2
        labels:
          - name: large
            cloud-image: precise
            flavor-name: Unreal
"""
    env.rewrite(path, body(max_servers=5, extra=extra))
    wait_until(lambda: {c.name for c in launcher.components.pools()} ==
               {"main", "second"}, message="pool added")
    env.rewrite(path, text)
    wait_until(lambda: {c.name for c in launcher.components.pools()} == {"main"},
               message="pool removed")


def test_lowering_max_servers_to_zero_stops_launches(env, zuul):
    path = config(env)
    launcher = env.start(path)
    zuul.wait_for_request(zuul.submit(["small"]))
    env.rewrite(path, body(max_servers=0))
    wait_until(lambda: launcher.managers["fake-cloud"].provider.pools["main"]
               .max_servers == 0, message="reloaded")
    request = zuul.wait_for_request(zuul.submit(["small"]))
    assert request["state"] == "failed"


def test_two_launchers_share_work_without_double_allocation(env, zuul):
    # 30 requests take 40 nodes; min-ready wants 2 more.
    path = config(env, max_servers=50, small_options="min-ready: 2",
                  provider_extra="    simulation: {max-instances: 100, max-cores: 1000}")
    first = env.start(path)
    second = env.start(path)
    requests = [zuul.submit(["small"] if i % 3 else ["small", "large"])
                for i in range(30)]
    results = [zuul.wait_for_request(r, timeout=30) for r in requests]
    assert all(r["state"] == "fulfilled" for r in results)
    allocated = [n for r in results for n in r["nodes"]]
    assert len(allocated) == len(set(allocated)), "a node went to two requests"
    for request_id, result in zip(requests, results):
        for node_id in result["nodes"]:
            assert zuul.get_node(node_id)["allocated_to"] == request_id
    launcher_ids = {zuul.get_node(n)["launcher"] for n in allocated}
    pools = {c.id for c in first.components.pools()}
    assert launcher_ids <= pools and len(pools) == 2

    def spare():
        return [n for n in first.nodes.nodes()
                if n.state == NodeState.READY and not n.allocated_to]
    wait_until(lambda: len(spare()) >= 2, message="min-ready")
    env.settle()
    assert len(spare()) == 2, "min-ready met once, not once per launcher"
    assert second.nodes.ids() == first.nodes.ids()


def test_launcher_killed_mid_launch_is_carried_on_by_the_next(env, zuul, store):
    path = config(env, provider_extra="    simulation: {boot-delay: 30}")
    first = env.start(path)
    request_id = zuul.submit(["small"])
    wait_until(lambda: any(n.external_id for n in first.nodes.nodes()),
               message="instance created")
    [server_id] = list(cloud().servers)
    [node_id] = first.nodes.ids()
    assert first.nodes.get(node_id).progress.launcher == first.id
    crash(first)
    # The server finishes booting meanwhile; the launch goes on where it
    # stopped: the same node polls the same server.
    cloud().servers[server_id].active_at = 0
    second = env.start(config(env, name="restarted.yaml"))
    request = zuul.wait_for_request(request_id, timeout=20)
    assert second.counters["launches_resumed"] == 1
    assert request["state"] == "fulfilled" and request["nodes"] == [node_id]
    node = zuul.get_node(node_id)
    assert node["external_id"] == server_id and "progress" not in node
    assert second.counters["requests_adopted"] == 1
    assert second.counters["launches"] == 0  # nothing launched anew
    assert list(cloud().servers) == [server_id]


def test_building_node_without_progress_is_deleted_not_resumed(env, zuul, store):
    # A launch an upstream launcher left (no progress recorded): deleted, as
    # upstream does, and its request served anew.
    launcher = env.start(config(env))
    server = cloud().create_server("np-old", "Fake Flavor", "fake-image-id", "az1", {})
    node = Node(state=NodeState.BUILDING, provider="fake-cloud", pool="main",
                type=["small"], external_id=server.id,
                resources={"cores": 4, "instances": 1, "ram": 8192})
    store.create_node(node)
    wait_until(lambda: server.id not in cloud().servers, message="instance deleted")
    wait_until(lambda: zuul.get_node(node.id) is None, message="node deleted")
    assert launcher.counters["launches_resumed"] == 0


DISKIMAGE = """
labels:
  - name: dib
providers:
  - name: fake-cloud
    cloud: fake
    region-name: r1
    diskimages:
      - name: debian
    pools:
      - name: main
        max-servers: 5
        labels:
          - name: dib
            diskimage: debian
            min-ram: 1
diskimages:
  - name: debian
"""


def test_diskimage_label_boots_the_newest_upload_and_falls_back(env, zuul, store):
    launcher = env.start(env.config(DISKIMAGE))
    # No image yet: the only pool declines, the request fails.
    assert zuul.wait_for_request(zuul.submit(["dib"]))["state"] == "failed"
    old = add_upload(store, "debian", "fake-cloud", external_id="image-old", age=100)
    new = add_upload(store, "debian", "fake-cloud", external_id="image-new")
    wait_until(lambda: launcher.images.latest_ready_upload("debian", "fake-cloud")
               is not None and launcher.images.latest_ready_upload(
                   "debian", "fake-cloud").id == new.id, message="uploads cached")
    request = zuul.wait_for_request(zuul.submit(["dib"]))
    node = zuul.get_node(request["nodes"][0])
    assert node["image_id"] == new.path
    assert cloud().servers[node["external_id"]].image == "image-new"
    assert cloud().servers[node["external_id"]].metadata["nodepool_image_name"] == \
        "debian"
    # The operator deletes the newest upload: the previous one is used.
    store.delete_upload(new)
    wait_until(lambda: launcher.images.latest_ready_upload(
        "debian", "fake-cloud").id == old.id, message="fallback cached")
    request = zuul.wait_for_request(zuul.submit(["dib"]))
    assert zuul.get_node(request["nodes"][0])["image_id"] == old.path


def test_launch_timeout(env, zuul):
    env.start(config(env, retries=1, provider_extra="    launch-timeout: 1\n"
                     "    simulation: {never-active: true}"))
    start = time.monotonic()
    assert zuul.wait_for_request(zuul.submit(["small"]), timeout=20)["state"] == "failed"
    assert time.monotonic() - start >= 1.0
    wait_until(lambda: cloud().servers == {}, message="timed-out instance removed")


def test_cloud_node_host_keys_are_scanned_from_the_real_host(env, zuul, tmp_path):
    from nodepool.testing.sshdserver import SSHServer  # tools/, on the path via conftest
    server = SSHServer(str(tmp_path / "sshd")).start()
    try:
        path = config(env, provider_extra="    simulation: {interface-ip: 127.0.0.1}")
        text = open(path).read().replace(
            "        image-name: Fake Precise\n",
            f"        image-name: Fake Precise\n        connection-port: {server.port}\n")
        open(path, "w").write(text)
        env.start(path)
        request = zuul.wait_for_request(zuul.submit(["small"]), timeout=30)
        node = zuul.get_node(request["nodes"][0])
        assert set(node["host_keys"]) == set(server.host_keys)
        assert node["interface_ip"] == "127.0.0.1"
    finally:
        server.stop()


def test_pool_max_cores(env, zuul):
    # Each fake node has 4 cores: a pool capped at 6 cores holds one node.
    path = config(env)
    text = open(path).read().replace("        max-servers: 10\n",
                                     "        max-servers: 10\n        max-cores: 6\n")
    open(path, "w").write(text)
    env.start(path)
    first = zuul.submit(["small"])
    zuul.wait_for_request(first)
    second = zuul.submit(["small"])
    env.settle()
    assert zuul.get_request(second)["state"] == "requested"
    # A request that could never fit (two nodes, 8 cores) is declined.
    assert zuul.wait_for_request(zuul.submit(["small", "small"]))["state"] == "failed"


def test_a_provider_that_cannot_start_leaves_the_others_running(env, zuul, caplog):
    launcher = env.start(env.config(
        "labels:\n  - name: small\nproviders:\n"
        "  - name: east\n    cloud: east\n    pools:\n      - name: p"
        + FAKE_PROVIDER))
    assert set(launcher.managers) == {"fake-cloud"}
    assert "provider east: Cloud east was not found" in caplog.text
    assert "Traceback" not in caplog.text
    assert zuul.wait_for_request(zuul.submit(["small"]))["state"] == "fulfilled"


def test_launcher_survives_session_expiry(env, zuul, zk_server):
    from conftest import expire_session
    launcher = env.start(config(env, provider_extra="    simulation: {boot-delay: 0.3}"))
    wait_until(lambda: launcher.components.pools(), message="registered")
    in_flight = zuul.submit(["small"])
    wait_until(lambda: (zuul.get_request(in_flight) or {}).get("state") == "pending",
               message="pending")
    old_ids = {c.id for c in launcher.components.pools()}
    expire_session(launcher.client, f"{zk_server.hosts}{env.chroot}")
    assert launcher.client.wait_until_connected(20)
    # The pool registers again (same worker id), the request whose lock
    # vanished with the session is served after all, and new ones too.
    wait_until(lambda: {c.id for c in launcher.components.pools()} == old_ids,
               timeout=20, message="re-registered")
    assert zuul.wait_for_request(in_flight, timeout=30)["state"] == "fulfilled"
    assert zuul.wait_for_request(zuul.submit(["small"]), timeout=20)["state"] == \
        "fulfilled"
    # Nothing is left behind: every instance belongs to a node record.
    wait_until(lambda: {s.metadata["nodepool_node_id"] for s in cloud().servers.values()}
               <= set(launcher.nodes.ids()), timeout=20, message="no leaked instance")


def test_min_ready_far_above_max_servers_does_not_flood(env, zuul):
    """min-ready 100000 with max-servers 4: never more requests in flight
    than the pool could start, and the pool fills."""
    launcher = env.start(config(env, max_servers=4, small_options="min-ready: 100000"))
    seen = []
    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline:
        seen.append(len(zuul.kazoo.get_children("/nodepool/requests")))
        time.sleep(0.02)
    assert max(seen) <= 4, max(seen)
    wait_until(lambda: len([n for n in launcher.nodes.nodes()
                            if n.state == NodeState.READY]) == 4, message="pool full")
    assert len(launcher.nodes.nodes()) == 4
    # When a node goes, exactly one replacement is asked for.
    request_id = zuul.submit(["small"])
    assert zuul.wait_for_request(request_id)["state"] == "fulfilled"
    zuul.run_job(request_id)
    wait_until(lambda: len([n for n in launcher.nodes.nodes()
                            if n.state == NodeState.READY and not n.allocated_to]) == 4,
               message="replaced")
    assert len(zuul.kazoo.get_children("/nodepool/requests")) <= 1


def test_request_lock_directories_stay_until_the_request_is_long_gone(
        env, zuul, monkeypatch):
    from nodepool.launcher import maintenance
    env.start(config(env))
    request_id = zuul.submit(["small"])
    assert zuul.wait_for_request(request_id)["state"] == "fulfilled"
    lock_dir = f"/nodepool/requests-lock/{request_id}"
    # Kept after fulfilment: an upstream launcher may still try to lock it.
    assert zuul.kazoo.exists(lock_dir) is not None
    assert zuul.kazoo.get_children(lock_dir) == []
    # A request that is gone but whose lock someone holds keeps its directory.
    held = zuul.submit(["small"])
    zuul.wait_for_request(held)
    from kazoo.recipe.lock import Lock as KazooLock
    holder = KazooLock(zuul.kazoo, f"/nodepool/requests-lock/{held}")
    assert holder.acquire(blocking=False)
    zuul.run_job(request_id)
    zuul.run_job(held)
    monkeypatch.setattr(maintenance, "REQUEST_LOCK_AGE", 0.0)
    wait_until(lambda: zuul.kazoo.exists(lock_dir) is None, timeout=15,
               message="the directory of a request long gone removed")
    assert zuul.kazoo.exists(f"/nodepool/requests-lock/{held}") is not None
    holder.release()
    wait_until(lambda: zuul.kazoo.exists(f"/nodepool/requests-lock/{held}") is None,
               timeout=15, message="removed once nobody holds it")


def test_a_request_too_large_to_store_again_is_left_alone(env, zuul, caplog):
    launcher = env.start(config(env))
    generation = launcher.client.session_generation
    # Just small enough for ZooKeeper to take from Zuul, too large to take
    # back once our fields are added: the server would cut the connection.
    huge = zuul.submit(["small"], requestor_data={"blob": "x" * 1_047_700})
    assert len(zuul.kazoo.get(f"/nodepool/requests/{huge}")[0]) > 1_047_700
    wait_until(lambda: any(huge in r.getMessage() and "too large" in r.getMessage()
                           for r in caplog.records), message="the error logged")
    # Nothing was taken for it, the connection was never dropped, and the
    # launcher goes on serving.
    normal = zuul.submit(["small"])
    assert zuul.wait_for_request(normal)["state"] == "fulfilled"
    assert zuul.get_request(huge)["state"] == "requested"
    assert not [n for n in launcher.nodes.nodes() if n.allocated_to == huge]
    assert launcher.client.session_generation == generation
    assert not [r for r in caplog.records if "connection suspended" in r.getMessage()]
    assert sum(huge in r.getMessage() for r in caplog.records
               if r.name == "nodepool.launcher.pool") == 1  # logged once
