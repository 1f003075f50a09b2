"""Records carrying our additions for shared providers (a node's launch
progress and failed providers, a request's failed providers, a pool
component's launcher) are read by upstream Nodepool 11's own model classes
as any record, and what upstream writes back is still ours to read.

Upstream's code runs in the virtualenv ``tools/bench/zuul_compare.py
--install`` makes (``NODEPOOL_BENCH_VENVS``, default ``.bench-venvs``)."""

import json
import os
import subprocess

import pytest

from nodepool.zk.records import Component, Node, NodeRequest, Progress
from nodepool.zk.components import new_pool_component

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENVS = os.environ.get("NODEPOOL_BENCH_VENVS", os.path.join(ROOT, ".bench-venvs"))
UPSTREAM_PYTHON = os.path.join(VENVS, "nodepool", "bin", "python")

UPSTREAM_READER = """
import json, sys
from nodepool.zk.zookeeper import Node, NodeRequest
from nodepool.zk.components import PoolComponent
records = json.load(sys.stdin)
node = Node.fromDict(records["node"], "0000000007")
request = NodeRequest.fromDict(records["request"], "200-0000000001")
# What upstream's launcher does with them: decide, and write them back.
out = {
    "node_state": node.state, "node_provider": node.provider,
    "node_external_id": node.external_id, "node_launcher": node.launcher,
    "request_declined_by": request.declined_by,
    "node": node.toDict(), "request": request.toDict(),
}
pool = PoolComponent(None, "np-l1")
pool.updateFromDict(records["pool"])
out["pool_id"] = pool.id
out["pool_labels"] = pool.supported_labels
print(json.dumps(out))
"""


@pytest.mark.skipif(not os.path.exists(UPSTREAM_PYTHON),
                    reason="upstream Nodepool 11's virtualenv is not installed "
                    "(tools/bench/zuul_compare.py --install; NODEPOOL_BENCH_VENVS)")
def test_upstream_reads_and_writes_back_records_with_our_additions():
    node = Node(id="0000000007", state="building", provider="cloud-a", pool="main",
                type=["small"], launcher="np-l1-PoolWorker.cloud-a-main-1",
                external_id="server-1", allocated_to="200-0000000001")
    node.set_progress(Progress(launcher="np-l1-1a2b3c4d", step="machine", attempt=1,
                               started=1700000000.0,
                               machine={"state": "building", "external_id": "server-1"}))
    node.set_failed_providers(["cloud-b"])
    request = NodeRequest(id="200-0000000001", node_types=["small"],
                          declined_by=["np-l2-PoolWorker.cloud-b-main-2"])
    request.add_failed_provider("cloud-b")
    pool = new_pool_component("cloud-a", "main", ["small"], launcher="np-l1-1a2b3c4d")
    records = {"node": json.loads(node.to_json()),
               "request": json.loads(request.to_json()),
               "pool": json.loads(pool.to_json())}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([UPSTREAM_PYTHON, "-I", "-c", UPSTREAM_READER],
                          input=json.dumps(records), capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["node_state"] == "building" and seen["node_provider"] == "cloud-a"
    assert seen["node_external_id"] == "server-1"
    assert seen["node_launcher"] == "np-l1-PoolWorker.cloud-a-main-1"
    assert seen["request_declined_by"] == ["np-l2-PoolWorker.cloud-b-main-2"]
    assert seen["pool_id"] == pool.id and seen["pool_labels"] == ["small"]
    # Upstream drops what it does not know when it writes; we read its
    # records as before (no progress: not resumable, deleted if orphaned).
    written = Node.from_json("0000000007", json.dumps(seen["node"]))
    assert written.progress is None and written.failed_providers == []
    assert written.external_id == "server-1"
    assert NodeRequest.from_json("200-0000000001",
                                 json.dumps(seen["request"])).failed_providers == []
    assert Component.from_json("np-l10000000001", pool.to_json()).launcher == \
        "np-l1-1a2b3c4d"
