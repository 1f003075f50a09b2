"""The aws driver's configuration: upstream's example format loads into the
typed config, defaults are upstream's, and bad input names its key path."""

import copy
from pathlib import Path

import pytest
import yaml

from config_files import load, problems_of
from nodepool.drivers import capabilities

EXAMPLE = Path(__file__).resolve().parents[2] / "doc" / "examples" / "aws.yaml"


def example() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def test_the_example_is_built_as_documented(tmp_path):
    config = load(tmp_path, example())
    provider = config.providers["ec2-us-west-2"]
    assert capabilities(provider).manages_images and capabilities(provider).reports_quota
    assert (provider.region_name, provider.profile_name, provider.rate) == (
        "us-west-2", "nodepool", 2.0)
    assert provider.object_storage_bucket == "example-nodepool-images"
    assert provider.image_type == "raw" and provider.image_import_timeout == 3600
    assert config.diskimages["debian-bookworm"].formats == ["raw"]
    ubuntu = provider.cloud_images["ubuntu-jammy"]
    assert ubuntu.image_filters[0] == {
        "Name": "name", "Values": ["ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-"
                                   "server-*"]}
    assert provider.cloud_images["windows-2022"].connection_port == 5986
    image = provider.diskimages["debian-bookworm"]
    assert (image.import_method, image.volume_size, image.imds_support) == (
        "snapshot", 40, "v2.0")
    assert image.meta == {"team": "ci"}
    main, spot = provider.pools["main"], provider.pools["spot"]
    # Provider-level limits are the pools' defaults; a pool's own win.
    assert (main.max_cores, spot.max_cores) == (256, 64)
    assert main.max_resources == {"L-1216C47A": 256}
    assert spot.availability_zones == ["us-west-2a"]
    label = main.labels["ubuntu-jammy"]
    assert label.instance_properties == {"team": "ci"}
    assert label.dynamic_instance_properties == {"zuul-tenant": "{request.tenant_name}"}
    assert label.iam_instance_profile == {"name": "nodepool-node"}
    assert (label.subnet_id, label.security_group_id) == (
        "subnet-0123456789abcdef0", "sg-0123456789abcdef0")
    fleet = spot.labels["ubuntu-spot-fleet"]
    assert fleet.fleet.instance_types == ["m6i.large", "m6a.large", "m5.large"]
    assert fleet.use_spot and fleet.availability_zone == "us-west-2a"


def test_upstream_defaults(tmp_path):
    config = load(tmp_path, {"labels": [{"name": "a"}], "providers": [{
        "name": "ec2", "driver": "aws", "region-name": "us-east-1",
        "cloud-images": [{"name": "u", "image-id": "ami-1", "username": "ubuntu"}],
        "pools": [{"name": "main", "labels": [{
            "name": "a", "cloud-image": "u", "instance-type": "t3.small",
            "key-name": "zuul"}]}]}]})
    provider = config.providers["ec2"]
    assert (provider.rate, provider.boot_timeout, provider.launch_timeout,
            provider.launch_retries, provider.image_type) == (2.0, 180, 3600, 3, "raw")
    assert provider.image_import_timeout is None
    pool = provider.pools["main"]
    assert (pool.public_ipv4, pool.public_ipv6, pool.use_internal_ip,
            pool.host_key_checking, pool.max_servers) == (True, False, False, True, None)
    label = pool.labels["a"]
    assert (label.use_spot, label.dedicated_host, label.imdsv2) == (False, False, None)
    assert provider.cloud_images["u"].python_path == "auto"


def broken(change) -> dict:
    data = copy.deepcopy(example())
    change(data["providers"][0])
    return data


@pytest.mark.parametrize("change, problem", [
    (lambda p: p["pools"][0]["labels"][0].pop("key-name"),
     "providers[0].pools[0].labels[0].key-name: required key is missing"),
    (lambda p: p.pop("region-name"), "providers[0].region-name: required key is missing"),
    (lambda p: p["diskimages"][0].update({"import-method": "ebs"}),
     "providers[0].diskimages[0].import-method: expected one of snapshot, image; "
     "got 'ebs'"),
    (lambda p: p.update({"image-format": "qcow2"}),
     "providers[0].image-format: expected one of ova, vhd, vhdx, vmdk, raw; got 'qcow2'"),
    (lambda p: p["cloud-images"][0].pop("username"),
     "providers[0].cloud-images[0].username: required key is missing"),
    (lambda p: p["pools"][0]["labels"][0].update({"fleet": {
        "instance-types": ["t3.small"], "allocation-strategy": "prioritized"}}),
     "providers[0].pools[0].labels[0]: exactly one of 'instance-type' or 'fleet' is "
     "required"),
    (lambda p: p["pools"][1]["labels"][0]["fleet"].update({"allocation-strategy": "x"}),
     "providers[0].pools[1].labels[0].fleet.allocation-strategy: expected one of "
     "prioritized, price-capacity-optimized, capacity-optimized, diversified, "
     "lowest-price; got 'x'"),
    (lambda p: p["pools"][1]["labels"][0].update({"dedicated-host": True}),
     "providers[0].pools[1].labels[0].dedicated-host: spot instances cannot run on "
     "dedicated hosts (use-spot is set)"),
    (lambda p: p["pools"][0]["labels"][0].update({"dedicated-host": True}),
     "providers[0].pools[0].labels[0].dedicated-host: needs the pool's "
     "availability-zone"),
    (lambda p: p["pools"][0]["labels"][0].update({"imdsv2": "always"}),
     "providers[0].pools[0].labels[0].imdsv2: expected one of required, optional; "
     "got 'always'"),
    (lambda p: p.pop("object-storage"),
     "providers[0].object-storage: required to upload diskimages (the bucket images "
     "are imported from)"),
    (lambda p: p["diskimages"][0].update({"import-method": "image"}),
     "providers[0].diskimages[0].imds-support: v2.0 needs import-method snapshot (an "
     "image import cannot set it)"),
    (lambda p: p.update({"rate": 0}),
     "providers[0].rate: must be a positive number of operations per second, got 0"),
])
def test_bad_input_names_its_key_path(tmp_path, change, problem):
    assert problem in problems_of(tmp_path, broken(change))
