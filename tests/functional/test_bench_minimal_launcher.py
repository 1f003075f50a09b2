"""The benchmarks' baseline launcher (tools/bench/minimal_launcher.py) still
serves Zuul's protocol: a few requests from our Zuul-role client are
fulfilled, and the nodes are gone once returned."""

from __future__ import annotations

import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "tools", "bench", "minimal_launcher.py")


def test_minimal_launcher_serves_and_deletes(zk_hosts, zuul, tmp_path):
    log = open(tmp_path / "minimal.log", "wb")
    launcher = subprocess.Popen([sys.executable, SCRIPT, "--hosts", zk_hosts],
                                stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while not (zuul.kazoo.exists("/nodepool/components/pool")
                   and zuul.kazoo.get_children("/nodepool/components/pool")):
            assert launcher.poll() is None, (tmp_path / "minimal.log").read_text()
            assert time.monotonic() < deadline, "no pool component registered"
            time.sleep(0.05)
        request_ids = [zuul.submit(["small"]) for _ in range(5)]
        node_ids = []
        for request_id in request_ids:
            request = zuul.wait_for_request(request_id, timeout=15)
            assert request["state"] == "fulfilled"
            node_ids += [node["id"] for node in zuul.run_job(request_id)]
        assert len(set(node_ids)) == 5
        deadline = time.monotonic() + 15
        while zuul.kazoo.get_children("/nodepool/nodes"):
            assert time.monotonic() < deadline, zuul.kazoo.get_children("/nodepool/nodes")
            time.sleep(0.05)
        assert zuul.kazoo.get_children("/nodepool/requests") == []
    finally:
        launcher.terminate()
        launcher.wait(timeout=15)
        log.close()
    assert launcher.returncode == 0
