"""The azure driver end to end: a real launcher against real ZooKeeper, our
ARM client over HTTP against the Azure simulator (the ``azure`` fixture: a
service principal's credentials file whose token and ARM endpoints are the
simulator's).

Unless a test says otherwise, the addresses the simulator hands out are not
this machine's: pools here have host-key-checking off.
"""

import base64
import time

import pytest
import yaml

from conftest import wait_until
from launcher_fixtures import azure_provider, built_and_uploaded, two_of_four_fit
from nodepool import drivers
from nodepool.config.loader import build_config
from nodepool.drivers.base import QuotaError
from nodepool.testing.azure_sim import FEDERATED_TOKEN, SUBSCRIPTION, TENANT

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDtest zuul@nodepool"


def start(env, labels=("a",), **extras):
    body = "labels:\n" + "".join(f"  - name: {n}\n" for n in labels) + \
        "providers:" + azure_provider("azure", **extras)
    return env.start(env.config(body))


def provider_of(body: str):
    config = build_config(yaml.safe_load("labels:\n  - name: a\nproviders:" + body))
    return config.providers["azure"]


@pytest.fixture
def adapter(azure):
    """The adapter of the usual provider, alone (no launcher)."""
    provider = provider_of(azure_provider("azure"))
    made = drivers.make_adapter(provider)
    yield made
    made.stop()


def create(adapter, label, node_id="0000000001", image_id=None):
    from test_adapter_contract import run
    machine = adapter.create_state_machine(
        f"np{node_id}", label, image_id, {"nodepool_node_id": node_id,
                                          "nodepool_provider_name": "azure"}, None, None)
    return run(machine)


def with_image(spec: str) -> str:
    """The usual provider, its cloud image booting ``spec`` instead of its
    marketplace image."""
    body = azure_provider("azure")
    return body[:body.index("        image-reference:")] + f"        {spec}\n" + \
        body[body.index("    pools:"):]


def node_parts(node_id: str) -> dict[str, list[str]]:
    name = f"np{node_id}"
    return {"virtualMachines": [name], "networkInterfaces": [f"{name}-nic"],
            "publicIPAddresses": [f"{name}-pip-IPv4"], "disks": [f"{name}-disk"]}


def test_a_node_is_a_vm_nic_address_and_disk_all_tagged(env, azure, zuul):
    start(env, pool_extra="        node-attributes: {team: ci}\n", label_extra="""\
            tags: {department: ci}
            dynamic-tags: {requestor: "{request.requestor}"}
            user-data: "#cloud-config\\n"
            custom-data: hello
            volume-size: 64
""")
    request_id = zuul.submit(["a"])
    request = zuul.wait_for_request(request_id, timeout=30)
    assert request["state"] == "fulfilled"
    [node_id] = request["nodes"]
    node = zuul.get_node(node_id)
    assert azure.everything() == node_parts(node_id)
    vm = azure.live()[f"np{node_id}"]
    ours = {"nodepool_node_id": node_id, "nodepool_pool_name": "main",
            "nodepool_provider_name": "azure"}
    assert vm["tags"] == {**ours, "department": "ci", "requestor": request["requestor"],
                          "nodepool_image_name": "ubuntu"}
    # Every part carries the node's tags, so each is found if it leaks.
    for kind in ("networkInterfaces", "publicIPAddresses", "disks"):
        [part] = azure.live(kind).values()
        assert ours.items() <= part["tags"].items(), kind
    props = vm["properties"]
    assert vm["sim"]["userData"] == base64.b64encode(b"#cloud-config\n").decode()
    assert props["osProfile"]["customData"] == base64.b64encode(b"hello").decode()
    assert props["osProfile"]["linuxConfiguration"]["ssh"]["publicKeys"] == [
        {"path": "/home/zuul/.ssh/authorized_keys", "keyData": KEY}]
    assert props["storageProfile"]["osDisk"]["diskSizeGB"] == 64
    assert props["storageProfile"]["imageReference"]["offer"] == \
        "0001-com-ubuntu-server-jammy"
    assert props["hardwareProfile"]["vmSize"] == "Standard_B2s"
    # The resource group was made where the provider said.
    assert azure.state.groups["azure-rg"]["location"] == "westeurope"
    # What Zuul reads.
    [pip] = azure.live("publicIPAddresses").values()
    [nic] = azure.live("networkInterfaces").values()
    private = nic["properties"]["ipConfigurations"][0]["properties"]["privateIPAddress"]
    assert node["interface_ip"] == node["public_ipv4"] == pip["properties"]["ipAddress"]
    assert node["private_ipv4"] == private
    assert (node["cloud"], node["region"]) == ("Azure", "westeurope")
    assert (node["username"], node["connection_type"], node["connection_port"]) == (
        "zuul", "ssh", 22)
    assert node["attributes"] == {"team": "ci"}
    assert node["resources"] == {"cores": 2, "ram": 4096, "instances": 1}
    zuul.run_job(request_id)
    wait_until(lambda: not azure.everything(), timeout=20,
               message="VM, NIC, address and disk deleted")


