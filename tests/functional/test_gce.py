"""The gce driver end to end: a real launcher against real ZooKeeper, the
unmodified google-api-python-client over HTTP against the GCE simulator (the
``gce`` fixture: Application Default Credentials from a service-account key
file whose token exchange is the simulator's, and gcloud's Compute endpoint
override).

Unless a test says otherwise, the addresses the simulator hands out are not
this machine's: pools here have host-key-checking off.
"""

import time

import pytest
import yaml

from conftest import wait_until
from launcher_fixtures import gce_provider, two_of_four_fit
from nodepool import drivers
from nodepool.config.loader import build_config
from nodepool.drivers.base import QuotaError
from nodepool.testing.gce_sim import NEWEST_DEBIAN, PROJECT
from nodepool.testing.sshdserver import SSHServer

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDtest zuul@nodepool"


def start(env, labels=("a",), **extras):
    body = "labels:\n" + "".join(f"  - name: {n}\n" for n in labels) + \
        "providers:" + gce_provider("gce", **extras)
    return env.start(env.config(body))


def metadata(instance: dict) -> dict:
    return {i["key"]: i["value"] for i in instance["metadata"].get("items") or []}


def ours(gce) -> dict:
    return {n: i for n, i in gce.live().items()
            if metadata(i).get("nodepool_provider_name") == "gce"}


def provider_of(body: str):
    config = build_config(yaml.safe_load("labels:\n  - name: a\nproviders:" + body))
    return config.providers["gce"]


def test_instance_carries_metadata_and_the_node_the_cloud_facts(env, gce, zuul):
    start(env, pool_extra="        node-attributes: {team: ci}\n",
          label_extra="            volume-type: pd-ssd\n            volume-size: 20\n")
    request_id = zuul.submit(["a"])
    request = zuul.wait_for_request(request_id, timeout=30)
    assert request["state"] == "fulfilled"
    [node_id] = request["nodes"]
    node = zuul.get_node(node_id)
    [instance] = gce.live().values()
    assert instance["name"] == node["external_id"] == f"np{node_id}"
    assert metadata(instance) == {
        "nodepool_node_id": node_id, "nodepool_pool_name": "main",
        "nodepool_provider_name": "gce", "nodepool_image_name": "debian",
        "ssh-keys": f"zuul:{KEY}"}
    # The family's newest image, the label's disk and machine type.
    [disk] = instance["disks"]
    assert disk["sim"]["sourceImage"].endswith(
        f"projects/debian-cloud/global/images/{NEWEST_DEBIAN}")
    assert (disk["sim"]["diskType"], disk["diskSizeGb"], disk["autoDelete"]) == (
        "pd-ssd", "20", True)
    assert instance["machineType"].endswith("/zones/us-central1-a/machineTypes/e2-medium")
    # What Zuul reads.
    nic = instance["networkInterfaces"][0]
    assert node["interface_ip"] == nic["accessConfigs"][0]["natIP"] == node["public_ipv4"]
    assert node["private_ipv4"] == nic["networkIP"]
    assert (node["cloud"], node["region"], node["az"]) == (
        "Google", "us-central1", "us-central1-a")
    assert (node["username"], node["connection_type"], node["connection_port"]) == (
        "zuul", "ssh", 22)
    assert node["python_path"] == "auto" and node["shell_type"] is None
    assert node["attributes"] == {"team": "ci"}
    assert node["resources"] == {"cores": 2, "ram": 4096, "instances": 1}
    assert node["host_keys"] == []  # host-key-checking false: no scan
    zuul.run_job(request_id)
    wait_until(lambda: not gce.live(), timeout=20, message="instance deleted")
    calls = gce.calls()
    assert calls["instances.insert"] == 1 and calls["instances.delete"] == 1


def test_internal_ip_image_id_and_a_winrm_image(env, gce, zuul):
    image = """      - name: windows
        image-id: ci-image
        username: Administrator
        connection-type: winrm
        shell-type: powershell
        python-path: C:/Python/python.exe
"""
    body = "labels:\n  - name: a\n  - name: win\nproviders:" + gce_provider(
        "gce", image_extra=image, pool_extra="        use-internal-ip: true\n",
        label_extra="""          - name: win
            cloud-image: windows
            instance-type: n2-standard-4
""")
    env.start(env.config(body))
    request_id = zuul.submit(["win"])
    node = zuul.get_node(zuul.wait_for_request(request_id, timeout=30)["nodes"][0])
    [instance] = gce.live().values()
    assert instance["disks"][0]["sim"]["sourceImage"].endswith(
        f"projects/{PROJECT}/global/images/ci-image")
    assert node["interface_ip"] == instance["networkInterfaces"][0]["networkIP"]
    assert node["interface_ip"] != node["public_ipv4"]
    assert (node["username"], node["connection_type"], node["connection_port"],
            node["shell_type"], node["python_path"]) == (
        "Administrator", "winrm", 5986, "powershell", "C:/Python/python.exe")
    assert node["resources"] == {"cores": 4, "ram": 16384, "instances": 1}
    assert "ssh-keys" not in metadata(instance)  # the image gives no key


