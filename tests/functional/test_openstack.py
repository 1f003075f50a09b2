"""The openstack driver through real openstacksdk over HTTP, against the
simulator in nodepool/testing/openstack_sim.py."""

import time

import pytest

from conftest import wait_until


CONFIG = """
labels:
  - name: small
providers:
  - name: cloud-sim
    cloud: sim
    region-name: RegionOne
    rate: 0.001
    launch-retries: {retries}
    cloud-images:
      - name: ubuntu
        image-id: ubuntu-image-id
    pools:
      - name: main
        max-servers: 5
        host-key-checking: false
        labels:
          - name: small
            cloud-image: ubuntu
            min-ram: 1024
            instance-properties: {{team: ci}}
"""


def start(env, retries=3):
    return env.start(env.config(CONFIG.format(retries=retries)))


def test_server_carries_metadata_and_node_the_cloud_facts(env, sim, zuul):
    start(env)
    request = zuul.wait_for_request(zuul.submit(["small"]), timeout=30)
    [node_id] = request["nodes"]
    node = zuul.get_node(node_id)
    server = sim.servers[node["external_id"]]
    assert server.name == f"np{node_id}"
    assert server.metadata["nodepool_node_id"] == node_id
    assert server.metadata["nodepool_provider_name"] == "cloud-sim"
    assert server.metadata["nodepool_pool_name"] == "main"
    assert server.metadata["groups"] == "cloud-sim,ubuntu,small"
    assert server.metadata["team"] == "ci"
    assert server.flavor["name"] == "m1.small"  # the smallest with >= 1024 MiB
    # auto-floating-ip defaults to true: Zuul connects to the floating address.
    assert node["private_ipv4"] == server.address and node["az"] == "nova"
    assert node["interface_ip"] == node["public_ipv4"] != server.address
    assert node["resources"] == {"cores": 1, "instances": 1, "ram": 2048}
    assert node["cloud"] == "sim" and node["region"] == "RegionOne"


def test_quota_errors_defer_instead_of_failing(env, sim, zuul):
    sim.faults.quota_creates = 1        # a 403 "Quota exceeded" on create
    sim.faults.quota_error_servers = 1  # a server that goes ERROR with a quota fault
    start(env, retries=1)               # a launch failure would fail the request
    request = zuul.wait_for_request(zuul.submit(["small"]), timeout=30)
    assert request["state"] == "fulfilled"
    assert sim.faults.quota_creates == 0 and sim.faults.quota_error_servers == 0
    wait_until(lambda: len(sim.servers) == 1, timeout=20,
               message="the errored server was deleted")


def test_server_errors_and_http_500s_are_retried(env, sim, zuul):
    sim.faults.error_servers = 1
    start(env, retries=3)
    sim.faults.http_500 = 2
    request = zuul.wait_for_request(zuul.submit(["small"]), timeout=30)
    assert request["state"] == "fulfilled"
    wait_until(lambda: len(sim.servers) == 1, timeout=20, message="failed server gone")


def test_failing_deletes_are_retried_until_the_server_is_gone(env, sim, zuul):
    start(env)
    request_id = zuul.submit(["small"])
    server_id = zuul.get_node(zuul.wait_for_request(request_id, timeout=30)["nodes"][0])[
        "external_id"]
    sim.faults.failing_deletes = 2
    zuul.run_job(request_id)
    wait_until(lambda: server_id not in sim.servers, timeout=30,
               message="server deleted after failures")
    assert sim.faults.failing_deletes == 0


def test_leaked_server_is_removed(env, sim, zuul):
    launcher = start(env)
    import openstack
    conn = openstack.connect(cloud="sim")
    leaked = conn.compute.create_server(
        name="np0000009999", flavor_id="1", image_id="x", networks="none",
        metadata={"nodepool_provider_name": "cloud-sim",
                  "nodepool_node_id": "0000009999"})
    foreign = conn.compute.create_server(name="web", flavor_id="1", image_id="x",
                                         networks="none", metadata={})
    launcher.cleanup.wake.set()
    wait_until(lambda: leaked.id not in sim.servers, timeout=15,
               message="leaked server removed")
    time.sleep(0.3)
    assert foreign.id in sim.servers


