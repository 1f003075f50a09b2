"""The azure driver's configuration: the example loads into the typed config,
upstream's documented example and defaults hold, and bad input names its key
path."""

import base64
import copy
from pathlib import Path

import pytest
import yaml

from config_files import load, problems_of
from nodepool import drivers
from nodepool.drivers import capabilities

EXAMPLE = Path(__file__).resolve().parents[2] / "doc" / "examples" / "azure.yaml"

# Upstream's documented example provider, as its documentation shows it.
UPSTREAM = {"labels": [{"name": "bionic"}], "providers": [{
    "name": "azure-central-us", "driver": "azure", "location": "centralus",
    "resource-group": "nodepool", "resource-group-location": "centralus",
    "auth-path": "/path/to/nodepoolCreds.json", "network": "nodepool",
    "cloud-images": [{"name": "bionic", "username": "zuul", "key": "ssh-rsa AAAA...",
                      "image-reference": {"sku": "18.04-LTS", "publisher": "Canonical",
                                          "version": "latest", "offer": "UbuntuServer"}}],
    "pools": [{"name": "main", "max-servers": 10, "labels": [{
        "name": "bionic", "cloud-image": "bionic",
        "hardware-profile": {"vm-size": "Standard_D1_v2"},
        "tags": {"department": "R&D", "purpose": "CI/CD"}}]}]}]}


def example() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def test_the_example_is_built_as_documented(tmp_path):
    config = load(tmp_path, example())
    provider = config.providers["azure-westeurope"]
    caps = capabilities(provider)
    assert caps.launches_instances and caps.reports_quota and caps.manages_images
    assert (provider.location, provider.resource_group, provider.resource_group_location,
            provider.rate, provider.boot_timeout) == (
        "westeurope", "nodepool", "westeurope", 2.0, 180)
    assert provider.network == {"resource-group": "ci-network", "network": "ci-vnet",
                                "subnet": "nodes"}
    assert provider.image_type == "vhd" and config.diskimages[
        "debian-bookworm"].formats == ["vhd"]
    ubuntu = provider.cloud_images["ubuntu-jammy"]
    assert ubuntu.image_reference["sku"] == "22_04-lts-gen2"
    assert ubuntu.key.startswith("ssh-ed25519 ")  # zuul-public-key
    windows = provider.cloud_images["windows-2022"]
    assert (windows.generate_password, windows.connection_type, windows.connection_port,
            windows.shared_gallery_image["name"]) == (True, "winrm", 5986, "windows-2022")
    debian = provider.diskimages["debian-bookworm"]
    assert (debian.username, debian.meta) == ("debian", {"team": "ci"})
    main, private = provider.pools["main"], provider.pools["private"]
    assert (main.max_servers, main.max_cores, main.node_attributes) == (
        20, 64, {"site": "azure"})
    assert (main.public_ipv4, main.ipv4, main.ipv6) == (True, True, False)
    assert (private.public_ipv4, private.ipv4, private.use_internal_ip,
            private.host_key_checking) == (False, True, True, False)
    jammy = main.labels["ubuntu-jammy"]
    assert (jammy.vm_size, jammy.instance_properties,
            jammy.dynamic_instance_properties) == (
        "Standard_B2s", {"department": "ci"}, {"tenant": "{request.tenant_name}"})
    large = main.labels["ubuntu-jammy-large"]
    assert large.volume_size == 100
    assert base64.b64decode(large.user_data).startswith(b"#cloud-config\n")
    assert main.labels["debian-bookworm"].diskimage == "debian-bookworm"
    assert private.labels["windows-2022"].use_internal_ip


def test_upstreams_documented_example_and_defaults(tmp_path):
    provider = load(tmp_path, UPSTREAM).providers["azure-central-us"]
    assert (provider.rate, provider.boot_timeout, provider.launch_timeout,
            provider.launch_retries) == (1.0, 120, 3600, 3)
    assert provider.network == {"network": "nodepool"}
    image = provider.cloud_images["bionic"]
    assert (image.python_path, image.connection_type, image.connection_port,
            image.key) == ("auto", "ssh", 22, "ssh-rsa AAAA...")
    pool = provider.pools["main"]
    assert (pool.public_ipv4, pool.public_ipv6, pool.ipv4, pool.ipv6,
            pool.use_internal_ip, pool.host_key_checking) == (
        True, False, True, False, False, True)
    label = pool.labels["bionic"]
    assert label.instance_properties == {"department": "R&D", "purpose": "CI/CD"}
    assert label.user_data is None and label.volume_size is None


def test_ipv6_and_oidc_federation(tmp_path):
    data = copy.deepcopy(UPSTREAM)
    provider_raw = data["providers"][0]
    del provider_raw["auth-path"]
    provider_raw.update({"subscription-id": "sub", "tenant-id": "tenant",
                         "client-id": "client", "federated-token-file": "/run/token",
                         "public-ipv6": True, "ipv4": False, "public-ipv4": False})
    provider = load(tmp_path, data).providers["azure-central-us"]
    assert (provider.subscription_id, provider.federated_token_file) == (
        "sub", "/run/token")
    pool = provider.pools["main"]
    # A public IPv6 address needs a private one; no IPv4 at all asked for.
    assert (pool.ipv4, pool.ipv6, pool.public_ipv4, pool.public_ipv6) == (
        False, True, False, True)