def test_host_keys_are_scanned_when_checking(env, gce, zuul):
    sshd = SSHServer().start()
    try:
        gce.set(external_ip="127.0.0.1")
        start(env, host_key_checking=True,
              image_extra=f"        connection-port: {sshd.port}\n")
        node = zuul.get_node(zuul.wait_for_request(zuul.submit(["a"]), timeout=30)[
            "nodes"][0])
        assert set(node["host_keys"]) == set(sshd.host_keys)
        assert node["connection_port"] == sshd.port
    finally:
        sshd.stop()


@pytest.mark.gce(cpus=4)  # two e2-medium (2 vCPUs each)
def test_region_quota_defers_requests_until_capacity_returns(env, gce, zuul):
    start(env)
    two_of_four_fit(env, zuul, lambda: len(gce.live()))
    # The launcher never asked GCE for what the quota could not hold.
    assert gce.calls()["instances.insert"] == 4


@pytest.mark.gce(cpus=4)
def test_a_foreign_instance_counts_against_the_region_quota(env, gce, zuul):
    gce.add_instance("someone-elses", machine_type="e2-medium")
    start(env)
    ids = [zuul.submit(["a"]) for _ in range(2)]
    wait_until(lambda: any(zuul.get_request(r)["state"] == "fulfilled" for r in ids),
               timeout=30, message="one fulfilled")
    env.settle()
    assert sorted(zuul.get_request(r)["state"] for r in ids) == ["fulfilled",
                                                                 "requested"]
    assert gce.calls()["instances.insert"] == 1


@pytest.mark.parametrize("at_once", [False, True], ids=["in-operation", "http-403"])
def test_quota_refusals_from_gce_defer_instead_of_failing(env, gce, zuul, at_once):
    gce.set(quota_refused_at_once=at_once)
    # launch-retries 1: a launch failure would fail the request at once.
    launcher = start(env, provider_extra="    launch-retries: 1\n")
    first = zuul.submit(["a"])
    assert zuul.wait_for_request(first, timeout=30)["state"] == "fulfilled"
    # The quota drops to what is in use; the launcher still believes the
    # old limit, so GCE refuses the next insert with QUOTA_EXCEEDED.
    gce.set(cpus=2)
    second = zuul.submit(["a"])
    wait_until(lambda: gce.calls().get("instances.insert", 0) >= 2, timeout=30,
               message="the refused insert")
    env.settle()
    assert zuul.get_request(second)["state"] in ("requested", "pending")
    assert launcher.managers["gce"].view.limits()["cores"] == 2  # read again
    zuul.run_job(first)
    assert zuul.wait_for_request(second, timeout=30)["state"] == "fulfilled"
    assert len(gce.live()) == 1


def test_capacity_refusal_is_a_quota_error_and_leaves_nothing(gce):
    from test_adapter_contract import run
    provider = provider_of(gce_provider("gce"))
    adapter = drivers.make_adapter(provider)
    gce.set(capacity_failures=1)
    label = provider.pools["main"].labels["a"]
    try:
        machine = adapter.create_state_machine(
            "np0000000001", label, None, {"nodepool_node_id": "0000000001"}, None, None)
        with pytest.raises(QuotaError, match="ZONE_RESOURCE_POOL_EXHAUSTED"):
            run(machine)
        assert gce.live() == {}
        assert adapter.capacity_key(label) == "e2-medium"
    finally:
        adapter.stop()


def test_failed_boots_are_retried_and_leave_nothing(env, gce, zuul):
    gce.set(boot_failures=1)
    start(env, provider_extra="    launch-retries: 2\n")
    request_id = zuul.submit(["a"])
    request = zuul.wait_for_request(request_id, timeout=30)
    assert request["state"] == "fulfilled"
    # The failed instance was deleted before the retry reused its name.
    assert list(gce.live()) == [f"np{request['nodes'][0]}"]
    assert gce.calls()["instances.insert"] == 2
    # Every attempt failing fails the request, and leaves no instance.
    gce.set(boot_failures=2)
    failed = zuul.wait_for_request(zuul.submit(["a"]), timeout=30)
    assert failed["state"] == "failed"
    zuul.run_job(request_id)
    wait_until(lambda: not gce.live(), timeout=20, message="no instance left")


def test_refused_inserts_are_launch_failures(env, gce, zuul):
    gce.set(insert_errors=5)
    start(env, provider_extra="    launch-retries: 2\n")
    assert zuul.wait_for_request(zuul.submit(["a"]), timeout=30)["state"] == "failed"
    assert gce.live() == {} and gce.calls()["instances.insert"] == 2


def test_burst_leaves_no_instance_behind(env, gce, zuul):
    gce.set(boot_delay=0.2)
    start(env, pool_extra="        max-servers: 40\n")
    ids = [zuul.submit(["a"]) for _ in range(40)]
    for request_id in ids:
        assert zuul.wait_for_request(request_id, timeout=120)["state"] == "fulfilled"
    assert len(gce.live()) == 40
    for request_id in ids:
        zuul.run_job(request_id)
    wait_until(lambda: not gce.live(), timeout=120, message="all deleted")
    calls = gce.calls()
    assert calls["instances.insert"] == calls["instances.delete"] == 40
    # Waiting machines share one listing rather than asking one by one.
    assert calls["instances.list"] < 40 * 4


