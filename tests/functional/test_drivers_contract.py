"""One behaviour suite, run against every driver (fake cloud, static hosts,
the OpenStack simulator, memcloud, AWS through moto's server, GCE, Azure and
IBM Cloud VPC through their simulators).

What a Zuul operator relies on whatever the driver: requests are fulfilled
with complete nodes, multi-node requests work, used nodes go away and their
capacity comes back, cancelled requests free their nodes, impossible requests
fail, and requests beyond the capacity of the moment wait instead of failing.
"""

import os
import shutil
import tempfile

import pytest

from conftest import wait_until
from launcher_fixtures import (
    FAKE_PROVIDER, aws_provider, azure_provider, gce_provider, ibmvpc_provider,
    sim_provider,
)
from nodepool.zk.records import NodeState

from nodepool.testing.openstack_sim import OpenStackSimulator  # noqa: E402
from nodepool.testing.sshdserver import SSHServer  # noqa: E402


class FakeDriver:
    name = "fake"
    connection_type = "ssh"
    capacity = 3
    scans_keys = True
    # Its cloud image names no username: null, as upstream writes it.
    username = None

    def config(self):
        provider = FAKE_PROVIDER.replace("fake-cloud", "fake-contract") \
            .replace("max-servers: 5", "max-servers: 3").replace("name: small", "name: a")
        return "labels:\n  - name: a\nproviders:" + provider

    def stop(self):
        pass


class StaticDriver:
    name = "static"
    connection_type = "ssh"
    capacity = 3
    scans_keys = True
    username = "zuul"  # the static driver's default

    def __init__(self):
        self.servers = [SSHServer().start()
                        for _ in range(2)]

    def config(self):
        first, second = self.servers
        return f"""
labels:
  - name: a
providers:
  - name: static-contract
    driver: static
    pools:
      - name: main
        nodes:
          - name: 127.0.0.1
            connection-port: {first.port}
            labels: [a]
            max-parallel-jobs: 2
            timeout: 5
          - name: 127.0.0.1
            connection-port: {second.port}
            labels: a
            timeout: 5
"""

    def stop(self):
        for server in self.servers:
            server.stop()


class OpenStackDriver:
    """openstacksdk over HTTP against the simulator. Every server's address
    is 127.0.0.1, where a real sshd answers the host-key scan."""

    name = "openstack"
    connection_type = "ssh"
    capacity = 3
    scans_keys = True
    username = None  # a cloud image without username

    def __init__(self, monkeypatch):
        import yaml
        self.workdir = tempfile.mkdtemp(prefix="contract-openstack-")
        self.sshd = SSHServer().start()
        self.sim = OpenStackSimulator(boot_delay=0.1, server_address="127.0.0.1").start()
        clouds = os.path.join(self.workdir, "clouds.yaml")
        with open(clouds, "w") as handle:
            yaml.safe_dump(self.sim.clouds_yaml(), handle)
        monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", clouds)

    def config(self):
        return "labels:\n  - name: a\nproviders:" + sim_provider(
            "openstack-contract",
            image_extra=f"        connection-port: {self.sshd.port}\n",
            pool_extra="        max-servers: 3\n        auto-floating-ip: false\n")

    def live(self):
        return self.sim.servers

    def stop(self):
        self.sshd.stop()
        self.sim.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


class AwsDriver:
    """boto3 over HTTP against moto's server. The addresses moto hands out
    are not this machine's, so nothing connects to them: no host-key scan."""

    name = "aws"
    connection_type = "ssh"
    capacity = 3
    scans_keys = False
    username = "ubuntu"  # upstream requires a cloud image's username

    def __init__(self, request):
        self.sim = request.getfixturevalue("aws")
        self.sim.set(boot_delay=0.1)

    def config(self):
        return "labels:\n  - name: a\nproviders:" + aws_provider(
            "aws-contract", pool_extra="        max-servers: 3\n")

    def live_instances(self):
        reply = self.sim.client("ec2").describe_instances(Filters=[{
            "Name": "instance-state-name", "Values": ["pending", "running"]}])
        return [i for r in reply["Reservations"] for i in r["Instances"]]

    def stop(self):
        pass