def test_internal_ip_image_id_and_a_generated_windows_password(env, azure, zuul):
    image = azure.add("images", "ci-windows", {"os": "windows"})
    body = "labels:\n  - name: a\n  - name: win\nproviders:" + azure_provider(
        "azure", pool_extra="        use-internal-ip: true\n        public-ipv4: false\n",
        image_extra=f"""      - name: windows
        image-id: {image['id']}
        username: nodepool
        generate-password: true
        connection-type: winrm
        shell-type: powershell
""", label_extra="""          - name: win
            cloud-image: windows
            hardware-profile:
              vm-size: Standard_D4s_v3
""").replace("    zuul-public-key: " + KEY + "\n", "")
    env.start(env.config(body))
    node = zuul.get_node(zuul.wait_for_request(zuul.submit(["win"]), timeout=30)[
        "nodes"][0])
    [vm] = azure.live().values()
    props = vm["properties"]
    assert props["storageProfile"]["imageReference"] == {"id": image["id"]}
    assert "linuxConfiguration" not in props["osProfile"]
    assert len(vm["sim"]["password"]) >= 24
    assert azure.live("publicIPAddresses") == {}  # public-ipv4: false
    assert node["interface_ip"] == node["private_ipv4"] and not node["public_ipv4"]
    assert (node["username"], node["connection_type"], node["connection_port"],
            node["shell_type"]) == ("nodepool", "winrm", 5986, "powershell")
    assert node["resources"] == {"cores": 4, "ram": 16384, "instances": 1}


@pytest.mark.parametrize("spec, expected", [
    ("shared-gallery-image: {gallery-name: ci-shared, name: fedora-40, version: 1.0.0}",
     {"sharedGalleryImageId": "/SharedGalleries/ci-shared/Images/fedora-40/Versions/1.0.0"}),
    ("community-gallery-image: {gallery-name: ci-community, name: debian-12}",
     {"communityGalleryImageId":
      "/CommunityGalleries/ci-community/Images/debian-12/Versions/latest"}),
    ("image-filter: {tags: {family: ci}}", "newest"),
], ids=["shared-gallery", "community-gallery", "image-filter"])
def test_what_a_cloud_image_boots(azure, spec, expected):
    azure.add("images", "ci-20240101", {"family": "ci"})
    newest = azure.add("images", "ci-20240301", {"family": "ci"})
    azure.add("images", "other-20250101", {"family": "other"})
    provider = provider_of(with_image(spec))
    adapter = drivers.make_adapter(provider)
    try:
        label = provider.pools["main"].labels["a"]
        assert adapter.label_ready(label)
        create(adapter, label)
        vm = azure.live()["np0000000001"]
        reference = vm["properties"]["storageProfile"]["imageReference"]
        assert reference == ({"id": newest["id"]} if expected == "newest" else expected)
    finally:
        adapter.stop()