def test_leaked_instances_of_ours_are_removed_and_others_left(env, gce, zuul):
    gce.add_instance("np0000009999", {"nodepool_provider_name": "gce",
                                      "nodepool_node_id": "0000009999",
                                      "nodepool_pool_name": "main"})
    gce.add_instance("other-provider", {"nodepool_provider_name": "elsewhere",
                                        "nodepool_node_id": "0000009998"})
    gce.add_instance("not-nodepool", {"owner": "someone"})
    launcher = start(env)
    launcher.cleanup.wake.set()
    wait_until(lambda: "np0000009999" not in gce.live(), timeout=30,
               message="the leaked instance deleted")
    assert set(gce.live()) == {"other-provider", "not-nodepool"}
    # Our own live node is not a leak.
    request_id = zuul.submit(["a"])
    [node_id] = zuul.wait_for_request(request_id, timeout=30)["nodes"]
    for _ in range(3):  # a leak goes on its second sighting: three passes
        launcher.cleanup.wake.set()
        time.sleep(0.4)
    env.settle()
    assert f"np{node_id}" in gce.live()


def test_api_calls_are_timed_in_statsd(env, gce, zuul, statsd):
    start(env)
    zuul.wait_for_request(zuul.submit(["a"]), timeout=30)
    assert statsd.wait_for(lambda keys: {"nodepool.task.gce.InstancesInsert",
                                         "nodepool.task.gce.InstancesList",
                                         "nodepool.task.gce.ZoneOperationsGet"} <= keys)


def test_without_credentials_the_provider_is_unavailable(gce, monkeypatch, tmp_path):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    with pytest.raises(drivers.DriverUnavailable, match="provider gce: no Google "
                       "credentials"):
        drivers.make_adapter(provider_of(gce_provider("gce")))


def test_an_unknown_machine_type_is_a_configuration_error(gce):
    provider = provider_of(gce_provider("gce").replace("e2-medium", "e9-huge"))
    adapter = drivers.make_adapter(provider)
    try:
        with pytest.raises(drivers.base.RuntimeConfigurationError, match="e9-huge"):
            adapter.quota_for_label(provider.pools["main"].labels["a"])
    finally:
        adapter.stop()


def test_console_log_and_label_readiness(gce):
    provider = provider_of(gce_provider("gce").replace("image-family: debian-12",
                                                       "image-family: debian-99"))
    adapter = drivers.make_adapter(provider)
    try:
        assert not adapter.label_ready(provider.pools["main"].labels["a"])
        gce.add_instance("np0000000007")
        assert "np0000000007 login" in adapter.console_log("np0000000007")
    finally:
        adapter.stop()


def test_pool_max_cores_counts_the_machine_types_vcpus(env, gce, zuul):
    # No cloud quota here: the pool's max-cores holds two e2-medium.
    start(env, pool_extra="        max-cores: 4\n")
    two_of_four_fit(env, zuul, lambda: len(gce.live()))
    assert gce.calls()["instances.insert"] == 4


def test_calls_wait_for_their_turn_at_rate(gce):
    provider = provider_of(gce_provider("gce").replace("rate: 1000", "rate: 10"))
    adapter = drivers.make_adapter(provider)
    try:
        started = time.monotonic()
        for number in range(6):  # writes: 10 a second
            with pytest.raises(drivers.NotFound):
                adapter.delete_instance(f"gone-{number}")
        assert time.monotonic() - started >= 0.45
        started = time.monotonic()
        for _ in range(11):  # reads: ten times as many
            adapter.api.call("regions", "get", region="us-central1")
        assert 0.09 <= time.monotonic() - started < 0.9  # 11 writes: 1 s
    finally:
        adapter.stop()


def test_a_pools_network_and_subnetwork(env, gce, zuul):
    body = "labels:\n  - name: a\n  - name: b\nproviders:" + gce_provider(
        "gce", pool_extra="        network: global/networks/ci\n"
                          "        subnetwork: regions/us-central1/subnetworks/ci\n")
    body += """      - name: elsewhere
        network: global/networks/nowhere
        host-key-checking: false
        labels:
          - name: b
            cloud-image: debian
            instance-type: e2-small
"""
    env.start(env.config(body))
    request_id = zuul.submit(["a"])
    node = zuul.get_node(zuul.wait_for_request(request_id, timeout=30)["nodes"][0])
    nic = gce.live()[node["external_id"]]["networkInterfaces"][0]
    assert nic["network"].endswith("/global/networks/ci")
    assert nic["subnetwork"].endswith("/regions/us-central1/subnetworks/ci")
    # GCE refuses an unknown network: every attempt fails, nothing is left.
    assert zuul.wait_for_request(zuul.submit(["b"]), timeout=30)["state"] == "failed"
    assert list(gce.live()) == [node["external_id"]]
