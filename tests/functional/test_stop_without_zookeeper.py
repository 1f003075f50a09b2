"""SIGTERM ends a daemon within seconds when ZooKeeper cannot be reached:
before it ever connected, and when the server stops while it runs (with
requests in hand, for the launcher)."""

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import wait_until
from launcher_fixtures import FAKE_PROVIDER
from nodepool.testing.zkserver import ZooKeeperServerProcess, free_port
from nodepool.testing.zuul_client import FakeZuul

BIN = os.path.dirname(sys.executable)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STOP_WITHIN = 10.0

CONFIG = """
zookeeper-servers:
  - host: 127.0.0.1
    port: {port}
zookeeper-timeout: 5
images-dir: {images}
build-log-dir: {builds}
labels:
  - name: small
diskimages:
  - name: ubuntu
    dib-cmd: {root}/tools/fake-image-create
providers:""" + FAKE_PROVIDER.replace("    cloud: fake\n", """    cloud: fake
    simulation: {{boot-delay: 60}}
    diskimages:
      - name: ubuntu
""", 1)


def write_config(tmp_path, port: int) -> str:
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    path = tmp_path / "nodepool.yaml"
    path.write_text(CONFIG.format(port=port, images=images, builds=tmp_path / "builds",
                                  root=ROOT))
    return str(path)


@contextlib.contextmanager
def running(program: str, config: str, log_path):
    """The daemon in the foreground; killed at the end if still alive."""
    extra = ["--no-webapp"] if program == "nodepool-launcher" else []
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [os.path.join(BIN, program), "-f", "-c", config, *extra],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def stop_and_time(process: subprocess.Popen) -> float:
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_WITHIN + 20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail("SIGTERM did not stop the daemon within 30 s")
    return time.monotonic() - started


@pytest.mark.parametrize("program", ["nodepool-launcher", "nodepool-builder"])
def test_sigterm_while_zookeeper_was_never_reachable(tmp_path, program):
    config = write_config(tmp_path, free_port())  # nothing listens there
    log_path = tmp_path / "daemon.log"
    with running(program, config, log_path) as process:
        wait_until(lambda: b"Still trying to connect" in log_path.read_bytes(),
                   timeout=20, message="the daemon waits for ZooKeeper")
        took = stop_and_time(process)
    assert took < STOP_WITHIN, log_path.read_text()[-3000:]
    assert process.returncode == 0


@pytest.fixture
def own_zookeeper(tmp_path):
    """A server of this test's own, which the test stops."""
    server = ZooKeeperServerProcess(str(tmp_path / "zk"))
    os.makedirs(server.workdir, exist_ok=True)
    server.start()
    yield server
    server.stop()


@pytest.mark.parametrize("program", ["nodepool-launcher", "nodepool-builder"])
def test_sigterm_after_zookeeper_went_away(tmp_path, own_zookeeper, program):
    config = write_config(tmp_path, own_zookeeper.port)
    log_path = tmp_path / "daemon.log"
    zuul = FakeZuul(own_zookeeper.hosts)
    with running(program, config, log_path) as process:
        kind = "pool" if program == "nodepool-launcher" else "builder"
        wait_until(lambda: zuul.kazoo.exists(f"/nodepool/components/{kind}") and
                   zuul.kazoo.get_children(f"/nodepool/components/{kind}"),
                   timeout=30, message="the daemon registered")
        if program == "nodepool-launcher":
            # Requests in hand: launches that take a minute.
            requests = [zuul.submit(["small"]) for _ in range(3)]
            wait_until(lambda: all(zuul.get_request(r)["state"] == "pending"
                                   for r in requests),
                       timeout=30, message="requests accepted")
        zuul.stop()
        own_zookeeper.stop()
        time.sleep(1.0)
        took = stop_and_time(process)
    assert took < STOP_WITHIN, log_path.read_text()[-3000:]
    assert process.returncode == 0
