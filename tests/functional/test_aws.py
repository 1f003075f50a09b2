"""The aws driver end to end: a real launcher (and builder) against real
ZooKeeper, boto3 over HTTP against moto's server (the ``aws`` fixture; what
moto lacks is filled in around the server, see nodepool.testing.aws_sim).

Nothing connects to the addresses moto hands out (they are not this
machine's): every pool here has host-key-checking off.
"""

import os

import pytest

from conftest import wait_until
from launcher_fixtures import aws_provider, two_of_four_fit
from nodepool import drivers
from nodepool.config.loader import build_config
from nodepool.drivers.base import QuotaError
from nodepool.testing.aws_sim import BUCKET, DEBIAN_AMI, UBUNTU_AMI
from nodepool.zk.records import BuildState, UploadState

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DIB = os.path.join(ROOT, "tools", "fake-image-create")
STANDARD = "L-1216C47A"  # EC2's on-demand standard-family vCPU quota
OBJECT_STORAGE = f"    object-storage:\n      bucket-name: {BUCKET}\n"


def start(env, pool_extra="", label_extra="", provider_extra="", labels=("a",),
          extra_providers=""):
    body = "labels:\n" + "".join(f"  - name: {n}\n" for n in labels) + \
        "providers:" + aws_provider("ec2", pool_extra, label_extra, provider_extra) + \
        extra_providers
    return env.start(env.config(body))


def live_instances(aws):
    pages = aws.client("ec2").get_paginator("describe_instances").paginate(Filters=[{
        "Name": "instance-state-name", "Values": ["pending", "running"]}])
    return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]


def tags(item) -> dict:
    return {t["Key"]: t["Value"] for t in item.get("Tags") or []}


def our_images(aws):
    return aws.client("ec2").describe_images(Owners=["self"])["Images"]


def our_snapshots(aws):
    return [s for s in aws.client("ec2").describe_snapshots(OwnerIds=["self"])[
        "Snapshots"] if s["OwnerId"] == "123456789012"]


def minimal_provider(**keys):
    """A one-label provider, built as the launcher builds it, with ``keys``
    (as in YAML, dashes written as underscores) added."""
    raw = {"name": "ec2", "driver": "aws", "region-name": "us-east-1",
           "cloud-images": [{"name": "u", "image-id": UBUNTU_AMI, "username": "u"}],
           "pools": [{"name": "main", "labels": [{
               "name": "a", "cloud-image": "u", "instance-type": "t3.small",
               "key-name": "zuul"}]}]}
    raw.update({k.replace("_", "-"): v for k, v in keys.items()})
    labels = [{"name": label["name"]} for pool in raw["pools"]
              for label in pool["labels"]]
    return build_config({"labels": labels, "providers": [raw]}).providers["ec2"]


def test_instance_carries_tags_and_the_node_the_cloud_facts(env, aws, zuul):
    start(env, label_extra="""            volume-size: 20
            volume-type: gp3
            imdsv2: required
            userdata: "#cloud-config"
            tags: {team: ci}
            dynamic-tags: {request: "for {request.id}"}
""")
    request_id = zuul.submit(["a"])
    request = zuul.wait_for_request(request_id, timeout=30)
    assert request["state"] == "fulfilled"
    [node_id] = request["nodes"]
    node = zuul.get_node(node_id)
    [instance] = live_instances(aws)
    assert instance["InstanceId"] == node["external_id"]
    assert tags(instance) == {
        "Name": f"np{node_id}", "nodepool_node_id": node_id,
        "nodepool_pool_name": "main", "nodepool_provider_name": "ec2",
        "nodepool_image_name": "ubuntu", "team": "ci",
        "request": f"for {request_id}"}
    assert instance["ImageId"] == UBUNTU_AMI and instance["KeyName"] == "zuul"
    assert instance["MetadataOptions"]["HttpTokens"] == "required"
    # The root volume: the label's size and type, tagged, gone with the node.
    [volume] = aws.client("ec2").describe_volumes()["Volumes"]
    assert (volume["Size"], volume["VolumeType"]) == (20, "gp3")
    assert tags(volume)["nodepool_node_id"] == node_id
    # What Zuul reads: addresses, zone, region, login, and the type's size.
    assert node["interface_ip"] == instance["PublicIpAddress"] == node["public_ipv4"]
    assert node["private_ipv4"] == instance["PrivateIpAddress"]
    assert node["az"] == instance["Placement"]["AvailabilityZone"]
    assert node["region"] == "us-east-1" and node["username"] == "ubuntu"
    assert node["resources"] == {"cores": 2, "ram": 4096, "instances": 1, STANDARD: 2}
    assert node["host_keys"] == []
    zuul.run_job(request_id)
    wait_until(lambda: not live_instances(aws), timeout=20, message="instance gone")
    wait_until(lambda: not aws.client("ec2").describe_volumes()["Volumes"],
               timeout=20, message="volume gone")


