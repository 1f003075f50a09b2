"""The node and provider subcommands, run as subprocesses against the real
ZooKeeper, a launcher, and (for cloud-side actions) the OpenStack
simulator."""

import json
import os
import subprocess
import sys

from conftest import wait_until
from launcher_fixtures import FAKE_PROVIDER, add_upload


SIM_PROVIDER = """
labels:
  - name: small
providers:
  - name: cloud-sim
    cloud: sim
    region-name: RegionOne
    rate: 0.001
    diskimages:
      - name: ubuntu
    cloud-images:
      - name: ubuntu-cloud
        image-id: ubuntu-image-id
    pools:
      - name: main
        max-servers: 5
        host-key-checking: false
        auto-floating-ip: false
        labels:
          - name: small
            cloud-image: ubuntu-cloud
            min-ram: 1024
diskimages:
  - name: ubuntu
    elements: [vm]
"""


def nodepool(path, *args, stdin=None):
    return subprocess.run([sys.executable, "-m", "nodepool.cmd.nodepool", "-c", path,
                           *args], capture_output=True, text=True, timeout=120,
                          input=stdin, env=dict(os.environ))


def test_hold_and_delete(env, zuul):
    path = env.config("labels:\n  - name: small\nproviders:" + FAKE_PROVIDER)
    env.start(path)
    first, second = (zuul.wait_for_request(zuul.submit(["small"]))["nodes"][0]
                     for _ in range(2))
    held = nodepool(path, "hold", first, "--reason", "debugging", "--json")
    assert held.returncode == 0, held.stderr
    [row] = json.loads(held.stdout)
    assert row["id"] == first and row["state"] == "hold"
    assert zuul.get_node(first)["comment"] == "debugging"
    deleted = nodepool(path, "delete", second)
    assert deleted.returncode == 0 and second in deleted.stdout
    wait_until(lambda: zuul.get_node(second) is None, timeout=20,
               message="the launcher deleted the node")
    assert zuul.get_node(first)["state"] == "hold"  # held nodes stay
    missing = nodepool(path, "hold", "0000099999")
    assert missing.returncode == 0 and "Node id 0000099999 not found" in missing.stdout
    # A node locked by its user cannot be held from under it.
    third = zuul.wait_for_request(zuul.submit(["small"]))["nodes"][0]
    zuul.lock_node(third)
    busy = nodepool(path, "hold", third)
    assert busy.returncode == 1 and "locked by someone else" in busy.stderr
    assert "Traceback" not in busy.stderr


def test_delete_now_removes_the_instance_from_the_cloud(env, zuul, sim):
    path = env.config(SIM_PROVIDER)
    launcher = env.start(path)
    node_id = zuul.wait_for_request(zuul.submit(["small"]), timeout=30)["nodes"][0]
    server_id = zuul.get_node(node_id)["external_id"]
    launcher.stop()  # nobody else to do it
    result = nodepool(path, "delete", "--now", node_id)
    assert result.returncode == 0, result.stderr
    assert server_id not in sim.servers
    assert zuul.get_node(node_id) is None


def test_info_and_erase(env, zuul, store, tmp_path):
    path = env.config("labels:\n  - name: small\nproviders:" + FAKE_PROVIDER)
    launcher = env.start(path)
    node_id = zuul.wait_for_request(zuul.submit(["small"]))["nodes"][0]
    upload = add_upload(store, "ubuntu", "fake-cloud")
    add_upload(store, "ubuntu", "other-cloud")
    info = nodepool(path, "info", "fake-cloud")
    assert info.returncode == 0, info.stderr
    assert "ZooKeeper data for provider fake-cloud" in info.stdout
    assert f"| ubuntu     | {upload.build_id} | {upload.id}" in info.stdout
    assert node_id in info.stdout
    launcher.stop()
    aborted = nodepool(path, "erase", "fake-cloud", stdin="n\n")
    assert "Aborting. No data erased." in aborted.stdout
    assert zuul.get_node(node_id) is not None
    erased = nodepool(path, "erase", "fake-cloud", "--force")
    assert erased.returncode == 0, erased.stderr
    assert zuul.get_node(node_id) is None
    assert store.get_uploads("ubuntu", upload.build_id, "fake-cloud") == []
    # Other providers' data is untouched.
    [kept] = [b for b in store.get_builds("ubuntu")
              if "other-cloud" in store.upload_providers("ubuntu", b.id)]
    assert store.get_uploads("ubuntu", kept.id, "other-cloud")


def test_label_list(env):
    path = env.config("labels:\n  - name: small\n  - name: large\nproviders:"
                      + FAKE_PROVIDER + FAKE_PROVIDER.replace("fake-cloud", "fake-second")
                      .replace("name: small", "name: large"))
    env.start(path)
    wanted = [{"label": "large"}, {"label": "small"}]
    wait_until(lambda: json.loads(nodepool(path, "label-list", "--json").stdout)
               == wanted, timeout=15, message="both pools' labels listed")
    assert "| Label " in nodepool(path, "label-list").stdout


def test_alien_image_list(env, store, sim):
    path = env.config(SIM_PROVIDER)
    known = sim.add_image("ubuntu-known", properties={"nodepool_build_id": "b1",
                                                      "nodepool_upload_id": "1"})
    alien = sim.add_image("ubuntu-alien", properties={"nodepool_build_id": "b0",
                                                      "nodepool_upload_id": "7"})
    add_upload(store, "ubuntu", "cloud-sim", external_id=known["id"])
    result = nodepool(path, "alien-image-list", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [
        {"provider": "cloud-sim", "name": "ubuntu-alien", "id": alien["id"]}]
    # The pre-existing public image is not nodepool's: not listed.
    unknown = nodepool(path, "alien-image-list", "nosuch")
    assert unknown.returncode == 1 and "no image-managing provider" in unknown.stderr
