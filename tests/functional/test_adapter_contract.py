"""The adapter contract, each adapter alone against its cloud: no launcher,
no ZooKeeper. What the launcher relies on from every driver that launches
instances (fake cloud, OpenStack simulator over HTTP, memcloud, AWS through
moto's server, GCE, Azure and IBM Cloud VPC through their simulators), and from every inventory driver (static, against real sshd
hosts)."""

import time

import pytest
import yaml

from nodepool import drivers
from nodepool.config.loader import build_config
from nodepool.drivers.base import META_NODE_ID, META_PROVIDER, Instance
from nodepool.resources import Resources

from launcher_fixtures import (  # noqa: E402
    FAKE_PROVIDER, aws_provider, azure_provider, gce_provider, ibmvpc_provider,
    sim_provider,
)
from nodepool.testing.openstack_sim import OpenStackSimulator  # noqa: E402
from nodepool.testing.sshdserver import SSHServer  # noqa: E402

LABELS = "labels:\n  - name: a\n"


def provider_of(body: str):
    config = build_config(yaml.safe_load(LABELS + body))
    [provider] = config.providers.values()
    return provider


def run(machine, timeout=20.0) -> Instance | None:
    """Advance a state machine to its end, as the launcher's runner does
    (bounded; advance() itself must not block)."""
    deadline = time.monotonic() + timeout
    result = None
    while not machine.complete:
        assert time.monotonic() < deadline, f"{machine!r} not complete in {timeout}s"
        started = time.monotonic()
        result = machine.advance()
        assert time.monotonic() - started < 2.0, "advance() blocked"
        if not machine.complete:
            time.sleep(min(machine.poll_delay or 0.01, 0.2))
    return result


class Fake:
    # The suite's usual fake provider, with its label renamed.
    body = "providers:" + FAKE_PROVIDER.replace("name: small", "name: a")
    image = "fake-image-id"

    def stop(self):
        pass


class OpenStack:
    body = "providers:" + sim_provider("openstack-adapter")
    image = "ubuntu-image-id"

    def __init__(self, tmp_path, monkeypatch):
        self.sim = OpenStackSimulator(boot_delay=0.1).start()
        clouds = tmp_path / "clouds.yaml"
        clouds.write_text(yaml.safe_dump(self.sim.clouds_yaml()))
        monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))

    def stop(self):
        self.sim.stop()


class Aws:
    """boto3 over HTTP against moto's server (the ``aws`` fixture)."""

    body = "providers:" + aws_provider("aws-adapter")
    image = None  # the label's cloud image (an AMI the region offers)

    def __init__(self, request):
        self.sim = request.getfixturevalue("aws")

    def stop(self):
        pass


class Gce:
    """google-api-python-client over HTTP against the GCE simulator (the
    ``gce`` fixture)."""

    body = "providers:" + gce_provider("gce-adapter")
    image = None  # the label's cloud image (an image family)

    def __init__(self, request):
        self.sim = request.getfixturevalue("gce")

    def stop(self):
        pass


class Azure:
    """Our ARM client over HTTP against the Azure simulator (the ``azure``
    fixture)."""

    image = None  # the label's cloud image (a marketplace image)

    def __init__(self, request):
        self.sim = request.getfixturevalue("azure")
        self.body = "providers:" + azure_provider("azure-adapter")

    def stop(self):
        pass


class IbmVpc:
    """IBM's Python SDK over HTTP against the IBM Cloud VPC simulator (the
    ``ibmvpc`` fixture)."""

    image = None  # the label's cloud image (found by an image-filter)

    def __init__(self, request):
        self.sim = request.getfixturevalue("ibmvpc")
        self.body = "providers:" + ibmvpc_provider("ibmvpc-adapter")

    def stop(self):
        pass


class MemCloud:
    body = """
providers:
  - name: memcloud-adapter
    driver: memcloud
    pools:
      - name: main
        labels:
          - name: a
"""
    image = None

    def __init__(self):
        drivers.register("memcloud", "memcloud")

    def stop(self):
        pass


class Kubernetes:
    """The kubernetes-family drivers through the official client over HTTP
    against the Kubernetes simulator; label "a" is a pod."""

    image = None
    pool = "main"
    label = """
        labels:
          - name: a
            type: pod
            image: registry.example.org/fedora:40
            cpu: 1
            memory: 512
"""

    def __init__(self, driver, tmp_path, monkeypatch):
        from nodepool.testing.kubernetes_sim import KubernetesSimulator
        self.sim = KubernetesSimulator(openshift=driver == "openshift").start()
        monkeypatch.setenv("KUBECONFIG", self.sim.write_kubeconfig(tmp_path / "kubeconfig"))
        label = self.label
        if driver == "openshiftpods":
            self.pool = "ci-project"
            self.sim.add_namespace(self.pool)
            label = label.replace("            type: pod\n", "")
        self.body = f"""
providers:
  - name: {driver}-adapter
    driver: {driver}
    context: sim-admin
    pools:
      - name: {self.pool}
{label}"""

    def stop(self):
        self.sim.stop()