def test_api_timing_and_launch_metrics_arrive_as_udp_packets(env, sim, zuul,
                                                             statsd):
    start(env)
    request = zuul.wait_for_request(zuul.submit(["small"]), timeout=30)
    assert request["state"] == "fulfilled"
    # The SDK names the operation after the URL path below the endpoint's
    # version; the simulator serves Nova under /compute, like devstack.
    expected = {"nodepool.task.cloud-sim.compute.POST.compute_servers.202",
                "nodepool.task.cloud-sim.compute.GET.flavors_detail.200",
                "nodepool.launch.ready",
                "nodepool.launch.provider.cloud-sim.ready",
                "nodepool.launch.provider.cloud-sim.nova.ready",
                f"nodepool.launch.requestor.{zuul.system_id}.ready"}
    assert statsd.wait_for(lambda keys: expected <= keys), \
        "missing: " + ", ".join(sorted(expected - statsd.keys())) + \
        " received: " + ", ".join(sorted(statsd.keys()))


def test_cloud_image_by_name(env, sim, zuul):
    env.start(env.config(CONFIG.format(retries=1).replace(
        "        image-id: ubuntu-image-id", "        image-name: Ubuntu 24.04")))
    request = zuul.wait_for_request(zuul.submit(["small"]), timeout=30)
    assert request["state"] == "fulfilled"
    server = sim.servers[zuul.get_node(request["nodes"][0])["external_id"]]
    assert server.image == "ubuntu-image-id"


def test_image_upload_and_delete(sim, tmp_path):
    from nodepool.config import load_config
    from nodepool.drivers import NotFound, make_adapter
    path = tmp_path / "nodepool.yaml"
    path.write_text("labels: [{name: small}]\n" + CONFIG.format(retries=1).split(
        "labels:\n  - name: small\n", 1)[1])
    adapter = make_adapter(load_config(str(path)).providers["cloud-sim"])
    image_file = tmp_path / "debian.qcow2"
    image_file.write_bytes(b"\0" * 200_000)
    image_id = adapter.upload_image("debian-1700000000", str(image_file), "qcow2", {
        "nodepool_build_id": "b1", "nodepool_upload_id": "0000000001",
        "nodepool_provider_name": "cloud-sim", "team": "ci"})
    image = sim.images[image_id]
    assert image["status"] == "active" and image["size"] == 200_000
    assert image["nodepool_build_id"] == "b1" and image["team"] == "ci"
    assert {"id": image_id, "name": "debian-1700000000"}.items() <= \
        next(i for i in adapter.list_images() if i["id"] == image_id).items()
    adapter.delete_image(image_id)
    assert image_id not in sim.images
    with pytest.raises(NotFound):
        adapter.delete_image(image_id)
    adapter.stop()


def test_leaked_image_is_removed(env, sim, zuul, store):
    launcher = start(env)
    leaked = sim.add_image("debian-old", properties={
        "nodepool_build_id": "gone", "nodepool_upload_id": "0000000001",
        "nodepool_provider_name": "cloud-sim"})
    kept = sim.add_image("someone-elses", properties={"owner_note": "not ours"})
    launcher.cleanup.wake.set()
    wait_until(lambda: leaked["id"] not in sim.images, timeout=15,
               message="leaked image removed")
    assert kept["id"] in sim.images


def test_floating_ip_attached_and_released(env, sim, zuul):
    start(env)
    request_id = zuul.submit(["small"])
    node = zuul.get_node(zuul.wait_for_request(request_id, timeout=30)["nodes"][0])
    [fip] = sim.floating_ips.values()
    assert node["public_ipv4"] == node["interface_ip"] == fip["floating_ip_address"]
    assert fip["port_id"] == f"port-{node['external_id']}"
    assert node["private_ipv4"] == sim.servers[node["external_id"]].address
    zuul.run_job(request_id)
    wait_until(lambda: not sim.servers and not sim.floating_ips, timeout=20,
               message="server and floating IP released")


def test_no_floating_ip_when_disabled(env, sim, zuul):
    env.start(env.config(CONFIG.format(retries=1).replace(
        "        host-key-checking: false\n",
        "        host-key-checking: false\n        auto-floating-ip: false\n", 1)))
    request = zuul.wait_for_request(zuul.submit(["small"]), timeout=30)
    node = zuul.get_node(request["nodes"][0])
    assert not sim.floating_ips and node["public_ipv4"] is None
    assert node["interface_ip"] == node["private_ipv4"]


