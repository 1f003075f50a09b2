"""The ibmvpc driver's configuration: the example loads into the typed
config, upstream's keys and defaults hold, and bad input names its key path."""

import copy
from pathlib import Path

import pytest
import yaml

from config_files import load, problems_of
from nodepool import drivers
from nodepool.drivers import capabilities
from nodepool.drivers.ibmvpc.naming import metadata

EXAMPLE = Path(__file__).resolve().parents[2] / "doc" / "examples" / "ibmvpc.yaml"

# A provider with only what upstream requires.
MINIMAL = {"labels": [{"name": "focal"}], "providers": [{
    "name": "ibmvpc-us-south", "driver": "ibmvpc", "vpc": "nodepool",
    "region": "us-south", "zone": "us-south-1", "subnet": "sn-nodepool",
    "cloud-images": [{"name": "bionic", "username": "zuul", "keys": ["zuul-ssh-key"],
                      "image-filter": {"operating-system": {"version": "18-04"}}}],
    "pools": [{"name": "main", "max-servers": 10, "labels": [{
        "name": "focal", "cloud-image": "bionic", "profile": "cx2-2x4"}]}]}]}


def example() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def test_the_example_is_built_as_documented(tmp_path):
    config = load(tmp_path, example())
    provider = config.providers["ibm-us-south"]
    caps = capabilities(provider)
    assert caps.launches_instances and caps.reports_quota and caps.manages_images
    assert (provider.region, provider.vpc, provider.rate, provider.boot_timeout,
            provider.credentials_file) == (
        "us-south", "nodepool", 2.0, 240, "/etc/nodepool/ibm-credentials.env")
    assert provider.quota == {"instances": 50, "cores": 200, "ram": 819200}
    assert provider.object_storage["bucket-name"] == "nodepool-images"
    assert provider.image_type == "qcow2" and config.diskimages[
        "debian-bookworm"].formats == ["qcow2"]
    ubuntu = provider.cloud_images["ubuntu-jammy"]
    assert ubuntu.keys == ["zuul"] and ubuntu.python_path == "/usr/bin/python3"
    assert ubuntu.image_filter["operating-system"]["architecture"] == "amd64"
    assert provider.cloud_images["ubuntu-jammy-pinned"].image_id.startswith("r006-")
    debian = provider.diskimages["debian-bookworm"]
    assert (debian.operating_system, debian.username) == ("debian-12-amd64", "debian")
    main, private = provider.pools["main"], provider.pools["private"]
    assert (main.zone, main.subnet, main.public_ipv4, main.max_cores,
            main.node_attributes) == ("us-south-1", "nodepool-us-south-1", True, 64,
                                      {"site": "ibm"})
    assert (private.zone, private.subnet, private.public_ipv4,
            private.use_internal_ip, private.host_key_checking) == (
        "us-south-2", "nodepool-us-south-2", False, True, False)
    debian_label = main.labels["debian-bookworm"]
    assert (debian_label.diskimage, debian_label.profile, debian_label.zone) == (
        "debian-bookworm", "bx2-2x8", "us-south-1")
    assert debian_label.user_data.startswith("#cloud-config\n")
    large = private.labels["ubuntu-jammy-large"]
    assert (large.use_internal_ip, large.host_key_checking, large.pool_name) == (
        True, False, "private")


def test_upstreams_keys_and_defaults(tmp_path):
    provider = load(tmp_path, MINIMAL).providers["ibmvpc-us-south"]
    assert (provider.rate, provider.boot_timeout, provider.launch_timeout,
            provider.launch_retries, provider.credentials_file) == (1.0, 120, 3600, 3, None)
    assert provider.quota == {} and provider.object_storage is None
    image = provider.cloud_images["bionic"]
    assert (image.python_path, image.connection_type, image.connection_port) == (
        "auto", "ssh", 22)
    pool = provider.pools["main"]
    # Upstream's defaults: no floating IP, the public address if any, keys checked.
    assert (pool.public_ipv4, pool.use_internal_ip, pool.host_key_checking) == (
        False, False, True)
    label = pool.labels["focal"]
    assert (label.zone, label.subnet, label.user_data) == ("us-south-1", "sn-nodepool",
                                                           None)


