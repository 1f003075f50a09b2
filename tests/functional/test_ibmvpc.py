"""The ibmvpc driver end to end: a real launcher against real ZooKeeper,
IBM's Python SDK over HTTP against the IBM Cloud VPC simulator (the
``ibmvpc`` fixture: an IBM credentials file whose IAM and service addresses
are the simulator's).

Unless a test says otherwise, the addresses the simulator hands out are not
this machine's: pools here have host-key-checking off.
"""

import os
import time

import pytest
import yaml

from conftest import wait_until
from launcher_fixtures import built_and_uploaded, ibmvpc_provider, two_of_four_fit
from nodepool import drivers
from nodepool.config.loader import build_config
from nodepool.drivers.base import QuotaError
from nodepool.testing.ibmvpc_sim import STOCK_IMAGES

FILTER = """        image-filter:
          operating-system:
            family: Debian GNU/Linux
            architecture: amd64
"""


def start(env, labels=("a",), **extras):
    body = "labels:\n" + "".join(f"  - name: {n}\n" for n in labels) + \
        "providers:" + ibmvpc_provider("ibmvpc", **extras)
    return env.start(env.config(body))


def provider_of(body: str, top: str = ""):
    config = build_config(yaml.safe_load("labels:\n  - name: a\n" + top +
                                         "providers:" + body))
    return config.providers["ibmvpc"]


@pytest.fixture
def adapter(ibmvpc):
    """The adapter of the usual provider, alone (no launcher)."""
    made = drivers.make_adapter(provider_of(ibmvpc_provider("ibmvpc")))
    yield made
    made.stop()


def create(adapter, label, node_id="0000000001", image_id=None):
    from test_adapter_contract import run
    machine = adapter.create_state_machine(
        f"np{node_id}", label, image_id, {"nodepool_node_id": node_id,
                                          "nodepool_provider_name": "ibmvpc"}, None, None)
    return run(machine)


def image_named(ibmvpc, name: str) -> dict:
    return next(i for i in ibmvpc.state.images.values() if i["name"] == name)


def test_a_node_is_an_instance_with_a_floating_ip_in_the_pools_group(env, ibmvpc, zuul):
    start(env, pool_extra="        node-attributes: {team: ci}\n",
          label_extra='            user-data: "#cloud-config\\n"\n')
    request_id = zuul.submit(["a"])
    request = zuul.wait_for_request(request_id, timeout=30)
    assert request["state"] == "fulfilled"
    [node_id] = request["nodes"]
    node = zuul.get_node(node_id)
    vm = ibmvpc.live()[f"np{node_id}"]
    assert vm["resource_group"]["name"] == "np_ibmvpc_main"
    assert vm["profile"] == {"name": "cx2-2x4"} and vm["zone"] == {"name": "us-south-1"}
    assert vm["image"] == {"id": image_named(ibmvpc, "ibm-debian-12-amd64-1")["id"]}
    assert vm["keys"] == [{"id": ibmvpc.keys["zuul"]["id"]}]
    assert vm["vpc"]["id"] == ibmvpc.vpc["id"]
    assert vm["primary_network_interface"]["subnet"] == {"id": ibmvpc.subnet["id"]}
    assert vm["sim"]["user_data"] == "#cloud-config\n"
    [fip] = ibmvpc.state.fips.values()
    assert fip["name"] == f"np{node_id}" and fip["resource_group"]["name"] == \
        "np_ibmvpc_main"
    assert fip["target"]["id"] == vm["primary_network_interface"]["id"]
    # What Zuul reads.
    assert node["interface_ip"] == node["public_ipv4"] == fip["address"]
    assert node["private_ipv4"] == vm["primary_network_interface"]["primary_ip"]["address"]
    assert (node["cloud"], node["region"], node["az"]) == ("IBM", "us-south", "us-south-1")
    assert (node["username"], node["connection_type"], node["connection_port"]) == (
        "zuul", "ssh", 22)
    assert node["attributes"] == {"team": "ci"}
    assert node["resources"] == {"cores": 2, "ram": 4096, "instances": 1}
    zuul.run_job(request_id)
    wait_until(lambda: not ibmvpc.live() and not ibmvpc.state.fips, timeout=20,
               message="instance and floating IP deleted")