def test_use_internal_ip_and_spot(env, aws, zuul):
    start(env, pool_extra="        use-internal-ip: true\n",
          label_extra="            use-spot: true\n")
    node = zuul.get_node(zuul.wait_for_request(zuul.submit(["a"]), timeout=30)[
        "nodes"][0])
    [instance] = live_instances(aws)
    assert node["interface_ip"] == instance["PrivateIpAddress"]
    assert instance["InstanceLifecycle"] == "spot"
    # A spot instance counts against the spot vCPU quota.
    assert node["resources"]["L-34B43A08"] == 2 and STANDARD not in node["resources"]


def test_cloud_images_by_filters_and_by_name(aws):
    provider = minimal_provider(
        cloud_images=[
            {"name": "by-filters", "username": "admin",
             "image-filters": [{"name": "name", "values": ["debian-12-*"]}]},
            {"name": "ubuntu-jammy-22.04-amd64-server-20240101", "username": "ubuntu"}],
        pools=[{"name": "main", "labels": [
            {"name": "f", "cloud-image": "by-filters", "instance-type": "t3.small",
             "key-name": "zuul"},
            {"name": "n", "cloud-image": "ubuntu-jammy-22.04-amd64-server-20240101",
             "instance-type": "t3.small", "key-name": "zuul"}]}])
    adapter = drivers.make_adapter(provider)
    try:
        labels = provider.pools["main"].labels
        assert adapter.launcher.cloud_image_id(labels["f"]) == DEBIAN_AMI
        assert adapter.launcher.cloud_image_id(labels["n"]) == UBUNTU_AMI
        assert adapter.label_ready(labels["f"])
    finally:
        adapter.stop()


def test_quota_from_service_quotas_defers_requests_until_capacity_returns(
        env, aws, zuul):
    aws.set(quotas={STANDARD: 4})  # two t3.medium (2 vCPUs each)
    start(env)
    two_of_four_fit(env, zuul, lambda: len(live_instances(aws)))
    # The launcher never asked EC2 for what the quota could not hold.
    assert aws.calls()["ec2.RunInstances"] == 4


def test_quota_errors_from_ec2_defer_instead_of_failing(env, aws, zuul):
    # launch-retries 1: a launch failure would fail the request at once.
    launcher = start(env, provider_extra="    launch-retries: 1\n")
    first = zuul.submit(["a"])
    assert zuul.wait_for_request(first, timeout=30)["state"] == "fulfilled"
    # The quota drops below what is in use; the launcher still believes the
    # old limit, so EC2 refuses the next launch with VcpuLimitExceeded.
    aws.set(quotas={STANDARD: 2})
    second = zuul.submit(["a"])
    wait_until(lambda: aws.calls().get("ec2.RunInstances", 0) >= 2, timeout=30,
               message="the refused launch")
    env.settle()
    # Deferred (held by the pool until quota frees), not failed.
    assert zuul.get_request(second)["state"] in ("requested", "pending")
    assert launcher.managers["ec2"].view.limits()[STANDARD] == 2  # read again
    zuul.run_job(first)
    assert zuul.wait_for_request(second, timeout=30)["state"] == "fulfilled"
    assert len(live_instances(aws)) == 1


def test_insufficient_capacity_is_a_quota_error(aws):
    provider = minimal_provider()
    adapter = drivers.make_adapter(provider)
    aws.set(capacity_failures=1)
    try:
        with pytest.raises(QuotaError, match="InsufficientInstanceCapacity"):
            adapter.launcher.launch("np1", provider.pools["main"].labels["a"], None,
                                    {"nodepool_node_id": "1"}, None)
    finally:
        adapter.stop()