def test_connection_settings_need_a_new_adapter(tmp_path):
    provider = load(tmp_path, UPSTREAM).providers["azure-central-us"]
    changed = copy.deepcopy(UPSTREAM)
    changed["providers"][0]["resource-group"] = "elsewhere"
    other = load(tmp_path, changed).providers["azure-central-us"]
    assert drivers.connection_key(provider) != drivers.connection_key(other)
    changed = copy.deepcopy(UPSTREAM)
    changed["providers"][0]["pools"][0]["max-servers"] = 2
    other = load(tmp_path, changed).providers["azure-central-us"]
    assert drivers.connection_key(provider) == drivers.connection_key(other)


def broken(change) -> dict:
    data = copy.deepcopy(example())
    change(data["providers"][0])
    return data


@pytest.mark.parametrize("change, problem", [
    (lambda p: p.pop("location"), "providers[0].location: required key is missing"),
    (lambda p: p.pop("resource-group-location"),
     "providers[0].resource-group-location: required key is missing"),
    (lambda p: p.pop("auth-path"), "providers[0]: 'auth-path' (a service principal's "
     "credentials file) or OIDC federation"),
    (lambda p: p.update({"tenant-id": "t"}),
     "providers[0].tenant-id: either 'auth-path' or the OIDC federation keys"),
    (lambda p: (p.pop("auth-path"), p.update({"client-id": "c"})),
     "providers[0].subscription-id: required with OIDC federation"),
    (lambda p: p.pop("network"), "providers[0]: either 'subnet-id' or 'network'"),
    (lambda p: p.update({"network": {"vnet": "x"}}),
     "providers[0].network: expected a network name or a mapping"),
    (lambda p: p.update({"region-name": "westeurope"}),
     "providers[0].region-name: unknown key"),
    (lambda p: p["pools"][0].update({"subnet-id": "x"}),
     "providers[0].pools[0].subnet-id: unknown key"),
    (lambda p: p["pools"][0]["labels"][0].update({"instance-type": "t3.small"}),
     "providers[0].pools[0].labels[0].instance-type: unknown key"),
    (lambda p: p["pools"][0]["labels"][0]["hardware-profile"].update({"cores": 2}),
     "providers[0].pools[0].labels[0].hardware-profile.cores: unknown key"),
    (lambda p: p["pools"][0]["labels"][0].pop("hardware-profile"),
     "providers[0].pools[0].labels[0].hardware-profile: required key is missing"),
    (lambda p: p["pools"][0]["labels"][0].pop("cloud-image"),
     "providers[0].pools[0].labels[0]: exactly one of 'diskimage' or 'cloud-image'"),
    (lambda p: p["pools"][0]["labels"][0].update({"cloud-image": "centos"}),
     "providers[0].pools[0].labels[0].cloud-image: unknown cloud-image 'centos'"),
    (lambda p: p["pools"][0]["labels"][1].update({"volume-size": 0}),
     "providers[0].pools[0].labels[1].volume-size: must be a positive number of GB"),
    (lambda p: p["pools"][0]["labels"][0].update({"name": "nope"}),
     "providers[0].pools[0].labels[0].name: label 'nope' is not defined"),
    (lambda p: p["cloud-images"][0].update({"image-id": "/subscriptions/x"}),
     "providers[0].cloud-images[0]: exactly one of 'image-reference', 'image-id'"),
    (lambda p: p["cloud-images"][0].pop("image-reference"),
     "providers[0].cloud-images[0]: exactly one of"),
    (lambda p: p["cloud-images"][0]["image-reference"].pop("sku"),
     "providers[0].cloud-images[0].image-reference.sku: required key is missing"),
    (lambda p: p["cloud-images"][0].update({"image-filter": {"family": "x"}}),
     "providers[0].cloud-images[0].image-filter.family: unknown key"),
    (lambda p: p["cloud-images"][1]["shared-gallery-image"].pop("gallery-name"),
     "providers[0].cloud-images[1].shared-gallery-image.gallery-name: required key"),
    (lambda p: p["cloud-images"][0].pop("username"),
     "providers[0].cloud-images[0].username: required key is missing"),
    (lambda p: p["diskimages"][0].update({"password": "x"}),
     "providers[0].diskimages[0].password: unknown key"),
    (lambda p: p["diskimages"][0].update({"name": "centos"}),
     "providers[0].diskimages[0].name: unknown diskimage 'centos'"),
    (lambda p: p.update({"rate": 0}),
     "providers[0].rate: must be a positive number of operations per second, got 0"),
])
def test_bad_input_names_its_key_path(tmp_path, change, problem):
    found = problems_of(tmp_path, broken(change))
    assert any(p.startswith(problem) for p in found), found