def test_connection_settings_need_a_new_adapter(tmp_path):
    provider = load(tmp_path, MINIMAL).providers["ibmvpc-us-south"]
    changed = copy.deepcopy(MINIMAL)
    changed["providers"][0]["vpc"] = "elsewhere"
    other = load(tmp_path, changed).providers["ibmvpc-us-south"]
    assert drivers.connection_key(provider) != drivers.connection_key(other)
    changed = copy.deepcopy(MINIMAL)
    changed["providers"][0]["pools"][0]["max-servers"] = 2
    other = load(tmp_path, changed).providers["ibmvpc-us-south"]
    assert drivers.connection_key(provider) == drivers.connection_key(other)


def test_names_carry_the_metadata():
    assert metadata("np0000000042", "np_ibm_main") == {
        "nodepool_node_id": "0000000042", "nodepool_provider_name": "ibm",
        "nodepool_pool_name": "main"}
    assert metadata("npimage0000000007-0000000001.qcow2", "npimages_ibm") == {
        "nodepool_build_id": "0000000007", "nodepool_upload_id": "0000000001",
        "nodepool_provider_name": "ibm"}
    # Someone else's resource group: no provider, so never a leak of ours.
    assert metadata("np0000000042", "Default") == {"nodepool_node_id": "0000000042"}


def broken(change) -> dict:
    data = copy.deepcopy(example())
    change(data["providers"][0])
    return data


@pytest.mark.parametrize("change, problem", [
    (lambda p: p.pop("vpc"), "providers[0].vpc: required key is missing"),
    (lambda p: p.pop("region"), "providers[0].region: required key is missing"),
    (lambda p: p.update({"name": "ibm_south"}), "providers[0].name: may not contain '_'"),
    (lambda p: p["pools"][0].update({"name": "my_pool"}),
     "providers[0].pools[0].name: may not contain '_'"),
    (lambda p: (p.pop("zone"), p["pools"][0].pop("zone", None)),
     "providers[0].pools[0]: 'zone' is required"),
    (lambda p: p.pop("subnet"), "providers[0].pools[0]: 'subnet' is required"),
    (lambda p: p.update({"location": "us-south"}), "providers[0].location: unknown key"),
    (lambda p: p["quota"].update({"volumes": 3}), "providers[0].quota.volumes: unknown key"),
    (lambda p: p["object-storage"].pop("bucket-name"),
     "providers[0].object-storage.bucket-name: required key is missing"),
    (lambda p: p.pop("object-storage"), "providers[0].diskimages: uploads need "
     "'object-storage'"),
    (lambda p: p["pools"][0].update({"network": "x"}),
     "providers[0].pools[0].network: unknown key"),
    (lambda p: p["pools"][0]["labels"][0].update({"instance-type": "cx2-2x4"}),
     "providers[0].pools[0].labels[0].instance-type: unknown key"),
    (lambda p: p["pools"][0]["labels"][0].pop("profile"),
     "providers[0].pools[0].labels[0].profile: required key is missing"),
    (lambda p: p["pools"][0]["labels"][0].pop("cloud-image"),
     "providers[0].pools[0].labels[0]: exactly one of 'diskimage' or 'cloud-image'"),
    (lambda p: p["pools"][0]["labels"][0].update({"cloud-image": "centos"}),
     "providers[0].pools[0].labels[0].cloud-image: unknown cloud-image 'centos'"),
    (lambda p: p["cloud-images"][1].update({"image-name": "x"}),
     "providers[0].cloud-images[1]: exactly one of 'image-href', 'image-id'"),
    (lambda p: p["cloud-images"][0].pop("image-filter"),
     "providers[0].cloud-images[0]: exactly one of"),
    (lambda p: p["cloud-images"][0]["image-filter"]["operating-system"].update(
        {"bits": 64}),
     "providers[0].cloud-images[0].image-filter.operating-system.bits: unknown key"),
    (lambda p: p["cloud-images"][0].pop("username"),
     "providers[0].cloud-images[0].username: required key is missing"),
    (lambda p: p["diskimages"][0].pop("operating-system"),
     "providers[0].diskimages[0].operating-system: required key is missing"),
    (lambda p: p["diskimages"][0].update({"name": "centos"}),
     "providers[0].diskimages[0].name: unknown diskimage 'centos'"),
    (lambda p: p.update({"rate": 0}),
     "providers[0].rate: must be a positive number of operations per second, got 0"),
])
def test_bad_input_names_its_key_path(tmp_path, change, problem):
    found = problems_of(tmp_path, broken(change))
    assert any(p.startswith(problem) for p in found), found