def test_burst_of_200_requests_leaves_nothing_behind(env, aws, zuul):
    aws.set(boot_delay=0.2)
    start(env, pool_extra="        max-servers: 200\n")
    aws.calls(reset=True)
    ids = [zuul.submit(["a"]) for _ in range(200)]
    for request_id in ids:
        assert zuul.wait_for_request(request_id, timeout=300)["state"] == "fulfilled"
    assert len(live_instances(aws)) == 200
    for request_id in ids:
        zuul.run_job(request_id)
    wait_until(lambda: not live_instances(aws), timeout=300, message="all terminated")
    wait_until(lambda: not aws.client("ec2").describe_volumes()["Volumes"],
               timeout=60, message="all volumes gone")
    assert our_images(aws) == [] and our_snapshots(aws) == []
    calls = aws.calls()
    # One RunInstances per node, and deletes batched into fewer calls.
    assert calls["ec2.RunInstances"] == 200
    assert calls["ec2.TerminateInstances"] < 200


def test_leaked_resources_tagged_as_ours_are_removed_and_others_left(env, aws, zuul):
    ec2, s3 = aws.client("ec2"), aws.client("s3")
    ours = {"nodepool_provider_name": "ec2"}
    node = [{"Key": k, "Value": v}
            for k, v in {**ours, "nodepool_node_id": "0000009999"}.items()]
    image = [{"Key": k, "Value": v} for k, v in {
        **ours, "nodepool_build_id": "b1", "nodepool_upload_id": "0000000001"}.items()]
    leaked_instance = ec2.run_instances(
        ImageId=UBUNTU_AMI, MinCount=1, MaxCount=1, InstanceType="t3.small",
        KeyName="zuul", TagSpecifications=[{"ResourceType": "instance", "Tags": node}]
    )["Instances"][0]["InstanceId"]
    foreign_instance = ec2.run_instances(
        ImageId=UBUNTU_AMI, MinCount=1, MaxCount=1, InstanceType="t3.small",
        KeyName="zuul")["Instances"][0]["InstanceId"]
    leaked_volume = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1,
                                      TagSpecifications=[{"ResourceType": "volume",
                                                          "Tags": node}])["VolumeId"]
    foreign_volume = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)["VolumeId"]
    snapshot = ec2.create_snapshot(VolumeId=foreign_volume, TagSpecifications=[
        {"ResourceType": "snapshot", "Tags": image}])["SnapshotId"]
    leaked_ami = ec2.register_image(
        Name="leaked", RootDeviceName="/dev/sda1", TagSpecifications=[
            {"ResourceType": "image", "Tags": image}])["ImageId"]
    foreign_ami = ec2.register_image(Name="theirs", RootDeviceName="/dev/sda1")["ImageId"]
    s3.put_object(Bucket=BUCKET, Key="leaked.raw", Body=b"x",
                  Tagging="nodepool_provider_name=ec2&nodepool_build_id=b1&"
                          "nodepool_upload_id=0000000001")
    s3.put_object(Bucket=BUCKET, Key="theirs.raw", Body=b"x")
    # An import interrupted before it was tagged: only its task has our tags.
    s3.put_object(Bucket=BUCKET, Key="interrupted.raw", Body=b"x")
    task = ec2.import_snapshot(
        DiskContainer={"Format": "raw", "UserBucket": {"S3Bucket": BUCKET,
                                                       "S3Key": "interrupted.raw"}},
        TagSpecifications=[{"ResourceType": "import-snapshot-task", "Tags": image}])
    for _ in range(3):
        detail = ec2.describe_import_snapshot_tasks(ImportTaskIds=[
            task["ImportTaskId"]])["ImportSnapshotTasks"][0]["SnapshotTaskDetail"]
    interrupted = detail["SnapshotId"]
    s3.delete_object(Bucket=BUCKET, Key="interrupted.raw")

    launcher = start(env, provider_extra=OBJECT_STORAGE)
    launcher.cleanup.wake.set()

    def gone():
        instances = {i["InstanceId"] for i in live_instances(aws)}
        volumes = {v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]}
        snapshots = {s["SnapshotId"] for s in our_snapshots(aws)}
        amis = {i["ImageId"] for i in our_images(aws)}
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])}
        return (leaked_instance not in instances and leaked_volume not in volumes
                and snapshot not in snapshots and interrupted not in snapshots
                and leaked_ami not in amis and "leaked.raw" not in keys)
    wait_until(gone, timeout=30, message="leaked resources removed")
    assert foreign_instance in {i["InstanceId"] for i in live_instances(aws)}
    assert foreign_volume in {v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]}
    assert foreign_ami in {i["ImageId"] for i in our_images(aws)}
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]] == [
        "theirs.raw"]