def test_internal_ip_and_an_image_id_without_a_floating_ip(env, ibmvpc, zuul):
    image = ibmvpc.add_image("ci-image")
    body = ibmvpc_provider("ibmvpc", pool_extra="        use-internal-ip: true\n")
    body = body.replace(FILTER, f"        image-id: {image['id']}\n").replace(
        "        public-ipv4: true\n", "")
    env.start(env.config("labels:\n  - name: a\nproviders:" + body))
    node = zuul.get_node(zuul.wait_for_request(zuul.submit(["a"]), timeout=30)["nodes"][0])
    [vm] = ibmvpc.live().values()
    assert vm["image"] == {"id": image["id"]}
    assert ibmvpc.state.fips == {}  # public-ipv4 is off by default
    assert node["interface_ip"] == node["private_ipv4"] and not node["public_ipv4"]


@pytest.mark.parametrize("spec, expected", [
    ("image-filter: {operating-system: {architecture: s390x}}", "ibm-ubuntu-22-04-s390x-1"),
    ("image-name: ibm-ubuntu-22-04-amd64-1", "ibm-ubuntu-22-04-amd64-1"),
    ("image-href: https://us-south.iaas.cloud.ibm.com/v1/images/r006-x", None),
], ids=["image-filter", "image-name", "image-href"])
def test_what_a_cloud_image_boots(ibmvpc, spec, expected):
    provider = provider_of(ibmvpc_provider("ibmvpc").replace(FILTER, f"        {spec}\n"))
    adapter = drivers.make_adapter(provider)
    try:
        label = provider.pools["main"].labels["a"]
        assert adapter.label_ready(label)
        create(adapter, label)
        booted = ibmvpc.live()["np0000000001"]["image"]
        assert booted == ({"id": image_named(ibmvpc, expected)["id"]} if expected
                          else {"href": spec.split(": ", 1)[1]})
    finally:
        adapter.stop()


def test_a_filter_matching_nothing_makes_the_label_not_ready(ibmvpc):
    assert "ppc64le" not in {arch for _, _, arch in STOCK_IMAGES.values()}
    provider = provider_of(ibmvpc_provider("ibmvpc").replace(
        FILTER, "        image-filter: {operating-system: {architecture: ppc64le}}\n"))
    adapter = drivers.make_adapter(provider)
    try:
        assert not adapter.label_ready(provider.pools["main"].labels["a"])
    finally:
        adapter.stop()


def test_the_configured_quota_defers_requests_until_capacity_returns(env, ibmvpc, zuul):
    start(env, provider_extra="    quota:\n      cores: 4\n")  # two cx2-2x4
    two_of_four_fit(env, zuul, lambda: len(ibmvpc.live()))
    # The launcher never asked for what the quota could not hold.
    assert ibmvpc.calls()["POST instances"] == 4


def test_a_quota_refusal_defers_the_request_and_leaves_nothing(env, ibmvpc, zuul):
    # launch-retries 1: a launch failure would fail the request at once.
    start(env, provider_extra="    launch-retries: 1\n")
    first = zuul.submit(["a"])
    [first_node] = zuul.wait_for_request(first, timeout=30)["nodes"]
    ibmvpc.set(instances=1)  # the account's limit, which nodepool is not told
    second = zuul.submit(["a"])
    wait_until(lambda: ibmvpc.calls().get("POST instances", 0) >= 3, timeout=30,
               message="the refused instance, asked for again")
    assert zuul.get_request(second)["state"] in ("requested", "pending")
    # A refused attempt made nothing (its floating IP comes after the instance).
    assert list(ibmvpc.live()) == ibmvpc.names("fips") == [f"np{first_node}"]
    zuul.run_job(first)
    assert zuul.wait_for_request(second, timeout=30)["state"] == "fulfilled"
    assert len(ibmvpc.live()) == 1


