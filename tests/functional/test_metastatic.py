"""The metastatic driver end to end: slots of backing nodes launched by the
fake and static drivers, driven by Zuul's side of the protocol."""

import json
import os
import subprocess
import sys

import pytest

from conftest import wait_until
from launcher_fixtures import crash
from nodepool.drivers.fake.adapter import FakeCloud
from nodepool.testing.sshdserver import SSHServer
from nodepool.zk.records import NodeState

OWNER = "NodePool:metastatic:meta"
ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def fake_backed(jobs=3, grace=60, extra_label_keys="", extra_labels=""):
    return f"""
labels:
  - name: large
  - name: small
  - name: nowhere
{extra_labels}
providers:
  - name: fake-cloud
    cloud: fake
    rate: 0.001
    cloud-images:
      - name: precise
        image-name: Fake Precise
    pools:
      - name: main
        max-servers: 10
        labels:
          - name: large
            cloud-image: precise
            min-ram: 1
  - name: meta
    driver: metastatic
    launch-retries: 1
    pools:
      - name: main
        max-servers: 20
        node-attributes: {{meta: yes}}
        labels:
          - name: small
            backing-label: large
            max-parallel-jobs: {jobs}
            grace-time: {grace}
{extra_label_keys}
"""


def servers():
    return FakeCloud.get("fake").list_servers()


def live_servers():
    return [s for s in servers() if s.deleted_at is None]


def backing_nodes(launcher):
    return [n for n in launcher.nodes.nodes() if n.provider == "fake-cloud"]


def meta_nodes(launcher):
    return [n for n in launcher.nodes.nodes() if n.provider == "meta"]


def run_requests(zuul, count, label="small"):
    ids = [zuul.submit([label]) for _ in range(count)]
    return [zuul.wait_for_request(i, timeout=30) for i in ids], ids


def take(zuul, request_ids):
    nodes = []
    for request_id in request_ids:
        nodes += zuul.accept(request_id)
    zuul.use(nodes)
    return nodes


def lock_data(zuul, node_id):
    path = f"/nodepool/nodes/{node_id}/lock"
    names = sorted(zuul.kazoo.get_children(path), key=lambda c: c[-10:])
    return [zuul.kazoo.get(f"{path}/{name}")[0].decode() for name in names]


def test_three_jobs_share_one_backing_node_which_goes_after_the_grace_time(env, zuul):
    path = env.config(fake_backed(jobs=3, grace=3600))
    launcher = env.start(path)
    requests, ids = run_requests(zuul, 3)
    assert [r["state"] for r in requests] == ["fulfilled"] * 3
    nodes = take(zuul, ids)
    # One backing node, its three slots, one instance in the cloud.
    backing = {n["driver_data"]["backing_node"] for n in nodes}
    assert len(backing) == 1 and len(live_servers()) == 1
    (backing_id,) = backing
    assert sorted(n["driver_data"]["slot"] for n in nodes) == [0, 1, 2]
    assert sorted(n["slot"] for n in nodes) == [0, 1, 2]
    held = zuul.get_node(backing_id)
    assert held["state"] == "in-use" and held["type"] == ["large"]
    assert json.loads(held["user_data"]) == {
        "owner": OWNER, "label": "small", "slots": 3, "failed": False,
        "launched": json.loads(held["user_data"])["launched"]}
    assert lock_data(zuul, backing_id) == [OWNER]
    for node in nodes:
        # What Zuul's executor reads to reach the node: the backing node's.
        assert node["interface_ip"] == held["interface_ip"]
        assert node["host_keys"] == held["host_keys"]
        assert node["connection_type"] == held["connection_type"]
        assert node["username"] == held["username"]
        assert node["attributes"] == {"meta": True}
        assert node["driver_data"]["node"] == node["id"]
    # The backing request is gone once its node is held.
    assert not [r for r in launcher.requests.requests() if r.requestor == OWNER]

    # A fourth job finds every slot taken: a second backing node.
    more, more_ids = run_requests(zuul, 1)
    fourth = take(zuul, more_ids)
    assert fourth[0]["driver_data"]["backing_node"] != backing_id
    assert len(live_servers()) == 2

    zuul.release(nodes + fourth)
    wait_until(lambda: not meta_nodes(launcher), timeout=20,
               message="metastatic nodes deleted")
    env.settle()
    # Idle, but within the grace time: both backing nodes are kept.
    assert len(live_servers()) == 2
    assert {n.state for n in backing_nodes(launcher)} == {NodeState.IN_USE}

    env.rewrite(path, fake_backed(jobs=3, grace=0))
    wait_until(lambda: not backing_nodes(launcher) and not live_servers(), timeout=30,
               message="backing nodes released and deleted")


