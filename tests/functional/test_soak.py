"""The reliability soak, shortened: every fault kind at least once in about
two minutes, and every invariant checked (tools/soak.py, doc/soak.rst)."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_short_soak_passes_with_every_fault_kind():
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "soak.py"), "--duration", "80",
         "--quiet", "15", "--fault-gap", "1.5", "3", "--clients", "4", "--seed", "11"],
        capture_output=True, text=True, timeout=600)
    verdict = [line for line in result.stdout.splitlines() if line.startswith("soak ")]
    assert verdict, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.returncode == 0, "\n".join(
        line for line in result.stdout.splitlines()
        if line.startswith(("soak ", "  violation")))
    counts = dict(re.findall(r"([a-z0-9-]+)=(\d+)", verdict[-1].split("faults:")[1]))
    assert len(counts) == 12 and all(int(v) >= 1 for v in counts.values()), counts
    assert "leaks=0 stuck=0 duplicates=0 violations=0" in verdict[-1]