@pytest.mark.parametrize("knob, expected", [
    ("capacity_failures", "cannot_start_capacity"),
    ("capacity_refusals", "insufficient_capacity"),
], ids=["failed-instance", "refused-at-once"])
def test_capacity_errors_are_quota_errors_by_profile(ibmvpc, adapter, knob, expected):
    ibmvpc.set(**{knob: 1})
    label = adapter.provider.pools["main"].labels["a"]
    with pytest.raises(QuotaError, match=expected):
        create(adapter, label)
    assert adapter.capacity_key(label) == "cx2-2x4"


def test_after_a_capacity_failure_the_launch_moves_on(env, ibmvpc, zuul):
    ibmvpc.set(capacity_failures=1)
    start(env, provider_extra="    launch-retries: 1\n")
    request = zuul.wait_for_request(zuul.submit(["a"]), timeout=30)
    assert request["state"] == "fulfilled"
    assert ibmvpc.calls()["POST instances"] == 2
    name = f"np{request['nodes'][0]}"
    wait_until(lambda: list(ibmvpc.live()) == [name] and ibmvpc.names("fips") == [name],
               timeout=20, message="nothing left of the failed instance")


def test_throttling_is_survived(env, ibmvpc, zuul):
    start(env)
    ibmvpc.set(throttle=3)
    request = zuul.wait_for_request(zuul.submit(["a"]), timeout=30)
    assert request["state"] == "fulfilled"
    assert ibmvpc.calls()["throttled"] == 3


def test_a_failed_delete_is_retried(env, ibmvpc, zuul):
    start(env)
    request_id = zuul.submit(["a"])
    zuul.wait_for_request(request_id, timeout=30)
    ibmvpc.set(delete_failures=1)
    zuul.run_job(request_id)
    wait_until(lambda: not ibmvpc.live() and not ibmvpc.state.fips, timeout=30,
               message="all deleted")
    assert ibmvpc.calls()["DELETE instances"] == 2


def test_an_instance_that_never_starts_leaves_nothing(env, ibmvpc, zuul):
    ibmvpc.set(boot_hangs=1)
    start(env, provider_extra="    launch-timeout: 3\n    launch-retries: 2\n")
    request = zuul.wait_for_request(zuul.submit(["a"]), timeout=40)
    assert request["state"] == "fulfilled"
    assert ibmvpc.calls()["POST instances"] == 2
    name = f"np{request['nodes'][0]}"
    wait_until(lambda: list(ibmvpc.live()) == [name] and ibmvpc.names("fips") == [name],
               timeout=20, message="nothing left of the timed-out attempt")


def test_leaked_instances_ips_and_uploads_are_removed_and_others_left(env, ibmvpc, zuul):
    ibmvpc.add_instance("np0000009999", group="np_ibmvpc_main")
    ibmvpc.add_fip("np0000009998", group="np_ibmvpc_main")
    ibmvpc.add_image("npimage0000000042-0000000001", group="npimages_ibmvpc")
    ibmvpc.state.objects["npimage0000000042-0000000002.qcow2"] = b"staged"
    # Not ours: another provider's node, someone's machine and address.
    ibmvpc.add_instance("np0000009997", group="np_other_main")
    ibmvpc.add_instance("np0000009996")
    ibmvpc.add_fip("web-frontend")
    launcher = start(env)
    launcher.cleanup.wake.set()
    wait_until(lambda: (ibmvpc.names("instances"), ibmvpc.names("fips"),
                        ibmvpc.names("images"), list(ibmvpc.state.objects)) == (
        ["np0000009996", "np0000009997"], ["web-frontend"], [], []),
        timeout=30, message="every leaked resource deleted")
    # Our own live node is not a leak.
    [node_id] = zuul.wait_for_request(zuul.submit(["a"]), timeout=30)["nodes"]
    for _ in range(3):  # a leak goes on its second sighting: three passes
        launcher.cleanup.wake.set()
        time.sleep(0.4)
    env.settle()
    assert f"np{node_id}" in ibmvpc.live() and f"np{node_id}" in ibmvpc.names("fips")