def test_a_filter_matching_nothing_makes_the_label_not_ready(azure):
    provider = provider_of(with_image("image-filter: {name: nothing-like-this}"))
    adapter = drivers.make_adapter(provider)
    try:
        assert not adapter.label_ready(provider.pools["main"].labels["a"])
    finally:
        adapter.stop()


@pytest.mark.azure(cores=4)  # two Standard_B2s (2 vCPUs each)
def test_regional_core_quota_defers_requests_until_capacity_returns(env, azure, zuul):
    start(env)
    two_of_four_fit(env, zuul, lambda: len(azure.live()))
    # The launcher never asked ARM for what the quota could not hold.
    assert azure.calls()["PUT virtualMachines"] == 4


def test_a_quota_refusal_defers_the_request_and_leaves_nothing(env, azure, zuul):
    # launch-retries 1: a launch failure would fail the request at once.
    launcher = start(env, provider_extra="    launch-retries: 1\n")
    first = zuul.submit(["a"])
    [first_node] = zuul.wait_for_request(first, timeout=30)["nodes"]
    # The quota drops to what is in use; the launcher still believes the old
    # limit, so ARM refuses the next VM (409 OperationNotAllowed, quota).
    azure.set(cores=2)
    second = zuul.submit(["a"])
    wait_until(lambda: azure.calls().get("PUT virtualMachines", 0) >= 2, timeout=30,
               message="the refused VM")
    env.settle()
    assert zuul.get_request(second)["state"] in ("requested", "pending")
    assert launcher.managers["azure"].view.limits()["cores"] == 2  # read again
    # The refused attempt's NIC and address went with its aborted node.
    wait_until(lambda: azure.everything() == node_parts(first_node), timeout=20,
               message="only the first node's resources")
    zuul.run_job(first)
    assert zuul.wait_for_request(second, timeout=30)["state"] == "fulfilled"
    assert len(azure.live()) == 1


@pytest.mark.parametrize("at_once", [False, True],
                         ids=["AllocationFailed", "SkuNotAvailable"])
def test_capacity_refusals_are_quota_errors_by_vm_size(azure, adapter, at_once):
    azure.set(**{"sku_unavailable" if at_once else "capacity_failures": 1})
    label = adapter.provider.pools["main"].labels["a"]
    expected = "SkuNotAvailable" if at_once else "AllocationFailed"
    with pytest.raises(QuotaError, match=expected):
        create(adapter, label)
    assert adapter.capacity_key(label) == "Standard_B2s"


def test_after_a_capacity_refusal_the_launch_moves_on(env, azure, zuul):
    azure.set(capacity_failures=1)
    start(env, provider_extra="    launch-retries: 1\n")
    request = zuul.wait_for_request(zuul.submit(["a"]), timeout=30)
    assert request["state"] == "fulfilled"
    assert azure.calls()["PUT virtualMachines"] == 2
    # The refused VM (left Failed by ARM) went with its parts.
    wait_until(lambda: azure.everything() == node_parts(request["nodes"][0]),
               timeout=20, message="nothing left of the refused VM")


def test_throttling_and_an_expired_token_are_survived(env, azure, zuul):
    start(env)
    azure.set(throttle=2)
    azure.revoke_tokens()
    tokens = azure.calls()["token"]
    request = zuul.wait_for_request(zuul.submit(["a"]), timeout=30)
    assert request["state"] == "fulfilled"
    calls = azure.calls()
    # Each throttled call was retried; the revoked token was replaced once.
    assert calls["throttled"] == 2 and calls["token"] == tokens + 1


