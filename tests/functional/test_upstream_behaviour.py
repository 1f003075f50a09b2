"""What Zuul and dashboards see behaves as upstream Nodepool 11's does: node
records' login fields, server metadata from dynamic properties, the console
log of a host that never answered, launch error metrics, image formats from
clouds.yaml vendor profiles, and statsd gauges of unlimited values."""

import logging
import os
import re
import signal
import socket
import subprocess
import sys

import pytest
import yaml

from conftest import expire_session, wait_until
from launcher_fixtures import add_upload, sim_provider
from nodepool.testing.statsd_receiver import StatsReceiver

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FAKE_IMAGES = """
labels:
  - name: cloudy
  - name: named
  - name: dib
providers:
  - name: fake-cloud
    cloud: fake
    rate: 0.001
{provider_extra}
    cloud-images:
      - name: plain
        image-name: Fake Precise
      - name: with-user
        image-name: Fake Precise
        username: ubuntu
    diskimages:
      - name: debian
    pools:
      - name: main
{pool_extra}
        labels:
          - name: cloudy
            cloud-image: plain
            min-ram: 1
          - name: named
            cloud-image: with-user
            min-ram: 1
          - name: dib
            diskimage: debian
            min-ram: 1
diskimages:
  - name: debian
{diskimage_extra}
"""


def fake_images(provider_extra="", pool_extra="        max-servers: 5",
                diskimage_extra=""):
    return FAKE_IMAGES.format(provider_extra=provider_extra, pool_extra=pool_extra,
                              diskimage_extra=diskimage_extra)


def launch(zuul, label, **kwargs) -> dict:
    request = zuul.wait_for_request(zuul.submit([label], **kwargs), timeout=30)
    assert request["state"] == "fulfilled", request
    return zuul.get_node(request["nodes"][0])


# -- 1, 2: the node record's login fields and node_properties ------------------

def test_cloud_image_without_username_leaves_it_to_zuul(env, zuul):
    """Upstream's cloud-image username defaults to None, which Zuul's
    executor replaces with its default_username; the record carries an
    explicit null (and node_properties, empty)."""
    env.start(env.config(fake_images()))
    node = launch(zuul, "cloudy")
    assert "username" in node and node["username"] is None
    assert node["python_path"] == "auto" and node["shell_type"] is None
    assert node["node_properties"] == {}
    assert launch(zuul, "named")["username"] == "ubuntu"


# -- 3: login fields from the configuration of now, not of the build -----------

def test_login_fields_come_from_the_current_diskimage_config(env, zuul, store):
    path = env.config(fake_images(diskimage_extra=(
        "    username: ci\n    python-path: /usr/bin/python3\n    shell-type: sh")))
    launcher = env.start(path)
    # The builder recorded the image's login fields as they were at build time.
    upload = add_upload(store, "debian", "fake-cloud")
    assert (upload.username, upload.python_path, upload.shell_type) == \
        ("zuul", "auto", None)
    wait_until(lambda: launcher.images.latest_ready_upload("debian", "fake-cloud"),
               message="upload cached")
    node = launch(zuul, "dib")
    assert (node["username"], node["python_path"], node["shell_type"]) == \
        ("ci", "/usr/bin/python3", "sh")
    assert node["node_properties"] == {}
    assert (node["connection_type"], node["connection_port"]) == ("ssh", 22)
    # The operator changes the diskimage (and how the provider reaches it);
    # the same upload serves the new values.
    env.rewrite(path, fake_images(diskimage_extra="    username: admin").replace(
        "      - name: debian\n    pools:",
        "      - name: debian\n        connection-type: winrm\n    pools:"))
    wait_until(lambda: launcher.config.diskimages["debian"].username == "admin"
               and launcher.managers["fake-cloud"].provider.diskimages[
                   "debian"].connection_type == "winrm", message="new config applied")
    node = launch(zuul, "dib")
    assert (node["username"], node["python_path"], node["shell_type"]) == \
        ("admin", "auto", None)
    assert (node["connection_type"], node["connection_port"]) == ("winrm", 5986)
    # No username at all: upstream's diskimage default, "zuul".
    env.rewrite(path, fake_images())
    wait_until(lambda: launcher.config.diskimages["debian"].username == "zuul",
               message="username removed")
    assert launch(zuul, "dib")["username"] == "zuul"


