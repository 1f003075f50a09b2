"""The main job: ZooKeeper and nodepool on doc/examples/quickstart.yaml.

Starts a throw-away ZooKeeper server, validates the bundled configuration,
runs nodepool-builder and nodepool-launcher as real daemon processes (the
builder builds the example diskimage with tools/fake-image-create and uploads
it; the in-memory fake cloud lives inside each process, keyed by name), waits
until every label's min-ready nodes are ready, prints the pool with
``nodepool list`` and how to reach the demo: the ZooKeeper address, the web
status pages and a command line for the CLI.

Ctrl-C (SIGINT to the terminal's process group), SIGTERM or SIGHUP stops
everything: the daemons first, ZooKeeper last. ZooKeeper runs in a session of
its own so that a Ctrl-C does not stop it under the daemons, which then stop
cleanly (release their locks, unregister) while it still serves. A clean stop
removes the state directory (NODEPOOL_QUICKSTART_KEEP=1 keeps it); a failure
keeps it for its logs.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

import yaml

from nodepool.config.loader import substitute_env
from nodepool.testing.zkserver import ZooKeeperServerProcess, free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "doc", "examples", "quickstart.yaml")
BIN = os.path.join(ROOT, ".venv", "bin")
NODEPOOL = os.path.join(BIN, "nodepool")
READY_TIMEOUT = 120.0
# A daemon that has not stopped this long after the signal is killed.
DAEMON_STOP_TIMEOUT = 30.0
# After a Ctrl-C the daemons have the SIGINT too: they are given this long
# before a SIGTERM (one that arrives while a stopped daemon's interpreter
# shuts down, its handlers gone, kills it).
SIGINT_GRACE = 5.0
WEB_PAGES = ("/request-list", "/label-list", "/image-list", "/dib-image-list",
             "/ready")


class StopRequest(threading.Event):
    """Set by SIGINT, SIGTERM or SIGHUP; remembers the first signal."""

    signum: int | None = None

    def handler(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum
        self.set()


@dataclass
class Daemon:
    name: str
    process: subprocess.Popen
    log_path: str


@dataclass
class DemoFiles:
    """What the user points the CLI at while the demo runs."""
    resolved_config: str  # the example with every %(NODEPOOL_...) filled in
    env_file: str         # ``export NODEPOOL_...`` lines for the example itself


def demo_env(state: str, zookeeper: ZooKeeperServerProcess) -> dict[str, str]:
    """The variables the example configuration refers to."""
    return {"NODEPOOL_ZK_PORT": str(zookeeper.port),
            "NODEPOOL_WEB_PORT": str(free_port()),
            "NODEPOOL_STATE_DIR": state,
            "NODEPOOL_FAKE_DIB": os.path.join(ROOT, "tools", "fake-image-create")}


def resolved_config_text(variables: dict[str, str]) -> str:
    with open(CONFIG) as handle:
        text, problems = substitute_env(handle.read(), variables)
    if problems:
        raise RuntimeError(f"{CONFIG}: unresolved references: {problems}")
    return text


def write_demo_files(state: str, variables: dict[str, str]) -> DemoFiles:
    files = DemoFiles(resolved_config=os.path.join(state, "nodepool.yaml"),
                      env_file=os.path.join(state, "env.sh"))
    with open(files.resolved_config, "w") as handle:
        handle.write(f"# {CONFIG} as the running quickstart sees it.\n")
        handle.write(resolved_config_text(variables))
    with open(files.env_file, "w") as handle:
        handle.write("# The variables doc/examples/quickstart.yaml refers to, for the "
                     "running quickstart.\n")
        for name, value in sorted(variables.items()):
            handle.write(f"export {name}={shlex.quote(value)}\n")
    return files


def usage_text(config: dict, files: DemoFiles, daemons: list[Daemon]) -> str:
    """How to reach the running demo, ready to paste."""
    zk = config["zookeeper-servers"][0]
    web = config.get("webapp", {})
    base = f"http://{web.get('listen_address', '127.0.0.1')}:{web['port']}"
    q = shlex.quote
    lines = [
        "The pool is ready.",
        f"  ZooKeeper:  {zk['host']}:{zk['port']} (chroot {zk.get('chroot', '/')})",
        f"  Web status: {base}/node-list",
        f"              (also {', '.join(WEB_PAGES)}; add .json for JSON)",
        f"  CLI:        {q(NODEPOOL)} -c {q(files.resolved_config)} list",
        f"  or:         . {q(files.env_file)} && {q(NODEPOOL)} -c {q(CONFIG)} list",
        "  Logs:       " + ", ".join(d.log_path for d in daemons),
        "Press Ctrl-C to stop. (A clean stop removes the state directory, logs"
        " included; NODEPOOL_QUICKSTART_KEEP=1 keeps it.)",
    ]
    return "\n".join(lines)


def nodepool(*args: str, env: dict, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([NODEPOOL, "-c", CONFIG, *args], env=env,
                          stdin=subprocess.DEVNULL, **kwargs)


def ready_counts(env: dict) -> dict[str, int] | None:
    result = nodepool("list", "--json", env=env, capture_output=True, text=True)
    if result.returncode != 0:
        return None
    ready: dict[str, int] = {}
    for node in json.loads(result.stdout):
        if node["state"] == "ready":
            for label in node["label"]:
                ready[label] = ready.get(label, 0) + 1
    return ready


def start_daemon(name: str, state: str, env: dict) -> Daemon:
    """One daemon in the foreground, its output in <state>/<name>.log. It
    stays in our process group: a terminal's Ctrl-C reaches it directly."""
    log_path = os.path.join(state, f"{name.split('-')[1]}.log")
    print(f"Starting {name} (log in {log_path}) ...", flush=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen([os.path.join(BIN, name), "-f", "-c", CONFIG],
                                   env=env, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    return Daemon(name, process, log_path)


def stop_daemons(daemons: list[Daemon], interrupted: bool) -> bool:
    """Stop every daemon still running, one deadline for all; True if every
    one exited with 0 (or, after a Ctrl-C, of the SIGINT itself: a daemon
    still starting has no handler yet)."""
    if interrupted:
        grace = time.monotonic() + SIGINT_GRACE
        for daemon in daemons:
            try:
                daemon.process.wait(timeout=max(0.0, grace - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
    for daemon in daemons:
        if daemon.process.poll() is None:
            daemon.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + DAEMON_STOP_TIMEOUT
    expected = (0, -signal.SIGINT) if interrupted else (0,)
    clean = True
    for daemon in daemons:
        try:
            daemon.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"{daemon.name} did not stop within {DAEMON_STOP_TIMEOUT:.0f} s; "
                  f"killing it (see {daemon.log_path})", file=sys.stderr, flush=True)
            daemon.process.kill()
            daemon.process.wait()
        code = daemon.process.returncode
        clean = clean and code in expected
        print(f"{daemon.name} stopped (exit {code})", flush=True)
    return clean


def wait_for_pool(daemons: list[Daemon], wanted: dict[str, int], env: dict,
                  stop: threading.Event) -> bool:
    """Until every label has its min-ready nodes (True), or a daemon exits,
    the time runs out (False), or a stop is asked for (True)."""
    deadline = time.monotonic() + READY_TIMEOUT
    while not stop.is_set():
        if exited(daemons):
            return False
        ready = ready_counts(env)
        if ready is not None and all(ready.get(k, 0) >= v for k, v in wanted.items()):
            return True
        if time.monotonic() > deadline:
            print(f"min-ready was not met within {READY_TIMEOUT:.0f} s",
                  file=sys.stderr)
            return False
        stop.wait(0.5)
    return True


def exited(daemons: list[Daemon]) -> Daemon | None:
    for daemon in daemons:
        if daemon.process.poll() is not None:
            print(f"{daemon.name} exited with {daemon.process.returncode}; "
                  f"see {daemon.log_path}", file=sys.stderr)
            return daemon
    return None


def watch_until_stopped(daemons: list[Daemon], stop: threading.Event) -> bool:
    """Until a stop signal (True) or a daemon exits on its own (False). The
    wait is timed: Python runs a signal handler only when the main thread
    wakes, and the kernel may deliver the signal to another thread."""
    while not stop.wait(1.0):
        if exited(daemons):
            return False
    return True


def run_demo(state: str, zookeeper: ZooKeeperServerProcess, daemons: list[Daemon],
             stop: threading.Event) -> bool:
    """Everything between ZooKeeper serving and the stop signal."""
    variables = demo_env(state, zookeeper)
    env = dict(os.environ, **variables)
    files = write_demo_files(state, variables)
    config = yaml.safe_load(resolved_config_text(variables))
    if nodepool("config-validate", env=env).returncode != 0:
        return stop.is_set()
    os.makedirs(os.path.join(state, "images"), exist_ok=True)
    for name in ("nodepool-builder", "nodepool-launcher"):
        daemons.append(start_daemon(name, state, env))
    wanted = {label["name"]: label.get("min-ready", 0)
              for label in config.get("labels", [])}
    print(f"Waiting for min-ready nodes: {wanted} ...", flush=True)
    if not wait_for_pool(daemons, wanted, env, stop):
        return False
    if stop.is_set():
        return True
    listing = nodepool("list", env=env, capture_output=True, text=True)
    print(listing.stdout, end="")
    print(usage_text(config, files, daemons), flush=True)
    return watch_until_stopped(daemons, stop)


def main() -> int:
    stop = StopRequest()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stop.handler)
    state = tempfile.mkdtemp(prefix="nodepool-quickstart-")
    zookeeper = ZooKeeperServerProcess(os.path.join(state, "zookeeper"),
                                       own_process_group=True)
    os.makedirs(zookeeper.workdir)
    daemons: list[Daemon] = []
    ok = False
    try:
        print(f"Starting ZooKeeper (state in {state}) ...", flush=True)
        try:
            zookeeper.start()
        except RuntimeError as exc:  # not installed, or it would not serve
            print(exc, file=sys.stderr)
            return 1
        ok = stop.is_set() or run_demo(state, zookeeper, daemons, stop)
    finally:
        print("Stopping ...", flush=True)
        ok = stop_daemons(daemons, stop.signum == signal.SIGINT) and ok
        # Last: the daemons have released their locks and unregistered.
        zookeeper.stop()
        print("ZooKeeper stopped", flush=True)
        if ok and not os.environ.get("NODEPOOL_QUICKSTART_KEEP"):
            shutil.rmtree(state, ignore_errors=True)
        else:
            print(f"State and logs kept in {state}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