def test_boot_from_volume_volume_removed_on_delete(env, sim, zuul):
    env.start(env.config(CONFIG.format(retries=1).replace(
        "            min-ram: 1024\n",
        "            min-ram: 1024\n            boot-from-volume: true\n"
        "            volume-size: 12\n", 1)))
    request_id = zuul.submit(["small"])
    node = zuul.get_node(zuul.wait_for_request(request_id, timeout=30)["nodes"][0])
    [volume] = sim.volumes.values()
    assert volume["server"] == node["external_id"] and volume["size"] == 12
    assert volume["image"] == "ubuntu-image-id" and volume["delete_on_termination"]
    assert node["resources"]["volumes"] == 1 and node["resources"]["volume-gb"] == 12
    zuul.run_job(request_id)
    wait_until(lambda: not sim.servers and not sim.volumes, timeout=20,
               message="server and its boot volume deleted")


def test_networks_by_name_security_groups_and_config_drive(env, sim, zuul):
    text = CONFIG.format(retries=1)
    text = text.replace("        image-id: ubuntu-image-id\n",
                        "        image-id: ubuntu-image-id\n        config-drive: true\n")
    text = text.replace("        host-key-checking: false\n",
                        "        host-key-checking: false\n        networks: [private]\n"
                        "        security-groups: [ci, ssh]\n", 1)
    env.start(env.config(text))
    request = zuul.wait_for_request(zuul.submit(["small"]), timeout=30)
    assert request["state"] == "fulfilled"
    server = sim.servers[zuul.get_node(request["nodes"][0])["external_id"]]
    assert server.networks == [{"uuid": "net-private"}]
    assert server.security_groups == ["ci", "ssh"] and server.config_drive


def test_leaked_floating_ips_and_down_ports_are_removed_and_counted(
        env, sim, zuul, statsd):
    launcher = env.start(env.config(CONFIG.format(retries=1).replace(
        "    rate: 0.001\n",
        "    rate: 0.001\n    clean-floating-ips: true\n"
        "    port-cleanup-interval: 1\n")))
    request = zuul.wait_for_request(zuul.submit(["small"]), timeout=30)
    in_use = next(iter(sim.floating_ips.values()))  # attached: must stay
    leaked_fip = sim.add_floating_ip()
    down = sim.add_down_port()
    for _ in range(3):
        launcher.cleanup.wake.set()
        time.sleep(0.6)
    wait_until(lambda: leaked_fip["id"] not in sim.floating_ips
               and down["id"] not in sim.extra_ports, timeout=15,
               message="leaked floating IP and DOWN port removed")
    assert in_use["id"] in sim.floating_ips
    node = zuul.get_node(request["nodes"][0])
    assert node["external_id"] in sim.servers  # the node in use is untouched
    assert statsd.wait_for(lambda keys: {
        "nodepool.provider.cloud-sim.leaked.floatingips",
        "nodepool.provider.cloud-sim.leaked.ports"} <= keys)


BOOT_FROM_VOLUME = ("            min-ram: 1024\n",
                    "            min-ram: 1024\n            boot-from-volume: true\n"
                    "            volume-size: 12\n")


def test_boot_volume_nova_left_behind_is_deleted_with_the_node(env, sim, zuul):
    env.start(env.config(CONFIG.format(retries=1).replace(*BOOT_FROM_VOLUME, 1)))
    request_id = zuul.submit(["small"])
    node = zuul.get_node(zuul.wait_for_request(request_id, timeout=30)["nodes"][0])
    sim.faults.volumes_left_behind = 1  # Nova deletes the server, not the volume
    zuul.run_job(request_id)
    wait_until(lambda: not sim.servers and not sim.volumes, timeout=20,
               message="the detached boot volume deleted after its server")
    assert sim.faults.volumes_left_behind == 0
    assert ("DELETE", f"/compute/v2.1/servers/{node['external_id']}") in sim.requests
    assert any(m == "DELETE" and p.startswith("/volume/v3/") for m, p in sim.requests)


def test_leaked_tagged_volume_is_removed_and_counted(env, sim, zuul,
                                                     statsd):
    launcher = start(env)
    # A boot volume tagged by a delete that crashed before removing it,
    # and a volume nodepool knows nothing about.
    leaked = sim.add_volume(size=5)
    leaked["metadata"] = {"nodepool_provider_name": "cloud-sim",
                          "nodepool_node_id": "0000099999"}
    foreign = sim.add_volume(size=5, name="someone-elses-data")
    other_provider = sim.add_volume(size=5)
    other_provider["metadata"] = {"nodepool_provider_name": "elsewhere",
                                  "nodepool_node_id": "0000099998"}
    for _ in range(3):
        launcher.cleanup.wake.set()
        time.sleep(0.6)
    wait_until(lambda: leaked["id"] not in sim.volumes, timeout=15,
               message="leaked volume removed")
    assert foreign["id"] in sim.volumes and other_provider["id"] in sim.volumes
    assert statsd.wait_for(
        lambda keys: "nodepool.provider.cloud-sim.leaked.volumes" in keys)


