"""Running launchers in tests: configuration files and fast intervals."""

from __future__ import annotations

import os
import time

import pytest

from nodepool.drivers.fake.adapter import FakeCloud
from nodepool.launcher.launcher import Launcher
from nodepool.zk.image_records import ImageBuild, ImageUpload

# The smallest useful fake provider: label "small" on the default cloud image.
FAKE_PROVIDER = """
  - name: fake-cloud
    cloud: fake
    cloud-images:
      - name: precise
        image-name: Fake Precise
    pools:
      - name: main
        max-servers: 5
        labels:
          - name: small
            cloud-image: precise
            min-ram: 1
"""


def sim_provider(name: str, image_extra: str = "", pool_extra: str = "") -> str:
    """A provider entry for the OpenStack simulator (clouds.yaml name ``sim``)
    offering label "a" on its Ubuntu image; the extras are indented lines
    added to the cloud image and to the pool."""
    return f"""
  - name: {name}
    cloud: sim
    region-name: RegionOne
    rate: 0.001
    cloud-images:
      - name: ubuntu
        image-id: ubuntu-image-id
{image_extra}    pools:
      - name: main
{pool_extra}        labels:
          - name: a
            cloud-image: ubuntu
            min-ram: 1024
"""


def aws_provider(name: str, pool_extra: str = "", label_extra: str = "",
                 provider_extra: str = "") -> str:
    """A provider entry for the AWS simulator offering label "a" (t3.medium,
    2 vCPUs) on its Ubuntu AMI. Nothing may connect to the addresses moto
    hands out, so host keys are not scanned."""
    return f"""
  - name: {name}
    driver: aws
    region-name: us-east-1
    rate: 1000
{provider_extra}    cloud-images:
      - name: ubuntu
        image-id: ami-0a1b2c3d4e5f60001
        username: ubuntu
    pools:
      - name: main
        host-key-checking: false
{pool_extra}        labels:
          - name: a
            cloud-image: ubuntu
            instance-type: t3.medium
            key-name: zuul
{label_extra}"""


def gce_provider(name: str, pool_extra: str = "", label_extra: str = "",
                 provider_extra: str = "", image_extra: str = "",
                 host_key_checking: bool = False) -> str:
    """A provider entry for the GCE simulator (the ``gce`` fixture) offering
    label "a" (e2-medium: 2 vCPUs, 4 GB) on the newest image of the debian-12
    family. The addresses the simulator hands out are not this machine's
    unless a test says so: host keys are scanned only if asked."""
    checking = "true" if host_key_checking else "false"
    return f"""
  - name: {name}
    driver: gce
    project: nodepool-sim
    region: us-central1
    zone: us-central1-a
    rate: 1000
{provider_extra}    cloud-images:
      - name: debian
        image-project: debian-cloud
        image-family: debian-12
        username: zuul
        key: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDtest zuul@nodepool
{image_extra}    pools:
      - name: main
        host-key-checking: {checking}
{pool_extra}        labels:
          - name: a
            cloud-image: debian
            instance-type: e2-medium
{label_extra}"""


def azure_provider(name: str, pool_extra: str = "", label_extra: str = "",
                   provider_extra: str = "", image_extra: str = "",
                   host_key_checking: bool = False) -> str:
    """A provider entry for the Azure simulator (the ``azure`` fixture, whose
    credentials file is $AZURE_SIM_AUTH) offering label "a" (Standard_B2s:
    2 vCPUs, 4 GB) on Ubuntu 22.04 from the marketplace. The addresses the
    simulator hands out are not this machine's unless a test says so: host
    keys are scanned only if asked."""
    checking = "true" if host_key_checking else "false"
    return f"""
  - name: {name}
    driver: azure
    auth-path: {os.environ.get("AZURE_SIM_AUTH", "/nonexistent")}
    location: westeurope
    resource-group: {name}-rg
    resource-group-location: westeurope
    network: nodepool
    rate: 1000
    zuul-public-key: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDtest zuul@nodepool
{provider_extra}    cloud-images:
      - name: ubuntu
        username: zuul
        image-reference:
          publisher: Canonical
          offer: 0001-com-ubuntu-server-jammy
          sku: 22_04-lts-gen2
          version: latest
{image_extra}    pools:
      - name: main
        host-key-checking: {checking}
{pool_extra}        labels:
          - name: a
            cloud-image: ubuntu
            hardware-profile:
              vm-size: Standard_B2s
{label_extra}"""


