"""``python -m nodepool.testing.<cloud>_sim`` (the simulators run for demos
and benchmarks) starts, says where it listens, and answers there."""

import re
import subprocess
import sys
import urllib.error
import urllib.request

import pytest


@pytest.mark.parametrize("module", ["openstack_sim", "gce_sim", "kubernetes_sim",
                                    "azure_sim", "ibmvpc_sim"])
def test_a_simulator_runs_standalone(module, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", f"nodepool.testing.{module}",
                             "--port", "0"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        first = proc.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)", first)
        assert match, first
        # Any HTTP answer (even 404) shows the server is the simulator's.
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{match.group(1)}/",
                                        timeout=10) as reply:
                status = reply.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        assert 200 <= status < 600
        assert proc.poll() is None, "the simulator exited"
    finally:
        proc.kill()
        proc.wait(timeout=10)