BUILDER_CONFIG = """
images-dir: {images}
build-log-dir: {logs}
labels:
  - name: built
diskimages:
  - name: ubuntu
    elements: [ubuntu-minimal, vm]
    dib-cmd: {dib}
    rebuild-age: {rebuild_age}
    username: ci
    metadata: {{os: ubuntu}}
providers:
  - name: ec2
    driver: aws
    region-name: us-east-1
    rate: 1000
    object-storage:
      bucket-name: {bucket}
    image-format: raw
    image-import-timeout: 60
    diskimages:
      - name: ubuntu
        import-method: {method}
        volume-type: gp3
        tags: {{team: ci}}
    pools:
      - name: main
        host-key-checking: false
        labels:
          - name: built
            diskimage: ubuntu
            instance-type: t3.small
            key-name: zuul
"""


def builder_config(tmp_path, method="snapshot", rebuild_age=86400):
    (tmp_path / "images").mkdir(exist_ok=True)
    return BUILDER_CONFIG.format(images=tmp_path / "images", logs=tmp_path / "logs",
                                 dib=DIB, rebuild_age=rebuild_age, bucket=BUCKET,
                                 method=method)


def ready_uploads(store):
    return [u for b in store.get_builds("ubuntu")
            for u in store.get_uploads("ubuntu", b.id, "ec2")
            if u.state == UploadState.READY]


def test_built_image_is_imported_booted_and_deleted_by_retention(
        env, aws, store, zuul, tmp_path):
    # The first import is refused (AWS's import task limit) and retried
    # within image-import-timeout.
    aws.set(import_limit_failures=1)
    path = env.config(builder_config(tmp_path))
    env.start_builder(path)
    wait_until(lambda: ready_uploads(store), timeout=60, message="a ready upload")
    [upload] = ready_uploads(store)
    [ami] = our_images(aws)
    assert ami["ImageId"] == upload.external_id and ami["Name"] == upload.external_name
    assert tags(ami) == {"nodepool_build_id": upload.build_id,
                         "nodepool_upload_id": upload.id,
                         "nodepool_provider_name": "ec2", "os": "ubuntu", "team": "ci"}
    [snapshot] = our_snapshots(aws)
    assert ami["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"] == snapshot["SnapshotId"]
    assert tags(snapshot) == tags(ami)
    assert "Contents" not in aws.client("s3").list_objects_v2(Bucket=BUCKET)
    calls = aws.calls()
    assert calls["ec2.ImportSnapshot"] == 2 and calls["ec2.RegisterImage"] == 1
    # The launcher boots it.
    env.start(path)
    request_id = zuul.submit(["built"])
    node = zuul.get_node(zuul.wait_for_request(request_id, timeout=30)["nodes"][0])
    assert node["username"] == "ci"
    [instance] = live_instances(aws)
    assert instance["ImageId"] == upload.external_id
    zuul.run_job(request_id)
    # Two more builds: retention keeps the newest two uploads and deletes the
    # first one's AMI and snapshot.
    for count in (2, 3):
        store.request_build("ubuntu")
        wait_until(lambda: len([b for b in store.get_builds("ubuntu")
                                if b.state == BuildState.READY]) >= min(count, 2)
                   and store.build_requested_at("ubuntu") is None, timeout=60,
                   message=f"build {count}")
    wait_until(lambda: len(ready_uploads(store)) == 2
               and upload.external_id not in {i["ImageId"] for i in our_images(aws)},
               timeout=60, message="the first image deleted by retention")
    wait_until(lambda: len(our_images(aws)) == 2 and len(our_snapshots(aws)) == 2,
               timeout=60, message="two images left")
    assert {u.external_id for u in ready_uploads(store)} == {
        i["ImageId"] for i in our_images(aws)}


