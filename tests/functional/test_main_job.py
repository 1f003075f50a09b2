"""The README's main job and the listing commands, run as an operator would."""

import json
import os
import subprocess
import sys

from launcher_fixtures import FAKE_PROVIDER

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_quickstart_brings_up_the_pool_and_stops_cleanly():
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "quickstart.py")],
        env=dict(os.environ, NODEPOOL_QUICKSTART_ONCE="1"), capture_output=True,
        text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    table = [line for line in result.stdout.splitlines() if "| fake-cloud" in line]
    labels = sorted(line.split("|")[3].strip() for line in table)
    assert labels == ["debian-small"] * 3 + ["ubuntu-large"]
    assert all("| ready" in line for line in table)
    assert "Starting nodepool-builder" in result.stdout and "Stopping" in result.stdout


def test_list_and_request_list(env, zuul):
    path = env.config("labels:\n  - name: small\nproviders:" + FAKE_PROVIDER)
    env.start(path)
    request_id = zuul.submit(["small"])
    node_id = zuul.wait_for_request(request_id)["nodes"][0]
    zuul.lock_node(node_id)
    waiting = zuul.submit(["nothing-serves-this"], priority="100")
    zuul.wait_for_request(waiting)

    def nodepool(*args):
        return subprocess.run([sys.executable, "-m", "nodepool.cmd.nodepool", "-c",
                               path, *args], capture_output=True, text=True,
                              timeout=60)

    listed = json.loads(nodepool("list", "--json").stdout)
    [row] = listed
    assert row["id"] == node_id and row["locked"] == "locked"
    assert row["label"] == ["small"] and row["state"] == "ready"
    assert "launcher" not in row
    detail = json.loads(nodepool("list", "--detail", "--json").stdout)[0]
    assert detail["allocated_to"] == request_id and detail["AZ"] in ("az1", "az2")
    table = nodepool("list").stdout
    assert table.splitlines()[1].startswith("| ID ") and node_id in table
    requests = json.loads(nodepool("request-list", "--json").stdout)
    assert [r["id"] for r in requests] == [waiting, request_id]
    assert requests[0]["state"] == "failed"


def test_unreachable_zookeeper_is_a_clear_error(tmp_path):
    from nodepool.testing.zkserver import free_port
    path = tmp_path / "nodepool.yaml"
    path.write_text(f"zookeeper-servers:\n  - host: 127.0.0.1\n    port: {free_port()}\n")
    result = subprocess.run([sys.executable, "-m", "nodepool.cmd.nodepool", "-c",
                             str(path), "list"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1
    assert "cannot reach ZooKeeper at 127.0.0.1:" in result.stderr
    assert "Traceback" not in result.stderr