class SimulatedCloudDriver:
    """A cloud driver over HTTP against our simulator of its API (the
    fixture of the driver's name), whose instances here all have 127.0.0.1
    as their public address: a real sshd there answers the host-key scan."""

    connection_type = "ssh"
    capacity = 3
    scans_keys = True
    username = "zuul"  # the cloud image's

    def __init__(self, request, provider, address_knob):
        self.sim = request.getfixturevalue(self.name)
        self.sim.set(**{address_knob: "127.0.0.1"})
        self.sshd = SSHServer().start()
        self.provider = provider

    def config(self):
        return "labels:\n  - name: a\nproviders:" + self.provider(
            f"{self.name}-contract", pool_extra="        max-servers: 3\n",
            image_extra=f"        connection-port: {self.sshd.port}\n",
            host_key_checking=True)

    def live(self):
        return self.sim.live()

    def stop(self):
        self.sshd.stop()


class GceDriver(SimulatedCloudDriver):
    """google-api-python-client against the GCE simulator."""

    name = "gce"

    def __init__(self, request):
        super().__init__(request, gce_provider, "external_ip")


class AzureDriver(SimulatedCloudDriver):
    """Our ARM client against the Azure simulator."""

    name = "azure"

    def __init__(self, request):
        super().__init__(request, azure_provider, "public_ip")


class IbmVpcDriver(SimulatedCloudDriver):
    """IBM's Python SDK against the IBM Cloud VPC simulator."""

    name = "ibmvpc"

    def __init__(self, request):
        super().__init__(request, ibmvpc_provider, "public_ip")


class MemCloudDriver:
    """A driver that exists only for the tests (tests/memcloud/), added
    through the driver registry alone."""

    name = "memcloud"
    connection_type = "ssh"
    capacity = 3
    scans_keys = True
    username = "zuul"  # boots no image: the node record's default

    def __init__(self):
        from nodepool import drivers
        drivers.register("memcloud", "memcloud")

    def config(self):
        return """
labels:
  - name: a
providers:
  - name: memcloud-contract
    driver: memcloud
    pools:
      - name: main
        max-servers: 3
        labels:
          - name: a
"""

    def live(self):
        from memcloud import adapter
        return adapter.servers.get("memcloud-contract", {})

    def stop(self):
        self.live().clear()


class KubernetesFamilyDriver:
    """kubernetes, openshift and openshiftpods through the official client
    over HTTP against the Kubernetes simulator; label "a" is a pod, which
    Zuul reaches with kubectl (no SSH, no host keys)."""

    connection_type = "kubectl"
    capacity = 3
    scans_keys = False
    username = "zuul"  # boots no image: the node record's default

    def __init__(self, name, tmp_path, monkeypatch):
        from nodepool.testing.kubernetes_sim import KubernetesSimulator
        self.name = name
        self.sim = KubernetesSimulator(openshift=name == "openshift").start()
        monkeypatch.setenv("KUBECONFIG",
                           self.sim.write_kubeconfig(tmp_path / "kubeconfig"))
        self.pool = "main"
        if name == "openshiftpods":
            self.pool = "ci-project"
            self.sim.add_namespace(self.pool)

    def config(self):
        kind = "" if self.name == "openshiftpods" else "            type: pod\n"
        return f"""
labels:
  - name: a
providers:
  - name: {self.name}-contract
    driver: {self.name}
    context: sim-admin
    pools:
      - name: {self.pool}
        max-servers: 3
        labels:
          - name: a
{kind}            image: registry.example.org/fedora:40
"""

    def live(self):
        """The cloud side of the nodes: their pods (openshiftpods) or
        namespaces."""
        if self.name == "openshiftpods":
            return self.sim.names("pods", self.pool)
        return self.sim.names("namespaces")

    def stop(self):
        self.sim.stop()


@pytest.fixture(params=["fake", "static", "openstack", "memcloud", "aws", "gce",
                        "azure", "ibmvpc", "kubernetes", "openshift",
                        "openshiftpods"])
