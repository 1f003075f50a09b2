"""The gce driver's configuration: the example loads into the typed config,
upstream's documented example and defaults hold, and bad input names its key
path."""

import copy
from pathlib import Path

import pytest
import yaml

from config_files import load, problems_of
from nodepool import drivers
from nodepool.drivers import capabilities

EXAMPLE = Path(__file__).resolve().parents[2] / "doc" / "examples" / "gce.yaml"

# Upstream's documented example provider, as its documentation shows it.
UPSTREAM = {"labels": [{"name": "debian-stretch"}], "providers": [{
    "name": "gce-uscentral1", "driver": "gce", "project": "nodepool-123456",
    "region": "us-central1", "zone": "us-central1-a",
    "cloud-images": [{"name": "debian-stretch", "image-project": "debian-cloud",
                      "image-family": "debian-9", "username": "zuul",
                      "key": "ssh-rsa ..."}],
    "pools": [{"name": "main", "max-servers": 8, "labels": [{
        "name": "debian-stretch", "instance-type": "f1-micro",
        "cloud-image": "debian-stretch", "volume-type": "standard",
        "volume-size": 10}]}]}]}


def example() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def test_the_example_is_built_as_documented(tmp_path):
    config = load(tmp_path, example())
    provider = config.providers["gce-us-central1"]
    caps = capabilities(provider)
    assert caps.launches_instances and caps.reports_quota and not caps.manages_images
    assert (provider.project, provider.region, provider.zone, provider.rate) == (
        "example-ci-123456", "us-central1", "us-central1-a", 2.0)
    assert (provider.boot_timeout, provider.launch_retries) == (120, 3)
    debian = provider.cloud_images["debian-bookworm"]
    assert (debian.image_project, debian.image_family, debian.image_id) == (
        "debian-cloud", "debian-12", None)
    assert debian.username == "zuul" and debian.key.startswith("ssh-ed25519 ")
    assert provider.cloud_images["ubuntu-jammy"].python_path == "/usr/bin/python3"
    windows = provider.cloud_images["windows-2022"]
    assert (windows.image_id, windows.connection_type, windows.connection_port,
            windows.shell_type) == ("ci-windows-2022-v20240301", "winrm", 5986,
                                    "powershell")
    main, private = provider.pools["main"], provider.pools["private"]
    assert (main.max_servers, main.max_cores, main.max_ram) == (20, 64, 262144)
    assert main.node_attributes == {"site": "gce"}
    assert (main.use_internal_ip, main.host_key_checking) == (False, True)
    assert (private.use_internal_ip, private.host_key_checking) == (True, False)
    large = main.labels["debian-bookworm-large"]
    assert (large.cloud_image, large.instance_type, large.volume_type,
            large.volume_size) == ("debian-bookworm", "n2-standard-8", "pd-ssd", 80)
    windows_label = private.labels["windows-2022"]
    assert windows_label.use_internal_ip and not windows_label.host_key_checking
    assert windows_label.pool_name == "private"


def test_upstreams_documented_example_and_defaults(tmp_path):
    config = load(tmp_path, UPSTREAM)
    provider = config.providers["gce-uscentral1"]
    assert (provider.rate, provider.boot_timeout, provider.launch_timeout,
            provider.launch_retries) == (2.0, 60, 3600, 3)
    image = provider.cloud_images["debian-stretch"]
    assert (image.python_path, image.connection_type, image.connection_port,
            image.shell_type) == ("auto", "ssh", 22, None)
    pool = provider.pools["main"]
    assert (pool.max_servers, pool.use_internal_ip, pool.host_key_checking,
            pool.network, pool.subnetwork) == (
        8, False, True, "global/networks/default", None)
    label = pool.labels["debian-stretch"]
    assert (label.volume_type, label.volume_size) == ("standard", 10)
    # The default disk when the label gives none, as upstream's.
    data = copy.deepcopy(UPSTREAM)
    del data["providers"][0]["pools"][0]["labels"][0]["volume-type"]
    del data["providers"][0]["pools"][0]["labels"][0]["volume-size"]
    label = load(tmp_path, data).providers["gce-uscentral1"].pools["main"].labels[
        "debian-stretch"]
    assert (label.volume_type, label.volume_size) == ("pd-standard", 10)


