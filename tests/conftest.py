"""Shared fixtures: a real ZooKeeper server, one chroot per test.

The server (Debian's ``zookeeper`` package) starts once per test session on a
free loopback port; each test gets its own chroot, removed afterwards, so
tests cannot see each other's data. A TLS-enabled server starts only if a
test asks for it.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
import uuid

import pytest
from kazoo.client import KazooClient

from nodepool.testing.zkserver import TCPProxy, ZooKeeperServerProcess  # noqa: E402
from nodepool.testing.zuul_client import FakeZuul  # noqa: E402

from nodepool.zk.client import ZooKeeperClient  # noqa: E402
from nodepool.zk.store import Store  # noqa: E402

CHROOT_BASE = "/nodepool_test"

# kazoo logs every packet at DEBUG; nodepool's own DEBUG logs are what help.
logging.getLogger("kazoo").setLevel(logging.INFO)
# boto3 logs every request, header and body at DEBUG.
for _name in ("botocore", "boto3", "urllib3", "s3transfer"):
    logging.getLogger(_name).setLevel(logging.INFO)


@pytest.fixture(scope="session")
def zk_server():
    workdir = tempfile.mkdtemp(prefix="nodepool-zk-")
    server = ZooKeeperServerProcess(workdir)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def zk_tls_server():
    workdir = tempfile.mkdtemp(prefix="nodepool-zk-tls-")
    server = ZooKeeperServerProcess(workdir, tls=True)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def zk_admin(zk_server):
    """A chroot-less client for set-up and clean-up."""
    client = KazooClient(hosts=zk_server.hosts)
    client.start(timeout=15)
    yield client
    client.stop()
    client.close()


@pytest.fixture
def zk_chroot(zk_server, zk_admin):
    chroot = f"{CHROOT_BASE}/{uuid.uuid4().hex}"
    zk_admin.ensure_path(chroot)
    yield chroot
    try:
        zk_admin.delete(chroot, recursive=True)
    except Exception:
        logging.getLogger("tests").exception("cannot remove chroot %s", chroot)


@pytest.fixture
def zk_hosts(zk_server, zk_chroot):
    """Connection string (server + this test's chroot)."""
    return f"{zk_server.hosts}{zk_chroot}"


@pytest.fixture
def make_zk_client(zk_hosts):
    """Factory of connected nodepool clients; all disconnected at the end."""
    clients = []

    def make(hosts: str | None = None, timeout: float = 10.0, **kwargs):
        client = ZooKeeperClient(hosts or zk_hosts, timeout=timeout, **kwargs)
        client.connect(timeout=15)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.disconnect()


@pytest.fixture
def zk_client(make_zk_client):
    return make_zk_client()


@pytest.fixture
def store(zk_client):
    return Store(zk_client)


@pytest.fixture
def zuul(zk_hosts):
    fake = FakeZuul(zk_hosts)
    yield fake
    fake.stop()


@pytest.fixture
def statsd(monkeypatch):
    """A real UDP statsd receiver, with STATSD_HOST/PORT pointing at it for
    everything the test starts in this process."""
    from nodepool.testing.statsd_receiver import StatsReceiver
    receiver = StatsReceiver()
    monkeypatch.setenv("STATSD_HOST", "127.0.0.1")
    monkeypatch.setenv("STATSD_PORT", str(receiver.port))
    yield receiver
    receiver.stop()


@pytest.fixture
def sim(tmp_path, monkeypatch, request):
    """The OpenStack API simulator on loopback, with a clouds.yaml entry
    ``sim`` pointing at it. A test shapes the cloud with
    ``@pytest.mark.sim(max_volumes=1, ...)``."""
    import yaml
    from nodepool.testing.openstack_sim import OpenStackSimulator  # tools/
    marker = request.node.get_closest_marker("sim")
    options = {"boot_delay": 0.1, **(marker.kwargs if marker else {})}
    simulator = OpenStackSimulator(**options).start()
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(yaml.safe_dump(simulator.clouds_yaml()))
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))
    yield simulator
    simulator.stop()


@pytest.fixture(scope="session")
def aws_server():
    """moto's AWS server (with the calls it lacks filled in) in a process of
    its own on a free loopback port, once per session."""
    from nodepool.testing.aws_sim import AWSSimulator
    simulator = AWSSimulator().start()
    yield simulator
    simulator.stop()


@pytest.fixture
def aws(aws_server, monkeypatch):
    """The AWS server emptied for this test, with boto3 pointed at it the way
    an operator points it anywhere: AWS_ENDPOINT_URL and credentials in the
    environment."""
    aws_server.reset()
    for key, value in aws_server.env().items():
        monkeypatch.setenv(key, value)
    return aws_server