def ibmvpc_provider(name: str, pool_extra: str = "", label_extra: str = "",
                    provider_extra: str = "", image_extra: str = "",
                    host_key_checking: bool = False) -> str:
    """A provider entry for the IBM Cloud VPC simulator (the ``ibmvpc``
    fixture, whose credentials file is $IBMVPC_SIM_CREDENTIALS) offering
    label "a" (cx2-2x4: 2 vCPUs, 4 GB) with a floating IP, on the stock
    Debian 12 image an image-filter finds. The addresses the simulator hands
    out are not this machine's unless a test says so: host keys are scanned
    only if asked."""
    checking = "true" if host_key_checking else "false"
    return f"""
  - name: {name}
    driver: ibmvpc
    credentials-file: {os.environ.get("IBMVPC_SIM_CREDENTIALS", "/nonexistent")}
    region: us-south
    vpc: nodepool
    zone: us-south-1
    subnet: nodepool-subnet
    rate: 1000
    object-storage:
      instance-name: nodepool-cos
      endpoint: {os.environ.get("IBMVPC_SIM_COS", "http://127.0.0.1:1/cos")}
      bucket-name: nodepool-images
{provider_extra}    cloud-images:
      - name: debian
        username: zuul
        keys: [zuul]
        image-filter:
          operating-system:
            family: Debian GNU/Linux
            architecture: amd64
{image_extra}    pools:
      - name: main
        public-ipv4: true
        host-key-checking: {checking}
{pool_extra}        labels:
          - name: a
            cloud-image: debian
            profile: cx2-2x4
{label_extra}"""


def built_and_uploaded(env, store, tmp_path, providers: str, provider: str,
                       timeout: float = 60):
    """Start a builder of diskimage "debian" (fake-image-create, username
    ``ci``) for ``providers`` (the providers: section's entries), and wait for
    its upload to ``provider``; returns (config path, build, upload)."""
    from conftest import wait_until
    from nodepool.zk.records import UploadState
    dib = os.path.join(os.path.dirname(__file__), "..", "tools", "fake-image-create")
    (tmp_path / "images").mkdir()
    path = env.config(f"""images-dir: {tmp_path / "images"}
build-log-dir: {tmp_path / "logs"}
labels:
  - name: a
diskimages:
  - name: debian
    elements: [debian-minimal, vm]
    dib-cmd: {dib}
    username: ci
providers:{providers}""")
    env.start_builder(path)
    wait_until(lambda: [u for b in store.get_builds("debian")
                        for u in store.get_uploads("debian", b.id, provider)
                        if u.state == UploadState.READY], timeout=timeout,
               message="a ready upload")
    [build] = store.get_builds("debian")
    [upload] = store.get_uploads("debian", build.id, provider)
    return path, build, upload


def two_of_four_fit(env, zuul, live_count) -> None:
    """Four requests of one node where the cloud's quota holds two: two are
    fulfilled and two wait (not fail) with ``live_count()`` instances in the
    cloud; once the first two are used, the waiting two are fulfilled."""
    from conftest import wait_until
    ids = [zuul.submit(["a"]) for _ in range(4)]
    wait_until(lambda: sum(zuul.get_request(r)["state"] == "fulfilled"
                           for r in ids) == 2, timeout=30, message="two fulfilled")
    env.settle()
    states = [zuul.get_request(r)["state"] for r in ids]
    assert sorted(states) == ["fulfilled", "fulfilled", "requested", "requested"]
    assert live_count() == 2
    for request_id, state in zip(ids, states):
        if state == "fulfilled":
            zuul.run_job(request_id)
    for request_id, state in zip(ids, states):
        if state == "requested":
            assert zuul.wait_for_request(request_id, timeout=30)["state"] == "fulfilled"


# Intervals short enough that timer-driven housekeeping happens within a test.
FAST = dict(idle_interval=1.0, cleanup_interval=0.3, delete_sweep_interval=0.5,
            min_ready_interval=0.5, config_check_interval=0.1)