@pytest.fixture(params=["fake", "openstack", "memcloud", "aws", "gce", "azure",
                        "ibmvpc", "kubernetes", "openshift", "openshiftpods"])
def cloud(request, tmp_path, monkeypatch):
    if request.param == "fake":
        instance = Fake()
    elif request.param == "openstack":
        instance = OpenStack(tmp_path, monkeypatch)
    elif request.param == "aws":
        instance = Aws(request)
    elif request.param == "gce":
        instance = Gce(request)
    elif request.param == "azure":
        instance = Azure(request)
    elif request.param == "ibmvpc":
        instance = IbmVpc(request)
    elif request.param == "memcloud":
        instance = MemCloud()
    else:
        instance = Kubernetes(request.param, tmp_path, monkeypatch)
    provider = provider_of(instance.body)
    adapter = drivers.make_adapter(provider)
    instance.provider, instance.adapter = provider, adapter
    instance.label = provider.pools[getattr(instance, "pool", "main")].labels["a"]
    yield instance
    adapter.stop()
    instance.stop()


def create(cloud, node_id="0000000042"):
    metadata = {META_PROVIDER: cloud.provider.name, META_NODE_ID: node_id,
                "nodepool_pool_name": getattr(cloud, "pool", "main")}
    machine = cloud.adapter.create_state_machine(
        f"np{node_id}", cloud.label, cloud.image, metadata, None, None)
    return run(machine)


def listed(cloud):
    return {i.external_id: i for i in cloud.adapter.list_instances()}


def test_a_created_instance_is_reachable_and_listed_with_its_metadata(cloud):
    assert drivers.capabilities(cloud.provider).launches_instances
    instance = create(cloud)
    assert instance is not None and instance.external_id
    assert instance.interface_ip or instance.private_ipv4
    seen = listed(cloud)[instance.external_id]
    assert seen.metadata[META_NODE_ID] == "0000000042"
    assert seen.metadata[META_PROVIDER] == cloud.provider.name


def test_a_deleted_instance_leaves_the_listing(cloud):
    instance = create(cloud)
    run(cloud.adapter.delete_state_machine(instance.external_id))
    assert instance.external_id not in listed(cloud)


def test_deleting_what_is_already_gone_completes(cloud):
    instance = create(cloud)
    run(cloud.adapter.delete_state_machine(instance.external_id))
    # A retried delete (after a launcher restart, say) must end, not fail.
    machine = cloud.adapter.delete_state_machine(instance.external_id)
    try:
        run(machine)
    except drivers.NotFound:
        pass  # also accepted: the launcher counts NotFound as deleted


def test_a_label_says_what_one_node_uses(cloud):
    need = cloud.adapter.quota_for_label(cloud.label)
    assert isinstance(need, Resources) and need.get_amount("instances") == 1
    assert cloud.adapter.label_ready(cloud.label)


def test_quota_limits_are_resources(cloud):
    limits = cloud.adapter.quota_limits()
    assert isinstance(limits, Resources)
    assert limits.get_amount("instances") >= 1


# -- inventory drivers --------------------------------------------------------------


@pytest.fixture
def static():
    servers = [SSHServer().start() for _ in range(2)]
    live, gone = servers
    provider = provider_of(f"""
providers:
  - name: static-adapter
    driver: static
    pools:
      - name: main
        nodes:
          - name: 127.0.0.1
            connection-port: {live.port}
            labels: [a]
            max-parallel-jobs: 2
          - name: 127.0.0.1
            connection-port: {gone.port}
            labels: [a]
            timeout: 2
""")
    adapter = drivers.make_adapter(provider)
    yield provider, adapter, servers
    adapter.stop()
    for server in servers:
        server.stop()


def test_an_inventory_adapter_lists_describes_and_checks_its_hosts(static):
    provider, adapter, (live, gone) = static
    assert not drivers.capabilities(provider).launches_instances
    hosts = adapter.hosts(provider.pools["main"])
    assert [(h.connection_port, h.slots) for h in hosts] == [(live.port, 2),
                                                            (gone.port, 1)]
    found = adapter.describe_host(hosts[0])
    assert set(found.host_keys) == set(live.host_keys)
    assert found.interface_ip == "127.0.0.1" and found.connection_port == live.port
    gone.stop()
    assert adapter.alive(hosts[0]) and not adapter.alive(hosts[1])
    with pytest.raises(Exception):
        adapter.describe_host(hosts[1])