def test_a_failed_delete_is_retried(env, azure, zuul):
    start(env)
    request_id = zuul.submit(["a"])
    zuul.wait_for_request(request_id, timeout=30)
    azure.set(delete_failures=1)
    zuul.run_job(request_id)
    wait_until(lambda: not azure.everything(), timeout=30, message="all deleted")
    assert azure.calls()["DELETE virtualMachines"] == 2


def test_a_vm_that_never_finishes_provisioning_leaves_nothing(env, azure, zuul):
    azure.set(boot_hangs=1)
    start(env, provider_extra="    launch-timeout: 3\n    launch-retries: 2\n")
    request = zuul.wait_for_request(zuul.submit(["a"]), timeout=40)
    assert request["state"] == "fulfilled"
    assert azure.calls()["PUT virtualMachines"] == 2
    wait_until(lambda: azure.everything() == node_parts(request["nodes"][0]),
               timeout=20, message="nothing left of the timed-out attempt")


def test_leaked_resources_of_each_kind_are_removed_and_others_left(env, azure, zuul):
    ours = {"nodepool_provider_name": "azure", "nodepool_node_id": "0000009999",
            "nodepool_pool_name": "main"}
    for kind, name in (("virtualMachines", "np0000009999"),
                       ("networkInterfaces", "np0000009998-nic"),
                       ("publicIPAddresses", "np0000009997-pip-IPv4"),
                       ("disks", "np0000009996-disk")):
        azure.add(kind, name, ours, group="azure-rg")
    azure.add("images", "leaked-upload", {"nodepool_provider_name": "azure",
                                          "nodepool_build_id": "0000000042",
                                          "nodepool_upload_id": "0000000001"},
              group="azure-rg")
    azure.add("virtualMachines", "elsewhere", dict(ours, nodepool_provider_name="x"),
              group="azure-rg")
    azure.add("disks", "not-nodepool", {"owner": "someone"}, group="azure-rg")
    launcher = start(env)
    launcher.cleanup.wake.set()
    wait_until(lambda: azure.everything() == {"virtualMachines": ["elsewhere"],
                                              "disks": ["not-nodepool"]},
               timeout=30, message="every leaked resource deleted")
    # Our own live node is not a leak.
    [node_id] = zuul.wait_for_request(zuul.submit(["a"]), timeout=30)["nodes"]
    for _ in range(3):  # a leak goes on its second sighting: three passes
        launcher.cleanup.wake.set()
        time.sleep(0.4)
    env.settle()
    assert f"np{node_id}" in azure.live() and f"np{node_id}-disk" in azure.live("disks")


def test_paged_listings_and_vm_sizes(azure, adapter):
    azure.set(page_size=1)
    for number in range(3):
        azure.add("virtualMachines", f"other-{number}", group="azure-rg")
    found = {i.external_id: i for i in adapter.list_instances()}
    assert set(found) == {"other-0", "other-1", "other-2"}
    assert found["other-0"].resources == {"cores": 1, "ram": 1024, "instances": 1}
    assert dict(adapter.quota_limits())["cores"] == 25000
    label = adapter.provider.pools["main"].labels["a"]
    assert dict(adapter.quota_for_label(label)) == {"cores": 2, "ram": 4096,
                                                    "instances": 1}


def test_a_diskimage_is_uploaded_booted_and_deleted(azure, adapter, tmp_path):
    vhd = tmp_path / "image.vhd"
    data = b"\0" * (4 << 20) + b"boot sector".ljust(512, b"\0") + b"\0" * 1024
    vhd.write_bytes(data)
    tags = {"nodepool_provider_name": "azure", "nodepool_build_id": "0000000007",
            "nodepool_upload_id": "0000000001"}
    image_id = adapter.upload_image("debian-1700000000", str(vhd), "vhd", tags)
    image = azure.live("images")["debian-1700000000"]
    assert image["id"] == image_id and image["tags"] == tags
    assert image["sim"]["data"] == data
    assert azure.calls()["PUT page"] == 1  # the blank first 4 MiB not sent
    assert "disks" not in azure.everything()  # the upload disk went
    assert adapter.list_images() == [{"id": image_id, "name": "debian-1700000000",
                                      "properties": tags}]
    adapter.delete_image(image_id)
    assert azure.live("images") == {}