# Builder passes also run on every image tree event; these bound the rest.
BUILDER_FAST = dict(build_workers=1, upload_workers=2, build_interval=0.5,
                    upload_interval=0.5, cleanup_interval=0.3,
                    config_check_interval=0.1)


class LauncherEnv:
    def __init__(self, tmp_path, zk_server, zk_chroot):
        self.tmp_path = tmp_path
        self.zk_server = zk_server
        self.chroot = zk_chroot
        self.launchers: list[Launcher] = []
        self.builders: list = []

    def config(self, body: str, name: str = "nodepool.yaml") -> str:
        """Write a config; the ZooKeeper section is filled in."""
        path = self.tmp_path / name
        text = (f"zookeeper-servers:\n  - host: 127.0.0.1\n"
                f"    port: {self.zk_server.port}\n    chroot: {self.chroot}\n"
                + body)
        path.write_text(text)
        return str(path)

    def rewrite(self, path: str, body: str) -> None:
        """Replace a config file's body, making sure its mtime changes."""
        before = os.stat(path).st_mtime_ns
        self.config(body, name=os.path.basename(path))
        if os.stat(path).st_mtime_ns == before:
            os.utime(path, ns=(before + 1_000_000, before + 1_000_000))

    def start(self, path: str, **kwargs) -> Launcher:
        options = dict(FAST)
        options.update(kwargs)
        launcher = Launcher(path, **options)
        launcher.start(connect_timeout=15)
        self.launchers.append(launcher)
        return launcher

    def start_builder(self, path: str, **kwargs):
        from nodepool.builder.builder import Builder
        options = dict(BUILDER_FAST)
        options.update(kwargs)
        builder = Builder(path, **options)
        builder.start(connect_timeout=15)
        self.builders.append(builder)
        return builder

    def settle(self, timeout: float = 20.0) -> None:
        """Wait until every launcher and builder started here has nothing left to do
        (Zuul's tests call it waitUntilSettled): each cache has caught up
        with ZooKeeper and no worker has work queued or running, in three
        checks in a row. Then "nothing happened" can be asserted without
        guessing how long to sleep."""
        deadline = time.monotonic() + timeout
        calm = 0
        pending: list[str] = []
        while calm < 3:
            launchers = [la for la in self.launchers if la.client.kazoo is not None]
            builders = [b for b in self.builders if b.client.kazoo is not None]
            for launcher in launchers:
                launcher.nodes.barrier()
                launcher.requests.barrier()
            for builder in builders:
                builder.images.barrier()
            pending = [what for launcher in launchers for what in launcher.pending_work()]
            pending += [what for builder in builders for what in builder.pending_work()]
            calm = 0 if pending else calm + 1
            if time.monotonic() > deadline:
                raise TimeoutError(f"launchers not settled after {timeout}s: {pending}")
            time.sleep(0.05)

    def stop_all(self) -> None:
        for builder in self.builders:
            try:
                if builder.client.kazoo is not None:
                    builder.stop()
            except Exception:
                pass
        for launcher in self.launchers:
            try:
                if launcher.client.kazoo is not None:
                    launcher.stop()
            except Exception:
                pass


def crash(launcher: Launcher) -> None:
    """End a launcher as a SIGKILL would: its session and locks vanish first."""
    launcher.client.kazoo.stop()
    launcher.stop()


def add_upload(store, image: str, provider: str, external_id: str = "fake-image-id",
               age: float = 0.0) -> ImageUpload:
    """Record a ready build and upload, as a builder would."""
    build = ImageBuild(image_name=image, state="ready", formats=["qcow2"],
                       username="zuul", python_path="auto",
                       state_time=time.time() - age)
    store.store_build(build)
    upload = ImageUpload(image_name=image, build_id=build.id, provider_name=provider,
                         state="ready", external_id=external_id,
                         external_name=f"{image}-{build.id[:8]}", format="qcow2",
                         username="zuul", python_path="auto",
                         state_time=time.time() - age)
    store.store_upload(upload)
    return upload


@pytest.fixture
def env(tmp_path, zk_server, zk_chroot):
    FakeCloud.reset_all()
    environment = LauncherEnv(tmp_path, zk_server, zk_chroot)
    yield environment
    environment.stop_all()
    FakeCloud.reset_all()