def test_upstreams_other_keys_load(tmp_path):
    data = copy.deepcopy(UPSTREAM)
    data["providers"][0].update({"rate-limit": 1, "launch-timeout": 900,
                                 "max-concurrency": 4, "priority": 5})
    data["providers"][0]["cloud-images"][0].update({"shell-type": "csh",
                                                    "python-path": "/usr/bin/python3"})
    provider = load(tmp_path, data).providers["gce-uscentral1"]
    assert (provider.launch_timeout, provider.max_concurrency, provider.priority) == (
        900, 4, 5)


def test_connection_settings_need_a_new_adapter(tmp_path):
    provider = load(tmp_path, UPSTREAM).providers["gce-uscentral1"]
    changed = copy.deepcopy(UPSTREAM)
    changed["providers"][0]["zone"] = "us-central1-b"
    other = load(tmp_path, changed).providers["gce-uscentral1"]
    assert drivers.connection_key(provider) != drivers.connection_key(other)
    changed = copy.deepcopy(UPSTREAM)
    changed["providers"][0]["pools"][0]["max-servers"] = 2
    other = load(tmp_path, changed).providers["gce-uscentral1"]
    assert drivers.connection_key(provider) == drivers.connection_key(other)


def broken(change) -> dict:
    data = copy.deepcopy(example())
    change(data["providers"][0])
    return data


@pytest.mark.parametrize("change, problem", [
    (lambda p: p.pop("project"), "providers[0].project: required key is missing"),
    (lambda p: p.pop("zone"), "providers[0].zone: required key is missing"),
    (lambda p: p.pop("region"), "providers[0].region: required key is missing"),
    (lambda p: p.update({"zone": "europe-west4-a"}),
     "providers[0].zone: zone 'europe-west4-a' is not in region 'us-central1'"),
    (lambda p: p["pools"][0]["labels"][0].pop("instance-type"),
     "providers[0].pools[0].labels[0].instance-type: required key is missing"),
    (lambda p: p["pools"][0]["labels"][0].pop("cloud-image"),
     "providers[0].pools[0].labels[0].cloud-image: required key is missing"),
    (lambda p: p["pools"][0]["labels"][0].update({"cloud-image": "centos"}),
     "providers[0].pools[0].labels[0].cloud-image: unknown cloud-image 'centos' (not "
     "in this provider's cloud-images)"),
    (lambda p: p["pools"][0]["labels"][0].update({"diskimage": "debian"}),
     "providers[0].pools[0].labels[0].diskimage: unknown key"),
    (lambda p: p["pools"][0]["labels"][0].update({"volume-size": "big"}),
     "providers[0].pools[0].labels[0].volume-size: expected an integer, got"),
    (lambda p: p["pools"][0]["labels"][0].update({"volume-size": 0}),
     "providers[0].pools[0].labels[0].volume-size: must be a positive number of GB"),
    (lambda p: p["pools"][0].update({"use-internal-ip": "yes"}),
     "providers[0].pools[0].use-internal-ip: expected true or false, got"),
    (lambda p: p["pools"][0]["labels"][0].update({"name": "nope"}),
     "providers[0].pools[0].labels[0].name: label 'nope' is not defined in the "
     "top-level labels"),
    (lambda p: p["cloud-images"][0].pop("image-family"),
     "providers[0].cloud-images[0]: either 'image-id' or 'image-family' (with "
     "'image-project') is required"),
    (lambda p: p["cloud-images"][0].pop("image-project"),
     "providers[0].cloud-images[0].image-family: needs 'image-project'"),
    (lambda p: p["cloud-images"][0].pop("username"),
     "providers[0].cloud-images[0].key: needs 'username'"),
    (lambda p: p["cloud-images"][2].update({"connection-port": 70000}),
     "providers[0].cloud-images[2].connection-port: must be a port number"),
    (lambda p: p.update({"rate": 0}),
     "providers[0].rate: must be a positive number of operations per second, got 0"),
    (lambda p: p.update({"diskimages": [{"name": "debian"}]}),
     "providers[0].diskimages: unknown key"),
    (lambda p: p.update({"region-name": "us-central1"}),
     "providers[0].region-name: unknown key"),
])
def test_bad_input_names_its_key_path(tmp_path, change, problem):
    found = problems_of(tmp_path, broken(change))
    assert any(p.startswith(problem) for p in found), found