@pytest.mark.sim(max_volumes=2)
def test_cinder_volume_limit_defers_boot_from_volume_launches(env, sim, zuul):
    sim.add_volume(size=1, name="unmanaged")  # leaves room for one boot volume
    env.start(env.config(CONFIG.format(retries=1).replace(*BOOT_FROM_VOLUME, 1)))
    first = zuul.submit(["small"])
    assert zuul.wait_for_request(first, timeout=30)["state"] == "fulfilled"
    second = zuul.submit(["small"])
    env.settle()
    # Waiting for quota, not failed, and never tried against a full cloud.
    assert zuul.get_request(second)["state"] == "requested"
    assert sum(1 for m, p in sim.requests
               if (m, p) == ("POST", "/compute/v2.1/servers")) == 1
    zuul.run_job(first)
    assert zuul.wait_for_request(second, timeout=30)["state"] == "fulfilled"


V6_NETWORKS = ("        host-key-checking: false\n",
               "        host-key-checking: false\n        networks: [private, public-v6]\n")


def test_ipv6_preferred_hands_out_the_ipv6_address(env, sim, zuul):
    env.start(env.config(CONFIG.format(retries=1).replace(*V6_NETWORKS, 1).replace(
        "    rate: 0.001\n", "    rate: 0.001\n    ipv6-preferred: true\n")))
    node = zuul.get_node(zuul.wait_for_request(zuul.submit(["small"]),
                                               timeout=30)["nodes"][0])
    server = sim.servers[node["external_id"]]
    assert node["interface_ip"] == node["public_ipv6"] == server.address6
    assert node["private_ipv4"] == server.address
    assert not sim.floating_ips  # a public IPv6 address needs no floating IP


def test_without_ipv6_preferred_ipv4_is_handed_out(env, sim, zuul):
    env.start(env.config(CONFIG.format(retries=1).replace(*V6_NETWORKS, 1)))
    node = zuul.get_node(zuul.wait_for_request(zuul.submit(["small"]),
                                               timeout=30)["nodes"][0])
    server = sim.servers[node["external_id"]]
    [fip] = sim.floating_ips.values()
    assert node["public_ipv6"] == server.address6
    assert node["interface_ip"] == node["public_ipv4"] == fip["floating_ip_address"]


def test_rate_limits_and_slow_responses_are_waited_out(env, sim, zuul):
    start(env, retries=1)  # one failed call would fail the request
    sim.faults.slow_seconds = 0.05
    sim.faults.over_limit = 2
    sim.faults.rate_limited = 2
    request = zuul.wait_for_request(zuul.submit(["small"]), timeout=30)
    assert request["state"] == "fulfilled"
    assert sim.faults.over_limit == 0 and sim.faults.rate_limited == 0
    assert len(sim.servers) == 1


@pytest.mark.sim(server_address="127.0.0.1")
def test_host_keys_are_scanned_from_the_server(env, sim, zuul, tmp_path):
    from nodepool.testing.sshdserver import SSHServer  # tools/, on the path
    sshd = SSHServer(str(tmp_path / "sshd")).start()
    try:
        text = CONFIG.format(retries=1).replace(
            "        image-id: ubuntu-image-id\n",
            f"        image-id: ubuntu-image-id\n        connection-port: {sshd.port}\n")
        text = text.replace("        host-key-checking: false\n",
                            "        host-key-checking: true\n"
                            "        auto-floating-ip: false\n")
        env.start(env.config(text))
        node = zuul.get_node(zuul.wait_for_request(zuul.submit(["small"]),
                                                   timeout=30)["nodes"][0])
        assert node["interface_ip"] == "127.0.0.1"
        assert node["connection_port"] == sshd.port
        assert set(node["host_keys"]) == set(sshd.host_keys)
    finally:
        sshd.stop()