def test_paged_listings_profiles_and_the_configured_quota(ibmvpc):
    ibmvpc.set(page_size=1)
    for number in range(3):
        ibmvpc.add_instance(f"other-{number}")
    provider = provider_of(ibmvpc_provider(
        "ibmvpc", provider_extra="    quota:\n      instances: 7\n"))
    adapter = drivers.make_adapter(provider)
    try:
        found = {i.external_id: i for i in adapter.list_instances()}
        assert set(found) == {"other-0", "other-1", "other-2"}
        assert found["other-0"].resources == {"cores": 2, "ram": 4096, "instances": 1}
        assert found["other-0"].metadata == {}  # not in a group of ours
        assert dict(adapter.quota_limits())["instances"] == 7
        label = provider.pools["main"].labels["a"]
        assert dict(adapter.quota_for_label(label)) == {"cores": 2, "ram": 4096,
                                                        "instances": 1}
        assert ibmvpc.calls()["GET instances"] >= 3  # one page each
    finally:
        adapter.stop()


def test_a_diskimage_is_staged_made_an_image_and_deleted(ibmvpc, adapter, tmp_path):
    qcow2 = tmp_path / "image.qcow2"
    qcow2.write_bytes(b"QFI\xfb" + os.urandom(300_000))
    provider_image = type("Image", (), {"operating_system": "debian-12-amd64"})()
    image_id = adapter.upload_image("npimage0000000007-0000000001", str(qcow2), "qcow2",
                                    {}, provider_image)
    image = ibmvpc.state.images[image_id]
    assert (image["name"], image["status"], image["resource_group"]["id"]) == (
        "npimage0000000007-0000000001", "available",
        ibmvpc.group_named("npimages_ibmvpc")["id"])
    assert ibmvpc.state.image_data[image_id] == qcow2.read_bytes()
    assert image["operating_system"]["name"] == "debian-12-amd64"
    assert ibmvpc.state.objects == {}  # the staged object went
    assert adapter.list_images() == [{
        "id": image_id, "name": "npimage0000000007-0000000001",
        "properties": {"nodepool_build_id": "0000000007",
                       "nodepool_upload_id": "0000000001",
                       "nodepool_provider_name": "ibmvpc"}}]
    adapter.delete_image(image_id)
    assert image_id not in ibmvpc.state.images


def test_without_readable_credentials_the_provider_is_unavailable(ibmvpc, tmp_path):
    body = ibmvpc_provider("ibmvpc").replace(
        os.environ["IBMVPC_SIM_CREDENTIALS"], str(tmp_path / "missing.env"))
    with pytest.raises(drivers.DriverUnavailable, match="cannot read the IBM Cloud"):
        drivers.make_adapter(provider_of(body))


def test_the_builder_uploads_a_diskimage_the_launcher_boots(env, ibmvpc, store, zuul,
                                                            tmp_path):
    body = ibmvpc_provider("ibmvpc").replace(
        "            cloud-image: debian\n", "            diskimage: debian\n") + \
        "    diskimages:\n      - name: debian\n        operating-system: debian-12-amd64\n"
    path, build, upload = built_and_uploaded(env, store, tmp_path, body, "ibmvpc")
    image = ibmvpc.state.images[upload.external_id]
    assert image["name"] == upload.external_name == f"npimage{build.id}-{upload.id}"
    env.start(path)
    node = zuul.get_node(zuul.wait_for_request(zuul.submit(["a"]), timeout=30)["nodes"][0])
    assert node["username"] == "ci"
    [vm] = ibmvpc.live().values()
    assert vm["image"] == {"id": image["id"]}