@pytest.fixture
def gce(tmp_path, monkeypatch, request):
    """The GCE Compute API simulator on loopback, with the client pointed at
    it the way an operator points it anywhere: a service-account key file in
    GOOGLE_APPLICATION_CREDENTIALS (its token exchange is the simulator's)
    and gcloud's Compute endpoint override. A test shapes the cloud with
    ``@pytest.mark.gce(cpus=4, ...)``."""
    from nodepool.testing.gce_sim import GceSimulator
    marker = request.node.get_closest_marker("gce")
    simulator = GceSimulator(**(marker.kwargs if marker else {})).start()
    for key, value in simulator.env(tmp_path / "gce-credentials.json").items():
        monkeypatch.setenv(key, value)
    yield simulator
    simulator.stop()


@pytest.fixture
def azure(tmp_path, monkeypatch, request):
    """The Azure Resource Manager simulator on loopback, reached the way an
    operator reaches Azure: a service principal's credentials file (its
    token and ARM endpoints the simulator's), named in $AZURE_SIM_AUTH for
    ``launcher_fixtures.azure_provider``'s auth-path. A test shapes the
    cloud with ``@pytest.mark.azure(cores=4, ...)``."""
    from nodepool.testing.azure_sim import AzureSimulator
    marker = request.node.get_closest_marker("azure")
    simulator = AzureSimulator(**(marker.kwargs if marker else {})).start()
    monkeypatch.setenv("AZURE_SIM_AUTH",
                       simulator.auth_file(tmp_path / "azure-credentials.json"))
    yield simulator
    simulator.stop()


@pytest.fixture
def ibmvpc(tmp_path, monkeypatch, request):
    """The IBM Cloud VPC simulator on loopback, reached the way an operator
    reaches IBM Cloud: an IBM credentials file (API key, IAM and service
    addresses the simulator's), named in $IBMVPC_SIM_CREDENTIALS for
    ``launcher_fixtures.ibmvpc_provider``'s credentials-file, and its object
    storage endpoint in $IBMVPC_SIM_COS. A test shapes the cloud with
    ``@pytest.mark.ibmvpc(instances=2, ...)``."""
    from nodepool.testing.ibmvpc_sim import IbmVpcSimulator
    marker = request.node.get_closest_marker("ibmvpc")
    simulator = IbmVpcSimulator(**(marker.kwargs if marker else {})).start()
    monkeypatch.setenv("IBMVPC_SIM_CREDENTIALS",
                       simulator.credentials_file(tmp_path / "ibm-credentials.env"))
    monkeypatch.setenv("IBMVPC_SIM_COS", simulator.cos_endpoint)
    yield simulator
    simulator.stop()


@pytest.fixture
def kube(tmp_path, monkeypatch, request):
    """The Kubernetes API simulator on loopback, with $KUBECONFIG naming a
    kubeconfig whose context ``sim-admin`` reaches it as its administrator.
    A test shapes the cluster with ``@pytest.mark.kube(openshift=True, ...)``."""
    from nodepool.testing.kubernetes_sim import KubernetesSimulator
    marker = request.node.get_closest_marker("kube")
    simulator = KubernetesSimulator(**(marker.kwargs if marker else {})).start()
    monkeypatch.setenv("KUBECONFIG",
                       simulator.write_kubeconfig(tmp_path / "kubeconfig"))
    yield simulator
    simulator.stop()


@pytest.fixture
def zk_proxy(zk_server):
    """A TCP proxy in front of the server, to drop connections on purpose."""
    proxy = TCPProxy(zk_server.port)
    yield proxy
    proxy.stop()


def expire_session(client: ZooKeeperClient, server_hosts: str, timeout: float = 15.0
                   ) -> None:
    """Make the server expire ``client``'s session, as a long partition would.

    A second connection that presents the same session id and password and
    then closes ends the session on the server; the first client is told its
    session expired.
    """
    session_id, password = client.kazoo.client_id
    generation = client.session_generation
    twin = KazooClient(hosts=server_hosts, client_id=(session_id, password))
    twin.start(timeout=15)
    twin.stop()
    twin.close()
    deadline = time.monotonic() + timeout
    while client.session_generation == generation:
        if time.monotonic() > deadline:
            raise TimeoutError("the session did not expire")
        time.sleep(0.01)


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.01,
               message: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{message} not met within {timeout}s")
        time.sleep(interval)


def alive(pid: int) -> bool:
    """The process runs (a zombie waiting to be reaped has stopped)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            # The state follows the command name, which may hold spaces.
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# The launcher ``env`` fixture, for every functional test. Imported last:
# launcher_fixtures uses the helpers above.
from launcher_fixtures import env  # noqa: E402,F401