def test_a_label_of_a_diskimage_boots_its_upload(azure, adapter):
    body = azure_provider("azure").replace(
        "            cloud-image: ubuntu\n", "            diskimage: debian\n") + \
        "    diskimages:\n      - name: debian\n        username: debian\n"
    config = build_config(yaml.safe_load(
        "labels:\n  - name: a\ndiskimages:\n  - name: debian\nproviders:" + body))
    label = config.providers["azure"].pools["main"].labels["a"]
    image = azure.add("images", "debian-1", group="azure-rg")
    adapter.reconfigure(config.providers["azure"])
    create(adapter, label, image_id=image["id"])
    props = azure.live()["np0000000001"]["properties"]
    assert props["storageProfile"]["imageReference"] == {"id": image["id"]}
    assert props["osProfile"]["adminUsername"] == "debian"


def test_oidc_federation_gets_a_token(azure, tmp_path):
    from nodepool.drivers.azure.api import Credentials, TokenSource
    import requests
    token_file = tmp_path / "token"
    token_file.write_text(FEDERATED_TOKEN + "\n")
    credentials = Credentials(subscription_id=SUBSCRIPTION, tenant_id=TENANT,
                              client_id="nodepool-sim-client", aad_endpoint=azure.url,
                              arm_endpoint=azure.url + "/",
                              federated_token_file=str(token_file))
    with requests.Session() as session:
        assert azure.token_valid(TokenSource(credentials, session).get())
        token_file.write_text("someone else's token")
        with pytest.raises(drivers.base.DriverError, match="Invalid client"):
            TokenSource(credentials, session).get()


def test_without_readable_credentials_the_provider_is_unavailable(azure, tmp_path):
    body = azure_provider("azure").replace(
        "auth-path: ", f"auth-path: {tmp_path}/missing.json\n    x: ")
    body = "\n".join(line for line in body.splitlines() if not line.startswith("    x: "))
    with pytest.raises(drivers.DriverUnavailable, match="provider azure: cannot read "
                       "the Azure credentials"):
        drivers.make_adapter(provider_of(body))


def test_arm_requests_are_timed_in_statsd(env, azure, zuul, statsd):
    start(env)
    zuul.wait_for_request(zuul.submit(["a"]), timeout=30)
    assert statsd.wait_for(lambda keys: {"nodepool.task.azure.VirtualMachinesPut",
                                         "nodepool.task.azure.NetworkInterfacesPut",
                                         "nodepool.task.azure.OperationsGet",
                                         "nodepool.task.azure.LocationsList"} <= keys)


def test_the_builder_uploads_a_diskimage_the_launcher_boots(env, azure, store, zuul,
                                                            tmp_path):
    body = azure_provider("azure").replace(
        "            cloud-image: ubuntu\n", "            diskimage: debian\n") + \
        "    diskimages:\n      - name: debian\n        tags: {team: ci}\n"
    path, build, upload = built_and_uploaded(env, store, tmp_path, body, "azure")
    [image] = azure.live("images").values()
    assert image["id"] == upload.external_id and image["name"] == upload.external_name
    assert image["tags"] == {"nodepool_build_id": build.id, "nodepool_upload_id": upload.id,
                             "nodepool_provider_name": "azure", "team": "ci"}
    assert "disks" not in azure.everything()
    env.start(path)
    node = zuul.get_node(zuul.wait_for_request(zuul.submit(["a"]), timeout=30)["nodes"][0])
    assert node["username"] == "ci"
    [vm] = azure.live().values()
    assert vm["properties"]["storageProfile"]["imageReference"] == {"id": image["id"]}
    assert vm["properties"]["osProfile"]["adminUsername"] == "ci"