# -- 4: dynamic-instance-properties over the request's safe attributes ---------

DYNAMIC = """
            dynamic-instance-properties:
              request-id: '{request.id}'
              labels: '{request.labels}'
              requestor: 'by {request.requestor}'
              event: '{request.event_id}'
              tenant: 'tenant={request.tenant_name}'
              priority: '{request.relative_priority}'
              build: '{request.requestor_data[build_set_uuid]}'
              created: '{request.created_time}'
              count: 42
              enabled: true
              not-safe: '{request.node_types}'
              broken: '{request.id'
"""


def test_dynamic_properties_see_the_safe_request_attributes(env, sim, zuul, caplog):
    caplog.set_level(logging.WARNING, logger="nodepool.launcher.lifecycle")
    text = "labels:\n  - name: a\nproviders:" + sim_provider(
        "cloud-sim", pool_extra="        host-key-checking: false\n").replace(
        "            min-ram: 1024\n", "            min-ram: 1024\n" + DYNAMIC.lstrip("\n"))
    env.start(env.config(text))
    request_id = zuul.submit(["a"], tenant="acme", relative_priority=3,
                             requestor_data={"build_set_uuid": "b-123"})
    request = zuul.wait_for_request(request_id, timeout=30)
    assert request["state"] == "fulfilled"
    node_id = request["nodes"][0]
    metadata = sim.servers[zuul.get_node(node_id)["external_id"]].metadata
    assert metadata["request-id"] == request_id
    assert metadata["labels"] == "['a']"
    assert metadata["requestor"] == f"by {zuul.system_id}"
    assert metadata["event"] == request["event_id"]
    assert metadata["tenant"] == "tenant=acme"
    assert metadata["priority"] == "3"
    assert metadata["build"] == "b-123"
    assert metadata["created"] == str(request["created_time"])
    # Not strings in YAML: kept as their text (Nova takes only strings).
    assert metadata["count"] == "42" and metadata["enabled"] == "True"
    # Outside the safe attributes, or not a format string: left out, logged.
    assert "not-safe" not in metadata and "broken" not in metadata
    assert f"Node {node_id}: cannot render dynamic instance property not-safe" \
        in caplog.text
    assert metadata["nodepool_node_id"] == node_id


# -- 5: console-log ----------------------------------------------------------------

