"""Hostile znode data (numbers JSON does not allow, numbers that overflow,
nesting too deep to parse) is skipped as corrupt by the launcher, the CLI and
the web server alike, with one short log line each; the rest keeps working."""

import json
import logging
import subprocess
import sys

from conftest import wait_until
from launcher_fixtures import FAKE_PROVIDER
from nodepool.zk import paths

HOSTILE = {
    "nan": b'{"state": "ready", "state_time": NaN, "type": ["small"]}',
    "infinity": b'{"state": "ready", "state_time": Infinity, "type": ["small"]}',
    "overflow": b'{"state": "ready", "state_time": 1e999, "type": ["small"]}',
    "huge-int": b'{"state": "ready", "state_time": 1' + b"0" * 400 + b"}",
    "deep": b'{"state": "ready", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
}


def nodepool(path, *args):
    return subprocess.run([sys.executable, "-m", "nodepool.cmd.nodepool", "-c", path,
                           *args], capture_output=True, text=True, timeout=120)


def fetch_json(launcher, path):
    import urllib.request
    url = f"http://127.0.0.1:{launcher.webapp.port}{path}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, json.loads(response.read())


def test_hostile_records_are_skipped_everywhere(env, zuul, caplog):
    caplog.set_level(logging.DEBUG)
    path = env.config("labels:\n  - name: small\nproviders:" + FAKE_PROVIDER)
    # Written before the launcher starts (read by its first sync) and after
    # (read from watch events): both paths must cope.
    corrupt_nodes = {}
    corrupt_requests = {}
    for number, (kind, raw) in enumerate(HOSTILE.items()):
        node_id = f"90000000{number:02d}"
        zuul.kazoo.create(f"/nodepool/nodes/{node_id}", raw, makepath=True)
        corrupt_nodes[node_id] = kind
    launcher = env.start(path, webapp=True, webapp_port=0)
    for number, (kind, raw) in enumerate(HOSTILE.items()):
        request_id = f"100-90000000{number:02d}"
        zuul.kazoo.create(f"/nodepool/requests/{request_id}", raw, makepath=True)
        corrupt_requests[request_id] = kind
    wait_until(lambda: set(corrupt_requests) <= launcher.requests.corrupt_ids,
               message="every corrupt request seen")
    assert set(corrupt_nodes) <= launcher.nodes.corrupt_ids

    # The launcher still serves Zuul.
    request_id = zuul.submit(["small"])
    request = zuul.wait_for_request(request_id)
    assert request["state"] == "fulfilled"
    [node_id] = request["nodes"]

    # Web: only the good records, and no error.
    code, nodes = fetch_json(launcher, "/node-list.json")
    assert code == 200 and [n["id"] for n in nodes] == [node_id]
    code, requests = fetch_json(launcher, "/request-list.json")
    assert code == 200 and [r["id"] for r in requests] == [request_id]

    # CLI: the same, exit 0, a short warning per corrupt node.
    listed = nodepool(path, "list", "--json")
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert [n["id"] for n in json.loads(listed.stdout)] == [node_id]
    warnings = [line for line in listed.stderr.splitlines() if "corrupt" in line]
    assert len(warnings) == len(corrupt_nodes)
    assert all(len(line) < 500 for line in warnings)
    listed = nodepool(path, "request-list", "--json")
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert [r["id"] for r in json.loads(listed.stdout)] == [request_id]

    # Each corrupt record was logged, briefly; nothing crashed a thread.
    messages = [r.getMessage() for r in caplog.records]
    for record_id in list(corrupt_nodes) + list(corrupt_requests):
        assert any("corrupt" in m and record_id in m for m in messages), record_id
    assert max(len(m) for m in messages) < 2000
    assert not [r for r in caplog.records if r.exc_info and r.name.startswith(
        "nodepool")]
    # And the corrupt records are still there, untouched (not ours to fix).
    for node_id in corrupt_nodes:
        assert zuul.kazoo.exists(paths.node(node_id)) is not None
