"""Benchmark: the same burst, played by Zuul's own client, against our
launcher, upstream Nodepool's and a minimal one.

For each launcher and run: a fresh ZooKeeper with a TLS port (upstream
Nodepool and Zuul's configuration insist on TLS, so every party uses it), the
launcher as its own process, then ``zuul_client_driver.py`` in a Zuul 14.3.0
virtualenv submits N single-node requests and plays scheduler and executor
for each (accept, in-use, used, unlock) until the launcher has deleted every
node. Prints, per launcher: throughput (fulfilled / seconds from the first
submit to the last fulfilment as Zuul saw it), p50/p90 submit->fulfilled,
CPU seconds of the launcher (process and children), ZooKeeper and the Zuul
client over the whole burst including deletions, and nodes left; then the
launchers side by side and how the CPU was split.

The launchers:

* ours: ``nodepool-launcher -f`` from .venv, fake cloud (tools/bench/common.py);
* upstream: Nodepool 11.0.0's launcher, its fake driver with the quota raised
  (tools/bench/upstream_launcher.py);
* minimal: tools/bench/minimal_launcher.py, only the ZooKeeper operations
  the protocol needs - the ceiling for any launcher on this machine.

Zuul and upstream Nodepool live in their own virtualenvs::

    .venv/bin/python tools/bench/zuul_compare.py --install
    .venv/bin/python tools/bench/zuul_compare.py --requests 200 --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from common import BENCH_DIR, ROOT, VENV_BIN, Daemon, cpu_seconds, fake_cloud_config, \
    our_launcher, percentile, start_zookeeper, stop_process, tree_cpu_seconds, wait_until, \
    zk_packets

from kazoo.client import KazooClient

from nodepool.testing.zkserver import ZooKeeperServerProcess

LAUNCHERS = ("ours", "upstream", "minimal")
VENVS = {"zuul": ["zuul==14.3.0"], "nodepool": ["nodepool==11.0.0", "cachetools"]}
DEFAULT_VENVS = os.path.join(ROOT, ".bench-venvs")

# Upstream's fake driver is an OpenStack provider with a fixed fake cloud.
UPSTREAM_PROVIDER_KEYS = """    driver: fake
    region-name: fake-region
"""

# openstacksdk's view of upstream's fake cloud (it never contacts it).
UPSTREAM_CLOUDS = """
clouds:
  fake:
    auth:
      username: fake
      password: fake
      project_id: fake
      auth_url: fake
