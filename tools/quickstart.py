"""Run ZooKeeper and nodepool on doc/examples/quickstart.yaml; show the pool."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from zkserver import ZooKeeperServerProcess, free_port  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "doc", "examples", "quickstart.yaml")
BIN = os.path.join(ROOT, ".venv", "bin")


def main() -> int:
    state = tempfile.mkdtemp(prefix="nodepool-quickstart-")
    zookeeper = ZooKeeperServerProcess(os.path.join(state, "zookeeper"))
    os.makedirs(zookeeper.workdir)
    print(f"Starting ZooKeeper (state in {state}) ...", flush=True)
    zookeeper.start()
    env = dict(os.environ, NODEPOOL_ZK_PORT=str(zookeeper.port),
               NODEPOOL_WEB_PORT=str(free_port()), NODEPOOL_STATE_DIR=state,
               NODEPOOL_FAKE_DIB=os.path.join(ROOT, "tools", "fake-image-create"))
    try:
        subprocess.run([os.path.join(BIN, "nodepool"), "-c", CONFIG,
                        "config-validate"], env=env, check=True)
        print("ZooKeeper is running on", zookeeper.hosts,
              "- the launcher and builder arrive with the next issues; "
              "press Ctrl-C to stop.", flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGINT, lambda *a: stop.set())
        signal.signal(signal.SIGTERM, lambda *a: stop.set())
        if os.environ.get("NODEPOOL_QUICKSTART_ONCE"):
            stop.set()
        stop.wait()
    finally:
        print("Stopping ...", flush=True)
        zookeeper.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