def test_image_import_method_and_its_failures(aws, tmp_path):
    config = build_config(__import__("yaml").safe_load(
        builder_config(tmp_path, method="image").replace(
            "    image-import-timeout: 60\n", "")))
    provider = config.providers["ec2"]
    adapter = drivers.make_adapter(provider)
    image_file = tmp_path / "disk.raw"
    image_file.write_bytes(b"\0" * 4096)
    metadata = {"nodepool_provider_name": "ec2", "nodepool_build_id": "b1",
                "nodepool_upload_id": "0000000001"}
    try:
        ami = adapter.upload_image("ubuntu-1", str(image_file), "raw", metadata,
                                   provider_image=provider.diskimages["ubuntu"])
        [image] = our_images(aws)
        assert image["ImageId"] == ami and tags(image) == metadata
        assert aws.calls()["ec2.ImportImage"] == 1
        assert "Contents" not in aws.client("s3").list_objects_v2(Bucket=BUCKET)
        adapter.delete_image(ami)
        assert our_images(aws) == [] and our_snapshots(aws) == []
        # Without image-import-timeout the task limit fails the upload at once.
        aws.set(import_limit_failures=1)
        with pytest.raises(Exception, match="ResourceCountLimitExceeded"):
            adapter.upload_image("ubuntu-2", str(image_file), "raw", metadata,
                                 provider_image=provider.diskimages["ubuntu"])
        # A failed import task fails the upload, and leaves no object behind.
        aws.set(fail_imports=1)
        with pytest.raises(Exception, match="deleted"):
            adapter.upload_image("ubuntu-3", str(image_file), "raw", metadata,
                                 provider_image=provider.diskimages["ubuntu"])
        assert "Contents" not in aws.client("s3").list_objects_v2(Bucket=BUCKET)
    finally:
        adapter.stop()


def test_fleet_label_launches_one_of_its_types(env, aws, zuul):
    body = aws_provider("ec2", label_extra="""          - name: fleet
            cloud-image: ubuntu
            fleet:
              instance-types: [t3.small, t3.medium]
              allocation-strategy: prioritized
            key-name: zuul
""")
    env.start(env.config("labels:\n  - name: a\n  - name: fleet\nproviders:" + body))
    request_id = zuul.submit(["fleet"])
    [node_id] = zuul.wait_for_request(request_id, timeout=30)["nodes"]
    node = zuul.get_node(node_id)
    [instance] = live_instances(aws)
    assert instance["InstanceType"] in ("t3.small", "t3.medium")
    assert tags(instance)["nodepool_node_id"] == node_id
    assert node["resources"]["instances"] == 1 and node["resources"]["cores"] == 2
    zuul.run_job(request_id)
    wait_until(lambda: not live_instances(aws), timeout=20, message="terminated")


def test_dedicated_host_is_allocated_and_released_with_its_node(env, aws, zuul):
    start(env, pool_extra="        availability-zone: us-east-1a\n",
          label_extra="            dedicated-host: true\n")
    request_id = zuul.submit(["a"])
    [node_id] = zuul.wait_for_request(request_id, timeout=30)["nodes"]
    node = zuul.get_node(node_id)
    ec2 = aws.client("ec2")
    [host] = ec2.describe_hosts()["Hosts"]
    assert tags(host)["nodepool_node_id"] == node_id
    [instance] = live_instances(aws)
    assert instance["Placement"]["HostId"] == host["HostId"] == node["host_id"]
    zuul.run_job(request_id)
    wait_until(lambda: all(h["State"].startswith("released")
                           for h in ec2.describe_hosts()["Hosts"]),
               timeout=20, message="host released")


def test_credentials_from_a_named_profile(env, aws, zuul, tmp_path, monkeypatch):
    credentials = tmp_path / "credentials"
    credentials.write_text("[ci]\naws_access_key_id = ci\naws_secret_access_key = ci\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    start(env, provider_extra="    profile-name: ci\n")
    assert zuul.wait_for_request(zuul.submit(["a"]), timeout=30)["state"] == "fulfilled"


def test_api_calls_are_timed_in_statsd(env, aws, zuul, statsd):
    start(env)
    zuul.wait_for_request(zuul.submit(["a"]), timeout=30)
    assert statsd.wait_for(lambda keys: {"nodepool.task.ec2.RunInstances",
                                         "nodepool.task.ec2.DescribeInstances"} <= keys)


def test_a_missing_profile_disables_the_provider_with_the_reason(aws):
    provider = minimal_provider(profile_name="nowhere")
    with pytest.raises(drivers.DriverUnavailable,
                       match="provider ec2: The config profile \\(nowhere\\)"):
        drivers.make_adapter(provider)