def test_a_restarted_launcher_takes_up_its_backing_nodes_and_slots(env, zuul):
    path = env.config(fake_backed(jobs=3, grace=0))
    launcher = env.start(path)
    _, ids = run_requests(zuul, 2)
    nodes = take(zuul, ids)
    (backing_id,) = {n["driver_data"]["backing_node"] for n in nodes}
    used_slots = sorted(n["driver_data"]["slot"] for n in nodes)

    # Killed: its ZooKeeper session goes, the hold on the backing node stays.
    crash(launcher)
    assert lock_data(zuul, backing_id) == [OWNER]
    restarted = env.start(path)
    wait_until(lambda: restarted.managers["meta"].adapter.held(), timeout=20,
               message="backing node taken up")
    (held,) = restarted.managers["meta"].adapter.held()
    assert held.node_id == backing_id
    assert sorted(i for i, n in enumerate(held.slots) if n) == used_slots

    # The free slot is the one handed out next; no second backing node.
    _, more_ids = run_requests(zuul, 1)
    third = take(zuul, more_ids)
    assert third[0]["driver_data"]["backing_node"] == backing_id
    assert third[0]["driver_data"]["slot"] not in used_slots
    assert len(live_servers()) == 1

    # grace-time 0: once the last job is done the backing node goes.
    zuul.release(nodes)
    env.settle()
    assert zuul.get_node(backing_id)["state"] == "in-use"
    zuul.release(third)
    wait_until(lambda: zuul.get_node(backing_id) is None and not live_servers(),
               timeout=30, message="backing node released after the last job")


def test_a_failed_backing_request_fails_the_request_and_leaves_nothing(env, zuul):
    body = fake_backed().replace("backing-label: large", "backing-label: nowhere")
    launcher = env.start(env.config(body))
    (request,), _ = run_requests(zuul, 1)
    assert request["state"] == "failed"
    env.settle()
    assert not meta_nodes(launcher)
    assert not [r for r in launcher.requests.requests() if r.requestor == OWNER]
    assert not launcher.managers["meta"].adapter.held()


def test_max_age_retires_a_backing_node_once_its_jobs_are_done(env, zuul):
    launcher = env.start(env.config(fake_backed(
        jobs=2, grace=3600, extra_label_keys="            max-age: 1")))
    _, ids = run_requests(zuul, 1)
    first = take(zuul, ids)
    old = first[0]["driver_data"]["backing_node"]
    wait_until(lambda: launcher.managers["meta"].adapter.held()[0].failed, timeout=10,
               message="backing node past max-age")
    # Past max-age: a free slot is not used, a new backing node comes.
    _, more_ids = run_requests(zuul, 1)
    second = take(zuul, more_ids)
    assert second[0]["driver_data"]["backing_node"] != old
    zuul.release(first)
    # Retired: released without waiting for the (long) grace time.
    wait_until(lambda: zuul.get_node(old) is None, timeout=30,
               message="retired backing node deleted")
    assert len(live_servers()) == 1
    zuul.release(second)


@pytest.fixture
def sshd():
    server = SSHServer().start()
    yield server
    server.stop()


def test_slots_of_a_static_host_with_host_key_checking(env, zuul, sshd):
    launcher = env.start(env.config(f"""
labels:
  - name: big-static
  - name: slice
providers:
  - name: rack
    driver: static
    pools:
      - name: main
        nodes:
          - name: 127.0.0.1
            connection-port: {sshd.port}
            labels: [big-static]
            timeout: 3
  - name: meta
    driver: metastatic
    pools:
      - name: main
        host-key-checking: true
        labels:
          - name: slice
            backing-label: big-static
            max-parallel-jobs: 3
            grace-time: 0
"""))
    wait_until(lambda: [n for n in launcher.nodes.nodes() if n.provider == "rack"
                        and n.state == NodeState.READY], timeout=20,
               message="static host registered")
    _, ids = run_requests(zuul, 3, label="slice")
    nodes = take(zuul, ids)
    assert len({n["driver_data"]["backing_node"] for n in nodes}) == 1
    for node in nodes:
        assert node["interface_ip"] == "127.0.0.1"
        assert node["connection_port"] == sshd.port
        # Scanned from the host itself (host-key-checking on the label).
        assert set(node["host_keys"]) == set(sshd.host_keys)
    (static_id,) = {n["driver_data"]["backing_node"] for n in nodes}
    zuul.release(nodes)
    # Given back: the static driver deletes the used slot and registers it
    # again, ready for anyone.
    wait_until(lambda: zuul.get_node(static_id) is None, timeout=30,
               message="static backing node given back")
    wait_until(lambda: [n for n in launcher.nodes.nodes() if n.provider == "rack"
                        and n.state == NodeState.READY], timeout=30,
               message="static host registered again")


def test_example_configuration_validates():
    result = subprocess.run(
        [sys.executable, "-m", "nodepool.cmd.nodepool", "-c",
         os.path.join(ROOT, "doc", "examples", "metastatic.yaml"), "config-validate"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "configuration is valid" in result.stderr


def test_labels_on_one_backing_label_must_agree(tmp_path):
    path = tmp_path / "nodepool.yaml"
    path.write_text(fake_backed(extra_labels="  - name: tiny").replace(
        "            grace-time: 60\n",
        "            grace-time: 60\n          - name: tiny\n"
        "            backing-label: large\n            max-parallel-jobs: 5\n"))
    result = subprocess.run(
        [sys.executable, "-m", "nodepool.cmd.nodepool", "-c", str(path),
         "config-validate"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "providers[1].pools[0].labels[1]: labels on backing label 'large' must " \
        "all have the same max-parallel-jobs" in result.stderr