def driver(request, monkeypatch, tmp_path):
    if request.param == "fake":
        instance = FakeDriver()
    elif request.param == "aws":
        instance = AwsDriver(request)
    elif request.param == "gce":
        instance = GceDriver(request)
    elif request.param == "azure":
        instance = AzureDriver(request)
    elif request.param == "ibmvpc":
        instance = IbmVpcDriver(request)
    elif request.param == "memcloud":
        instance = MemCloudDriver()
    elif request.param == "static":
        instance = StaticDriver()
    elif request.param == "openstack":
        instance = OpenStackDriver(monkeypatch)
    else:
        instance = KubernetesFamilyDriver(request.param, tmp_path, monkeypatch)
    yield instance
    instance.stop()


@pytest.fixture
def launcher(env, driver):
    launcher = env.start(env.config(driver.config()))
    if driver.name == "static":
        wait_until(lambda: len(ready_nodes(launcher)) == driver.capacity, timeout=20,
                   message="static hosts registered")
    return launcher


def ready_nodes(launcher):
    return [n for n in launcher.nodes.nodes()
            if n.state == NodeState.READY and not n.allocated_to]


def test_request_is_fulfilled_with_a_complete_node(launcher, driver, zuul):
    request = zuul.wait_for_request(zuul.submit(["a"]), timeout=20)
    assert request["state"] == "fulfilled"
    node = zuul.get_node(request["nodes"][0])
    assert node["state"] == "ready" and node["type"] == ["a"]
    assert node["interface_ip"] and node["username"] == driver.username
    assert node["node_properties"] == {}
    assert node["connection_type"] == driver.connection_type
    if driver.connection_type == "ssh":
        assert isinstance(node["connection_port"], int)
    else:  # the pod Zuul's executor runs the job in, and how to reach it
        assert node["connection_port"]["pod"] == node["interface_ip"]
        assert node["connection_port"]["token"] and node["connection_port"]["host"]
    assert bool(node["host_keys"]) == driver.scans_keys
    assert node["provider"] == f"{driver.name}-contract"
    assert node["allocated_to"] == zuul.kazoo.get_children("/nodepool/requests")[0]
    if driver.name == "static":
        port = node["connection_port"]
        server = next(s for s in driver.servers if s.port == port)
        assert set(node["host_keys"]) == set(server.host_keys)


def test_multi_node_request(launcher, driver, zuul):
    request = zuul.wait_for_request(zuul.submit(["a", "a"]), timeout=20)
    assert request["state"] == "fulfilled" and len(set(request["nodes"])) == 2


def test_used_nodes_go_and_capacity_returns(env, launcher, driver, zuul):
    ids = [zuul.submit(["a"]) for _ in range(driver.capacity)]
    results = [zuul.wait_for_request(r, timeout=20) for r in ids]
    used = {n for r in results for n in r["nodes"]}
    waiting = zuul.submit(["a"])
    env.settle()
    assert zuul.get_request(waiting)["state"] == "requested"  # deferred, not failed
    for request_id in ids:
        zuul.run_job(request_id)
    assert zuul.wait_for_request(waiting, timeout=30)["state"] == "fulfilled"
    wait_until(lambda: not any(zuul.get_node(n) for n in used), timeout=20,
               message="used nodes removed")
    if hasattr(driver, "live"):
        wait_until(lambda: len(driver.live()) == 1, timeout=20,
                   message="used servers deleted in the cloud")
    if driver.name == "aws":
        wait_until(lambda: len(driver.live_instances()) == 1, timeout=20,
                   message="used instances terminated in EC2")
    if driver.name == "static":
        # Every slot comes back as a fresh node record.
        wait_until(lambda: len(launcher.nodes.nodes()) == driver.capacity, timeout=20,
                   message="slots re-registered")


def test_cancelled_request_frees_its_nodes(launcher, driver, zuul):
    request_id = zuul.submit(["a"])
    node_id = zuul.wait_for_request(request_id, timeout=20)["nodes"][0]
    zuul.cancel(request_id)
    wait_until(lambda: (zuul.get_node(node_id) or {}).get("allocated_to") is None,
               timeout=20, message="node released")
    again = zuul.wait_for_request(zuul.submit(["a"]), timeout=20)
    assert again["state"] == "fulfilled"


def test_impossible_request_fails(launcher, driver, zuul):
    wait_until(lambda: launcher.components.pools(), message="registered")
    assert zuul.wait_for_request(zuul.submit(["nope"]))["state"] == "failed"