"""


@dataclass
class Venvs:
    root: str

    def python(self, name: str) -> str:
        return os.path.join(self.root, name, "bin", "python")

    def version(self, name: str) -> str | None:
        """The installed version of the package the venv is for, or None."""
        python = self.python(name)
        if not os.path.exists(python):
            return None
        try:
            result = subprocess.run(
                [python, "-I", "-c", "import importlib.metadata as m, sys; "
                 f"print(m.version({name!r}))"],
                capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            return None
        return result.stdout.strip() if result.returncode == 0 else None

    def install(self) -> None:
        for name, packages in VENVS.items():
            target = os.path.join(self.root, name)
            print(f"creating {target} with {' '.join(packages)}", flush=True)
            subprocess.run([sys.executable, "-m", "venv", target], check=True)
            subprocess.run([self.python(name), "-m", "pip", "install", "-q", *packages],
                           check=True)


class JSONLines:
    """Reads a child's stdout one JSON object a line, with a deadline."""

    def __init__(self, process: subprocess.Popen):
        self.process = process
        self.buffer = b""
        self.selector = selectors.DefaultSelector()
        self.selector.register(process.stdout, selectors.EVENT_READ)

    def read(self, timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            # End of file (the child died) also makes the pipe readable.
            if not self.selector.select(min(left, 1.0)):
                continue
            chunk = os.read(self.process.stdout.fileno(), 65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)


def foreign_env() -> dict[str, str]:
    """The environment for the other virtualenvs' Pythons: without our
    PYTHONPATH, whose ``nodepool`` package would hide upstream's."""
    return {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}


def make_launcher(kind: str, state: str, zookeeper: ZooKeeperServerProcess,
                  max_servers: int, venvs: Venvs) -> Daemon:
    tls = zookeeper.tls_files
    log = os.path.join(state, f"{kind}-launcher.log")
    config = os.path.join(state, "nodepool.yaml")
    if kind == "minimal":
        return Daemon([os.path.join(VENV_BIN, "python"),
                       os.path.join(BENCH_DIR, "minimal_launcher.py"),
                       "--hosts", zookeeper.tls_hosts, "--tls-ca", tls.ca,
                       "--tls-cert", tls.client_cert, "--tls-key", tls.client_key], log)
    if kind == "ours":
        with open(config, "w") as handle:
            handle.write(fake_cloud_config(zookeeper.tls_port, max_servers, tls=tls))
        return our_launcher(config, log)
    with open(config, "w") as handle:
        handle.write(fake_cloud_config(zookeeper.tls_port, max_servers,
                                       UPSTREAM_PROVIDER_KEYS, tls=tls))
    clouds = os.path.join(state, "clouds.yaml")
    with open(clouds, "w") as handle:
        handle.write(UPSTREAM_CLOUDS)
    env = dict(foreign_env(), OS_CLIENT_CONFIG_FILE=clouds)
    return Daemon([venvs.python("nodepool"), os.path.join(BENCH_DIR, "upstream_launcher.py"),
                   "-f", "--no-webapp", "-c", config], log, env)


def wait_registered(zookeeper: ZooKeeperServerProcess, launcher: Daemon,
                    timeout: float) -> bool:
    """Until the launcher's pool component is in ZooKeeper."""
    client = KazooClient(hosts=zookeeper.hosts, timeout=10)
    client.start(timeout=30)
    try:
        return wait_until(lambda: client.exists("/nodepool/components/pool") and
                          client.get_children("/nodepool/components/pool"),
                          timeout, alive=launcher)
    finally:
        client.stop()
        client.close()


def stop_driver(driver: subprocess.Popen | None) -> None:
    if driver is None:
        return
    stop_process(driver, timeout=15)
    for stream in (driver.stdin, driver.stdout):
        if stream:
            stream.close()


def run_once(kind: str, args, venvs: Venvs) -> dict:
    """One burst against a fresh ZooKeeper and launcher; the driver's result
    plus CPU figures, or {"error": ...}."""
    state = tempfile.mkdtemp(prefix=f"zuul-compare-{kind}-")
    zookeeper = launcher = driver = None
    result: dict = {"state": state}
    try:
        zookeeper = start_zookeeper(state, tls=True)
        tls = zookeeper.tls_files
        launcher = make_launcher(kind, state, zookeeper, max(args.requests * 2, 100),
                                 venvs).start()
        if not wait_registered(zookeeper, launcher, 120):
            result["error"] = f"launcher did not register; see {launcher.log_path}"
            return result
        # Let start-up work (config load, first passes) finish.
        time.sleep(args.settle)
        with open(os.path.join(state, "zuul-driver.log"), "wb") as log:
            driver = subprocess.Popen(
                [venvs.python("zuul"), os.path.join(BENCH_DIR, "zuul_client_driver.py"),
                 "--hosts", zookeeper.tls_hosts, "--tls-ca", tls.ca,
                 "--tls-cert", tls.client_cert, "--tls-key", tls.client_key,
                 "--requests", str(args.requests), "--timeout", str(args.timeout),
                 "--submitters", str(args.submitters)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                env=foreign_env(), start_new_session=True)
        lines = JSONLines(driver)
        ready = lines.read(120)
        if not ready or not ready.get("ready"):
            result["error"] = f"Zuul driver not ready: {ready}; see {state}/zuul-driver.log"
            return result
        launcher_before = tree_cpu_seconds(launcher.pid)
        packets_before = zk_packets(zookeeper, launcher.pid)
        zk_before = cpu_seconds(zookeeper.process.pid)
        driver.stdin.write(b"go\n")
        driver.stdin.flush()
        burst = lines.read(args.timeout + 60)
        if burst is None:
            result["error"] = f"no result from the Zuul driver; see {state}/zuul-driver.log"
            return result
        result.update(burst)
        result["launcher_cpu"] = tree_cpu_seconds(launcher.pid) - launcher_before
        result["zk_cpu"] = cpu_seconds(zookeeper.process.pid) - zk_before
        packets_after = zk_packets(zookeeper, launcher.pid)
        result["zk_received"] = packets_after[0] - packets_before[0]
        result["zk_sent"] = packets_after[1] - packets_before[1]
        if not launcher.running():
            result["error"] = f"the launcher died; see {launcher.log_path}"
        return result
    finally:
        stop_driver(driver)
        if launcher is not None:
            launcher.stop()
        if zookeeper is not None:
            zookeeper.stop()
        if not args.keep and "error" not in result:
            shutil.rmtree(state, ignore_errors=True)


def figures(result: dict) -> dict[str, float]:
    """The per-run numbers the report shows."""
    latencies = result["latencies"]
    elapsed = result["elapsed"] or float("nan")
    return {
        "throughput": result["fulfilled"] / elapsed,
        "p50": percentile(latencies, 50),
        "p90": percentile(latencies, 90),
        "launcher_cpu": result["launcher_cpu"],
        "ms_per_request": result["launcher_cpu"] / result["requests"] * 1000,
        "zk_cpu": result["zk_cpu"],
        "client_cpu": result["client_cpu"],
        "undeleted": result["undeleted"],
        # Requests and replies (received) and replies plus watch events
        # (sent) between the server and the launcher, per node request.
        "zk_received": result.get("zk_received", 0) / result["requests"],
        "zk_sent": result.get("zk_sent", 0) / result["requests"],
    }


ROWS = [  # key, label, format
    ("throughput", "throughput (req/s)", "{:.1f}"),
    ("p50", "p50 submit->fulfilled (s)", "{:.2f}"),
    ("p90", "p90 submit->fulfilled (s)", "{:.2f}"),
    ("launcher_cpu", "launcher CPU (s)", "{:.2f}"),
    ("ms_per_request", "launcher CPU/request (ms)", "{:.1f}"),
    ("zk_cpu", "ZooKeeper CPU (s)", "{:.2f}"),
    ("client_cpu", "Zuul client CPU (s)", "{:.2f}"),
    ("zk_received", "ZooKeeper requests/request", "{:.1f}"),
    ("zk_sent", "ZooKeeper replies+events/request", "{:.1f}"),
    ("undeleted", "nodes left undeleted", "{:.0f}"),
]


def summary(runs: list[dict[str, float]], key: str, fmt: str) -> str:
    values = [run[key] for run in runs]
    text = fmt.format(statistics.median(values))
    if len(values) > 1:
        text += " [" + fmt.format(min(values)) + "-" + fmt.format(max(values)) + "]"
    return text


def print_run(kind: str, index: int, result: dict) -> None:
    if "error" in result:
        print(f"{kind:9s} run {index}: FAILED - {result['error']}", flush=True)
        return
    f = figures(result)
    errors = f", {result['error_count']} client errors {result['errors']}" \
        if result["error_count"] else ""
    print(f"{kind:9s} run {index}: {result['fulfilled']}/{result['requests']} fulfilled "
          f"({result['failed']} failed{errors}), {f['throughput']:.1f} req/s, "
          f"p50 {f['p50']:.2f} s, p90 {f['p90']:.2f} s, launcher CPU "
          f"{f['launcher_cpu']:.2f} s ({f['ms_per_request']:.1f} ms/req), ZooKeeper "
          f"{f['zk_cpu']:.2f} s, client {f['client_cpu']:.2f} s, submits took "
          f"{result['submit_seconds']:.2f} s, undeleted {result['undeleted']}",
          flush=True)


def median_of(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def ratio(results: dict[str, list[dict[str, float]]], key: str, top: str,
          bottom: str) -> float:
    """Median of ``key`` for launcher ``top`` over that of ``bottom``."""
    return median_of(results[top], key) / median_of(results[bottom], key)


def print_report(results: dict[str, list[dict[str, float]]], requests: int) -> None:
    kinds = [kind for kind in LAUNCHERS if results.get(kind)]
    if not kinds:
        return
    width = 26
    print(f"\nSide by side ({requests} single-node requests; medians, [min-max] over "
          "runs):")
    print(" " * width + "".join(f"{kind:>24s}" for kind in kinds))
    for key, label, fmt in ROWS:
        print(f"{label:{width}s}" + "".join(
            f"{summary(results[kind], key, fmt):>24s}" for kind in kinds))
    if results.get("ours") and results.get("upstream"):
        print("ours vs upstream: throughput "
              f"x{ratio(results, 'throughput', 'ours', 'upstream'):.2f}"
              f", p50 {ratio(results, 'p50', 'upstream', 'ours'):.1f}x lower, launcher "
              f"CPU/request {ratio(results, 'ms_per_request', 'upstream', 'ours'):.1f}x lower")
    if results.get("ours") and results.get("minimal"):
        print(f"ours vs minimal:  throughput "
              f"{100 * ratio(results, 'throughput', 'ours', 'minimal'):.0f}% of minimal's, "
              f"launcher CPU/request "
              f"{ratio(results, 'ms_per_request', 'ours', 'minimal'):.1f}x minimal's")
    print("\nCPU split during the burst (launcher / ZooKeeper / Zuul client, medians):")
    for kind in kinds:
        parts = [median_of(results[kind], key)
                 for key in ("launcher_cpu", "zk_cpu", "client_cpu")]
        total = sum(parts)
        print(f"  {kind:9s} {total:6.2f} s: " + " / ".join(
            f"{100 * part / total:.0f}%" for part in parts))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--launchers", default=None,
                        help="comma-separated of ours,upstream,minimal (default: all "
                        "that are installed)")
    parser.add_argument("--venvs", default=DEFAULT_VENVS,
                        help=f"where the zuul and nodepool virtualenvs are (default "
                        f"{DEFAULT_VENVS})")
    parser.add_argument("--install", action="store_true",
                        help="create the virtualenvs (zuul==14.3.0; nodepool==11.0.0 "
                        "with cachetools) under --venvs, then exit")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="per run, for the burst and the deletions")
    parser.add_argument("--submitters", type=int, default=16,
                        help="threads of the Zuul client submitting requests at once "
                        "(Zuul's requestNodes waits for each create)")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds between the launcher registering and the burst")
    parser.add_argument("--keep", action="store_true",
                        help="keep each run's state directory (logs, configuration)")
    args = parser.parse_args()
    venvs = Venvs(os.path.abspath(args.venvs))
    if args.install:
        venvs.install()
        return 0
    zuul_version = venvs.version("zuul")
    if zuul_version is None:
        print(f"no Zuul virtualenv in {venvs.root}/zuul; create both with\n"
              f"  {sys.executable} {os.path.abspath(__file__)} --install"
              + ("" if args.venvs == DEFAULT_VENVS else f" --venvs {args.venvs}"),
              file=sys.stderr)
        return 2
    upstream_version = venvs.version("nodepool")
    if args.launchers:
        kinds = args.launchers.split(",")
        unknown = set(kinds) - set(LAUNCHERS)
        if unknown:
            parser.error(f"unknown launchers: {', '.join(sorted(unknown))}")
        if "upstream" in kinds and upstream_version is None:
            print(f"no upstream Nodepool virtualenv in {venvs.root}/nodepool; see "
                  "--install", file=sys.stderr)
            return 2
    else:
        kinds = [kind for kind in LAUNCHERS
                 if kind != "upstream" or upstream_version is not None]
    print(f"Zuul {zuul_version} client; upstream Nodepool {upstream_version or '-'}; "
          f"{args.requests} requests x {args.runs} run(s); ZooKeeper over TLS for all",
          flush=True)
    results: dict[str, list[dict[str, float]]] = {}
    failed = False
    # A plain kill stops the children too (the finally blocks run).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        for index in range(1, args.runs + 1):
            for kind in kinds:
                result = run_once(kind, args, venvs)
                print_run(kind, index, result)
                if "error" in result:
                    failed = True
                    continue
                results.setdefault(kind, []).append(figures(result))
    except KeyboardInterrupt:
        print("\ninterrupted; processes stopped", file=sys.stderr)
        failed = True
    print_report(results, args.requests)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
