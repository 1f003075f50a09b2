"""The main job: ZooKeeper and nodepool on doc/examples/quickstart.yaml.

Starts a throw-away ZooKeeper server, validates the bundled configuration,
runs nodepool-builder and nodepool-launcher as real daemon processes (the
builder builds the example diskimage with tools/fake-image-create and uploads
it; the in-memory fake cloud lives inside each process, keyed by name), waits
until every label's min-ready nodes are ready and prints the pool with
``nodepool list``. Ctrl-C (or SIGTERM) stops everything.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

from nodepool.testing.zkserver import ZooKeeperServerProcess, free_port  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "doc", "examples", "quickstart.yaml")
BIN = os.path.join(ROOT, ".venv", "bin")


def nodepool(*args, env, **kwargs):
    return subprocess.run([os.path.join(BIN, "nodepool"), "-c", CONFIG, *args],
                          env=env, **kwargs)


def wanted_ready(env) -> dict[str, int]:
    import yaml
    from nodepool.config.loader import substitute_env
    with open(CONFIG) as handle:
        text, _ = substitute_env(handle.read(), env)
    return {label["name"]: label.get("min-ready", 0)
            for label in yaml.safe_load(text).get("labels", [])}


def start_daemon(name: str, state: str, env) -> tuple[subprocess.Popen, str]:
    """One daemon in the foreground, its output in <state>/<name>.log."""
    log_path = os.path.join(state, f"{name.split('-')[1]}.log")
    print(f"Starting {name} (log in {log_path}) ...", flush=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen([os.path.join(BIN, name), "-f", "-c", CONFIG],
                                   env=env, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    return process, log_path


def main() -> int:
    state = tempfile.mkdtemp(prefix="nodepool-quickstart-")
    zookeeper = ZooKeeperServerProcess(os.path.join(state, "zookeeper"))
    os.makedirs(zookeeper.workdir)
    print(f"Starting ZooKeeper (state in {state}) ...", flush=True)
    zookeeper.start()
    env = dict(os.environ, NODEPOOL_ZK_PORT=str(zookeeper.port),
               NODEPOOL_WEB_PORT=str(free_port()), NODEPOOL_STATE_DIR=state,
               NODEPOOL_FAKE_DIB=os.path.join(ROOT, "tools", "fake-image-create"))
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    launcher = builder = None
    try:
        nodepool("config-validate", env=env, check=True)
        os.makedirs(os.path.join(state, "images"), exist_ok=True)
        builder, builder_log = start_daemon("nodepool-builder", state, env)
        launcher, log_path = start_daemon("nodepool-launcher", state, env)
        wanted = wanted_ready(env)
        print(f"Waiting for min-ready nodes: {wanted} ...", flush=True)
        deadline = time.monotonic() + 120
        while not stop.is_set():
            if launcher.poll() is not None:
                print(f"nodepool-launcher exited with {launcher.returncode}; "
                      f"see {log_path}", file=sys.stderr)
                return 1
            if builder.poll() is not None:
                print(f"nodepool-builder exited with {builder.returncode}; "
                      f"see {builder_log}", file=sys.stderr)
                return 1
            result = nodepool("list", "--json", env=env, capture_output=True,
                              text=True)
            if result.returncode == 0:
                ready = {}
                for node in json.loads(result.stdout):
                    if node["state"] == "ready":
                        for label in node["label"]:
                            ready[label] = ready.get(label, 0) + 1
                if all(ready.get(k, 0) >= v for k, v in wanted.items()):
                    break
            if time.monotonic() > deadline:
                print("min-ready was not met within 120 s", file=sys.stderr)
                return 1
            stop.wait(0.5)
        nodepool("list", env=env)
        if os.environ.get("NODEPOOL_QUICKSTART_ONCE"):
            stop.set()
        else:
            print("The pool is ready. Press Ctrl-C to stop.", flush=True)
        stop.wait()
        return 0
    finally:
        print("Stopping ...", flush=True)
        for process in (launcher, builder):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
        zookeeper.stop()


if __name__ == "__main__":
    raise SystemExit(main())