def closed_port() -> int:
    """A loopback port nothing listens on (the host never answers)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.sim(server_address="127.0.0.1")
@pytest.mark.parametrize("console_log", [True, False])
def test_failed_host_key_scan_logs_the_console(env, sim, zuul, caplog, console_log):
    caplog.set_level(logging.INFO, logger="nodepool.launcher.lifecycle")
    text = "labels:\n  - name: a\nproviders:" + sim_provider(
        "cloud-sim",
        image_extra=f"        connection-port: {closed_port()}\n",
        pool_extra="        host-key-checking: true\n        auto-floating-ip: false\n",
    ).replace("    rate: 0.001\n", "    rate: 0.001\n    boot-timeout: 1\n"
              "    launch-retries: 1\n").replace(
        "            min-ram: 1024\n",
        f"            min-ram: 1024\n            console-log: {str(console_log).lower()}\n")
    env.start(env.config(text))
    request = zuul.wait_for_request(zuul.submit(["a"]), timeout=60)
    assert request["state"] == "failed"
    actions = [path for method, path in sim.requests
               if method == "POST" and path.endswith("/action")]
    headers = [r for r in caplog.records if "console log of instance" in r.getMessage()]
    if not console_log:
        assert actions == [] and headers == []
        return
    [header] = headers
    assert header.levelno == logging.INFO
    node_id, server_id = re.match(r"Node (\d+): console log of instance (\S+):",
                                  header.getMessage()).groups()
    assert actions == [f"/compute/v2.1/servers/{server_id}/action"]
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    # The console as the simulator's server showed it, each line with the node.
    assert f"Node {node_id}: console: [    2.104518] cloud-init: instance " \
           f"{server_id} booting" in lines
    assert f"Node {node_id}: console: np{node_id} login:" in lines
    # The attempt still failed and its server was deleted after the fetch.
    wait_until(lambda: server_id not in sim.servers, timeout=20,
               message="failed server deleted")


# -- 6: a launch lost with the ZooKeeper session ---------------------------------

def test_launch_lost_to_session_expiry_counts_as_zksession_error(
        env, zuul, zk_server, statsd):
    launcher = env.start(env.config(fake_images(
        provider_extra="    simulation: {boot-delay: 3}")))
    request_id = zuul.submit(["cloudy"])
    wait_until(lambda: any(n.state == "building" for n in launcher.nodes.nodes()),
               timeout=20, message="a launch in flight")
    expire_session(launcher.client, f"{zk_server.hosts}{env.chroot}")
    requestor = zuul.system_id
    expected = {"nodepool.launch.error.zksession",
                "nodepool.launch.provider.fake-cloud.error.zksession",
                f"nodepool.launch.requestor.{requestor}.error.zksession"}
    assert statsd.wait_for(lambda keys: expected <= keys, timeout=20), \
        "missing: " + ", ".join(sorted(expected - statsd.keys()))
    counts = [p for p in statsd.packets
              if p.startswith("nodepool.launch.error.zksession:")]
    assert "nodepool.launch.error.zksession:1|c" in counts
    assert any(p.endswith("|ms") for p in counts)
    # The request is served after all, by a launch in the new session.
    assert zuul.wait_for_request(request_id, timeout=30)["state"] == "fulfilled"


# -- 7: image format from a clouds.yaml vendor profile ------------------------------

def test_vendor_profile_decides_the_image_format(env, store, tmp_path, monkeypatch):
    """A clouds.yaml cloud with ``profile: dreamcompute`` and no image_format
    of its own: openstacksdk's vendor defaults say raw, so the builder
    builds raw and uploads raw to Glance."""
    from nodepool.config import load_config
    from nodepool.testing.openstack_sim import OpenStackSimulator
    sim = OpenStackSimulator().start()
    try:
        clouds = sim.clouds_yaml()
        entry = clouds["clouds"]["sim"]
        del entry["image_format"]
        entry["profile"] = "dreamcompute"
        path = tmp_path / "clouds.yaml"
        path.write_text(yaml.safe_dump(clouds))
        monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(path))
        images = tmp_path / "images"
        images.mkdir()
        config = env.config(
            f"images-dir: {images}\nbuild-log-dir: {tmp_path / 'logs'}\n"
            "labels:\n  - name: a\n"
            "diskimages:\n  - name: ubuntu\n"
            f"    dib-cmd: {ROOT}/tools/fake-image-create\n"
            "providers:\n  - name: cloud-sim\n    cloud: sim\n"
            "    region-name: RegionOne\n    rate: 0.001\n"
            "    diskimages:\n      - name: ubuntu\n"
            "    pools:\n      - name: main\n        labels:\n"
            "          - name: a\n            diskimage: ubuntu\n"
            "            min-ram: 1024\n")
        loaded = load_config(config)
        assert loaded.providers["cloud-sim"].image_type == "raw"
        assert loaded.diskimages["ubuntu"].formats == ["raw"]
        env.start_builder(config)
        wait_until(lambda: [u for b in store.get_builds("ubuntu")
                            for u in store.get_uploads("ubuntu", b.id, "cloud-sim")
                            if u.state == "ready"], timeout=60,
                   message="uploaded to the simulator")
        [build] = store.get_builds("ubuntu")
        [upload] = store.get_uploads("ubuntu", build.id, "cloud-sim")
        assert build.formats == ["raw"] and upload.format == "raw"
        assert sim.images[upload.external_id]["disk_format"] == "raw"
    finally:
        sim.stop()


def test_image_format_of_the_cloud_entry_beats_its_profile(tmp_path, monkeypatch):
    from nodepool.drivers.openstack import clouds
    path = tmp_path / "clouds.yaml"
    path.write_text(yaml.safe_dump({"clouds": {
        "own": {"profile": "rackspace", "image_format": "qcow2"},
        "vendor": {"profile": "rackspace"},
        "legacy": {"cloud": "dreamcompute"},
        "unknown": {"profile": "no-such-vendor"}}}))
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(path))
    assert clouds.image_format("own") == "qcow2"
    assert clouds.image_format("vendor") == "vhd"
    assert clouds.image_format("legacy") == "raw"
    assert clouds.image_format("unknown") == "qcow2"


# -- 8: statsd with STATSD_PORT alone; gauges of unlimited values ----------------

def gauge_values(receiver, key):
    return [p.split(":", 1)[1] for p in list(receiver.packets)
            if p.split(":", 1)[0] == key]


UNLIMITED = fake_images(pool_extra="") + """
tenant-resource-limits:
  - tenant-name: acme.org
    max-cores: 8