def test_key_name_userdata_and_dynamic_properties(env, sim, zuul):
    import base64
    env.start(env.config(CONFIG.format(retries=1).replace(
        "            instance-properties: {team: ci}\n",
        "            instance-properties: {team: ci}\n"
        "            key-name: nodepool\n"
        "            userdata: '#cloud-config'\n"
        "            dynamic-instance-properties:\n"
        "              requested-by: '{request.requestor}'\n")))
    request_id = zuul.submit(["small"])
    node = zuul.get_node(zuul.wait_for_request(request_id, timeout=30)["nodes"][0])
    server = sim.servers[node["external_id"]]
    assert server.key_name == "nodepool"
    assert base64.b64decode(server.user_data).decode() == "#cloud-config"
    assert server.metadata["requested-by"] == zuul.system_id
    assert server.metadata["team"] == "ci"


def test_unknown_key_name_fails_the_launch(env, sim, zuul):
    env.start(env.config(CONFIG.format(retries=1).replace(
        "            instance-properties: {team: ci}\n",
        "            key-name: missing-key\n")))
    request = zuul.wait_for_request(zuul.submit(["small"]), timeout=30)
    assert request["state"] == "failed"
    assert not sim.servers


def test_server_listing_follows_pagination(sim):
    import openstack
    conn = openstack.connect(cloud="sim")
    for index in range(5):
        conn.compute.create_server(name=f"s{index}", flavor_id="1",
                                   image_id="ubuntu-image-id", networks="auto")
    sim.page_size = 2
    from nodepool.drivers.openstack.api import list_json
    servers = list_json(conn.compute, "/servers/detail", "servers")
    assert sorted(s["name"] for s in servers) == [f"s{i}" for i in range(5)]
    assert sum(1 for m, p in sim.requests if p == "/compute/v2.1/servers/detail") == 3


HUNG_CLOUD = """
labels:
  - name: small
    min-ready: 1
  - name: other
providers:
  - name: cloud-sim
    cloud: sim
    region-name: RegionOne
    rate: {rate}
    pools:
      - name: main
        host-key-checking: false
        max-servers: 5
        labels:
          - name: small
            min-ram: 1024
            cloud-image: ubuntu
    cloud-images:
      - name: ubuntu
        image-id: ubuntu-image-id
  - name: fake-elsewhere
    cloud: fake
    pools:
      - name: main
        max-servers: 5
        labels:
          - name: other
            cloud-image: fake-image
            min-ram: 1024
    cloud-images:
      - name: fake-image
        image-id: fake-image-id
"""


def test_a_hung_cloud_api_delays_neither_ready_nodes_nor_other_providers(
        env, sim, zuul):
    path = env.config(HUNG_CLOUD.format(rate=0.001))
    launcher = env.start(path)
    wait_until(lambda: any(n.state == "ready" and n.provider == "cloud-sim"
                           for n in launcher.nodes.nodes()),
               timeout=30, message="min-ready's node of the simulated cloud")
    # Every call to the cloud now takes half a minute. A changed rate makes
    # a new connection, which knows nothing yet: not the flavors, not the
    # limits.
    sim.faults.slow_seconds = 30.0
    old = launcher.managers["cloud-sim"]
    env.rewrite(path, HUNG_CLOUD.format(rate=0.002))
    wait_until(lambda: launcher.managers.get("cloud-sim") not in (None, old),
               timeout=10, message="the provider restarted with a new connection")
    try:
        # Served from the ready node, and by the other provider, while the
        # cloud's answers are outstanding.
        small = zuul.submit(["small"])
        other = zuul.submit(["other"])
        assert zuul.wait_for_request(small, timeout=10)["state"] == "fulfilled"
        assert zuul.wait_for_request(other, timeout=10)["state"] == "fulfilled"
    finally:
        sim.faults.slow_seconds = 0.0


@pytest.mark.sim(boot_delay=30)
def test_a_launch_left_by_a_dead_launcher_goes_on_with_its_server(env, sim, zuul):
    from launcher_fixtures import crash
    path = env.config(CONFIG.format(retries=3))
    first = env.start(path)
    request_id = zuul.submit(["small"])
    wait_until(lambda: any(n.external_id for n in first.nodes.nodes()), timeout=30,
               message="server created")
    [server] = sim.live_servers()
    crash(first)
    server.active_at = 0  # it finishes booting while nobody watches
    second = env.start(path)
    request = zuul.wait_for_request(request_id, timeout=30)
    assert request["state"] == "fulfilled"
    node = zuul.get_node(request["nodes"][0])
    # The same server, its floating IP attached by the launcher that took over.
    assert node["external_id"] == server.id and node["public_ipv4"]
    assert second.counters["launches_resumed"] == 1
    assert [s.id for s in sim.live_servers()] == [server.id]