"""


@pytest.fixture
def port_only_statsd(monkeypatch):
    receiver = StatsReceiver()
    monkeypatch.delenv("STATSD_HOST", raising=False)
    monkeypatch.setenv("STATSD_PORT", str(receiver.port))
    yield receiver
    receiver.stop()


def test_statsd_port_alone_and_unlimited_gauges(env, zuul, port_only_statsd):
    receiver = port_only_statsd
    env.start(env.config(UNLIMITED))
    key = "nodepool.provider.fake-cloud.max_servers"
    wait_until(lambda: gauge_values(receiver, key), timeout=20,
               message="max_servers gauge sent to localhost")
    # No max-servers: unlimited, sent as upstream sends math.inf.
    assert gauge_values(receiver, key)[-1] == "inf|g"
    prefix = "nodepool.tenant_limits.acme_org"
    wait_until(lambda: gauge_values(receiver, f"{prefix}.ram"), timeout=10,
               message="tenant limits")
    assert gauge_values(receiver, f"{prefix}.cores")[-1] == "8|g"
    assert gauge_values(receiver, f"{prefix}.instances")[-1] == "inf|g"
    assert gauge_values(receiver, f"{prefix}.ram")[-1] == "inf|g"
    assert not gauge_values(receiver, f"{prefix}.volumes")
    launch(zuul, "cloudy")
    assert receiver.wait_for(lambda keys: "nodepool.launch.ready" in keys)


def test_max_servers_gauge_sums_the_limited_pools(env, port_only_statsd):
    receiver = port_only_statsd
    text = fake_images(pool_extra="        max-servers: 3").replace(
        "    pools:\n", "    pools:\n      - name: disabled\n        max-servers: 0\n"
        "        labels: []\n", 1)
    env.start(env.config(text))
    key = "nodepool.provider.fake-cloud.max_servers"
    wait_until(lambda: gauge_values(receiver, key), timeout=20, message="gauge")
    assert gauge_values(receiver, key)[-1] == "3|g"


def test_launcher_daemon_sends_metrics_with_only_statsd_port(env, tmp_path):
    receiver = StatsReceiver()
    environ = {k: v for k, v in os.environ.items() if k != "STATSD_HOST"}
    environ["STATSD_PORT"] = str(receiver.port)
    config = env.config(fake_images() + "webapp: {port: 0, listen_address: 127.0.0.1}\n")
    process = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "nodepool-launcher"),
         "-c", config, "-f"], env=environ, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        assert receiver.wait_for(
            lambda keys: "nodepool.provider.fake-cloud.max_servers" in keys,
            timeout=30), "no gauge from the daemon"
        assert gauge_values(receiver, "nodepool.provider.fake-cloud.max_servers")[-1] \
            == "5|g"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        receiver.stop()
