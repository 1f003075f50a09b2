"""Benchmark: the launcher's cost as the number of existing nodes grows.

For each N of ``--nodes`` a fresh ZooKeeper is filled (before the launcher
starts) with a big deployment's records - N nodes in every state, 2,000 open
requests - and a real ``nodepool-launcher`` (fake cloud) is started on it:
20 providers x 5 pools, 500 labels, min-ready on 100 of them. Printed per N:
start-up time (to its pools registered and running, and to a request
waiting from the start fulfilled), the idle launcher's CPU, its RSS, and a
burst of ``--requests`` single-node requests played by a Zuul-role client
(submit, wait, accept, use, return): launcher CPU per request including the
deletions, throughput and latency. Then the ratio of CPU per request at the
largest N to the smallest, memory per 10,000 nodes, and at the largest N
the wall time of ``nodepool list``, ``nodepool request-list`` and the
launcher's ``/node-list`` pages.

Pre-filled nodes have no instance in the fake cloud (it lives in the
launcher's memory), and a launcher deletes an unlocked node in any state
but ready, hold and testing. So the population is written to stay put:
ready, hold (no expiry) and testing nodes unlocked, every other state
locked by this bench's ZooKeeper session, as Zuul holds its in-use nodes
and another launcher the nodes it builds or deletes. Ready nodes are only
of labels the burst does not ask for, so the burst launches every node.

    .venv/bin/python tools/bench/scale.py --nodes 1000,5000 --requests 200
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import yaml

from cli_list import time_command
from common import ROOT, cpu_seconds, percentile
from nodepool.testing.burst import Burst, Observer
from web_status import fetch

from nodepool.testing.status_fill import Member, fill_open_requests, fill_population
from nodepool.testing.zkserver import ZooKeeperServerProcess, free_port
from nodepool.testing.zuul_client import FakeZuul
from nodepool.zk import paths
from nodepool.zk.client import PollingHandler, ZooKeeperClient
from nodepool.zk.records import NodeState
from nodepool.zk.store import Store

PROVIDERS = [f"fake-{n:02d}" for n in range(20)]
POOLS_PER_PROVIDER = 5
LABELS = [f"label-{n:03d}" for n in range(500)]
MIN_READY_LABELS = LABELS[:100]
MIN_READY = 2
# Ready nodes are pre-filled for these (min-ready ones first) ...
READY_LABELS = LABELS[:400]
# ... never for these, which the burst asks for.
BURST_LABELS = LABELS[400:490]
# Served only by the first two pools, kept at max-servers by in-use nodes:
# the open requests ask for these and wait, as on a cloud at capacity. First,
# so they register before the other pools look at the requests (a pool that
# sees no pool offering a request's labels declines it, as upstream's do).
FULL_LABELS = LABELS[490:]
FULL_POOL_SIZE = 25
# What one fake node uses ("Fake Flavor"), so pre-filled nodes count
# against quota as launched ones do.
NODE_RESOURCES = {"cores": 4, "instances": 1, "ram": 8192}
# Shares of the population outside the full pools; locked: held by our session.
STATES = [  # (state, percent, locked)
    (NodeState.READY, 30, False), (NodeState.IN_USE, 35, True),
    (NodeState.HOLD, 8, False), (NodeState.BUILDING, 6, True),
    (NodeState.USED, 5, True), (NodeState.DELETING, 6, True),
    (NodeState.FAILED, 3, True), (NodeState.TESTING, 2, False),
    (NodeState.INIT, 2, True), (NodeState.ABORTED, 2, True),
    (NodeState.DELETED, 1, True),
]


def pool_names() -> list[tuple[str, str]]:
    return [(provider, f"pool-{p}") for provider in PROVIDERS
            for p in range(POOLS_PER_PROVIDER)]


def pool_labels() -> dict[tuple[str, str], list[str]]:
    """Each ordinary label in two pools of different providers; the full
    labels in the first two pools only."""
    pools = pool_names()
    full, ordinary = pools[:2], pools[2:]
    labels: dict[tuple[str, str], list[str]] = {p: [] for p in pools}
    for index, label in enumerate(LABELS[:490]):
        labels[ordinary[index % len(ordinary)]].append(label)
        labels[ordinary[(index + len(ordinary) // 2) % len(ordinary)]].append(label)
    for pool in full:
        labels[pool] = list(FULL_LABELS)
    return labels


def write_config(path: str, zk_port: int, web_port: int) -> None:
    labels = pool_labels()
    providers = []
    for provider in PROVIDERS:
        pools = []
        for key in [k for k in labels if k[0] == provider]:
            full = labels[key] == FULL_LABELS
            pools.append({
                "name": key[1],
                "max-servers": FULL_POOL_SIZE if full else 100000,
                "labels": [{"name": label, "cloud-image": "precise", "min-ram": 1024}
                           for label in labels[key]]})
        providers.append({
            "name": provider, "cloud": "fake", "rate": 0.0001,
            "simulation": {"max-instances": 1000000, "max-cores": 100000000,
                           "max-ram": 1000000000000},
            "cloud-images": [{"name": "precise", "image-name": "Fake Precise"}],
            "pools": pools})
    config = {
        "zookeeper-servers": [{"host": "127.0.0.1", "port": zk_port,
                               "chroot": "/bench"}],
        "webapp": {"port": web_port, "listen_address": "127.0.0.1"},
        "labels": [{"name": label, **({"min-ready": MIN_READY}
                                      if label in MIN_READY_LABELS else {})}
                   for label in LABELS],
        "providers": providers,
    }
    with open(path, "w") as handle:
        yaml.safe_dump(config, handle, sort_keys=False)


def population(count: int) -> list[Member]:
    """``count`` nodes: the full pools' in-use nodes, the rest by STATES."""
    labels = pool_labels()
    pools = pool_names()
    members = [Member(NodeState.IN_USE, provider, pool, FULL_LABELS[i % len(FULL_LABELS)],
                      locked=True)
               for provider, pool in pools[:2] for i in range(FULL_POOL_SIZE)]
    rest = max(0, count - len(members))
    ordinary = pools[2:]
    by_label = {}
    for key in ordinary:
        for label in labels[key]:
            by_label.setdefault(label, []).append(key)
    # Min-ready labels get their ready nodes first.
    ready_order = [label for label in MIN_READY_LABELS for _ in range(MIN_READY)] + \
        READY_LABELS
    index = 0
    for state, percent, locked in STATES:
        for _ in range(rest * percent // 100):
            if state == NodeState.READY:
                label = ready_order[index % len(ready_order)]
                provider, pool = by_label[label][index % 2]
            else:
                provider, pool = ordinary[index % len(ordinary)]
                label = labels[(provider, pool)][index % len(labels[(provider, pool)])]
            members.append(Member(state, provider, pool, label, locked))
            index += 1
    # Rounding leftovers: in-use.
    while len(members) < count:
        provider, pool = ordinary[index % len(ordinary)]
        members.append(Member(NodeState.IN_USE, provider, pool,
                              labels[(provider, pool)][0], True))
        index += 1
    return members


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cpu_rate(pid: int, seconds: float) -> float:
    """CPU seconds per second of ``pid`` over the next ``seconds``."""
    before = cpu_seconds(pid)
    time.sleep(seconds)
    return (cpu_seconds(pid) - before) / seconds


def by_state(nodes) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in nodes:
        counts[node.state] = counts.get(node.state, 0) + 1
    return counts


@dataclass
class Row:
    nodes: int
    fill: float = 0.0
    registered: float = 0.0
    first_served: float = 0.0
    settle: float = 0.0
    settled: bool = True
    idle_cpu: float = 0.0
    rss_settled: float = 0.0
    rss_after: float = 0.0
    burst_cpu: float = 0.0
    burst_seconds: float = 0.0
    requests: int = 0
    fulfilled: int = 0
    throughput: float = 0.0
    latencies: list[float] = field(default_factory=list)
    population: dict[str, int] = field(default_factory=dict)
    after_settle: dict[str, int] = field(default_factory=dict)
    after_burst: dict[str, int] = field(default_factory=dict)
    open_requests: int = 0

    @property
    def cpu_per_request(self) -> float:
        return self.burst_cpu / self.requests * 1000

    @property
    def net_cpu_per_request(self) -> float:
        """Minus the idle rate over the burst's duration: the burst's own cost."""
        return (self.burst_cpu - self.idle_cpu * self.burst_seconds) / self.requests * 1000


class Deployment:
    """One N: a ZooKeeper, its records, a launcher, a Zuul-role client."""

    def __init__(self, count: int, open_requests: int, state_dir: str):
        self.count = count
        self.open_requests = open_requests
        self.state_dir = state_dir
        self.zookeeper = ZooKeeperServerProcess(os.path.join(state_dir, "zk"))
        self.filler: ZooKeeperClient | None = None
        self.observer: Observer | None = None
        self.zuul: FakeZuul | None = None
        self.launcher: subprocess.Popen | None = None
        self.log = None
        self.config = os.path.join(state_dir, "nodepool.yaml")
        self.web_port = free_port()

    def start(self, row: Row) -> None:
        os.makedirs(self.zookeeper.workdir)
        self.zookeeper.start()
        hosts = f"{self.zookeeper.hosts}/bench"
        write_config(self.config, self.zookeeper.port, self.web_port)
        # This session holds the locks of the locked nodes: kept to the end.
        self.filler = ZooKeeperClient(hosts, timeout=30)
        self.filler.connect(timeout=30)
        start = time.monotonic()
        members = population(self.count)
        fill_population(Store(self.filler), members, NODE_RESOURCES)
        row.open_requests = len(fill_open_requests(
            Store(self.filler), FULL_LABELS, self.open_requests))
        row.fill = time.monotonic() - start
        row.population = by_state(members)
        self.observer = Observer(hosts)
        # kazoo's cheaper select, so the harness steals less CPU.
        self.zuul = FakeZuul(hosts, handler=PollingHandler())

    def launch(self, row: Row, timeout: float) -> None:
        """Start the launcher with a request already waiting; time it to its
        pools registered and running, and to that request fulfilled."""
        probe = self.zuul.submit([BURST_LABELS[0]])
        self.log = open(os.path.join(self.state_dir, "launcher.log"), "wb")
        start = time.monotonic()
        self.launcher = subprocess.Popen(
            [os.path.join(ROOT, ".venv", "bin", "nodepool-launcher"), "-f",
             "-c", self.config],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = start + timeout
        while not self._running():
            self._check_alive(deadline)
            time.sleep(0.05)
        row.registered = time.monotonic() - start
        if not self.observer.wait([probe], max(1.0, deadline - time.monotonic())):
            self._check_alive(0)
        row.first_served = self.observer.fulfilled[probe] - start
        Burst(self.zuul, self.observer).consume(probe)

    def _check_alive(self, deadline: float) -> None:
        if time.monotonic() > deadline or self.launcher.poll() is not None:
            raise SystemExit(f"the launcher did not start; see {self.state_dir}/launcher.log")

    def _running(self) -> bool:
        """The launcher's component says running and all its pools registered."""
        kazoo = self.zuul.kazoo
        try:
            launchers = kazoo.get_children(paths.components("launcher"))
            pools = kazoo.get_children(paths.components("pool"))
        except Exception:  # not created yet
            return False
        states = [json.loads(kazoo.get(f"{paths.components('launcher')}/{name}")[0] or b"{}")
                  .get("state") for name in launchers]
        return "running" in states and len(pools) >= len(pool_names())

    def settle(self, row: Row, window: float, limit: float) -> None:
        """Until two consecutive windows of launcher CPU agree (within 25% or
        0.02 cores): the start-up's clean-up and min-ready are over."""
        start = time.monotonic()
        previous = cpu_rate(self.launcher.pid, window)
        while True:
            current = cpu_rate(self.launcher.pid, window)
            if abs(current - previous) <= max(0.02, 0.25 * previous):
                break
            if time.monotonic() - start > limit:
                row.settled = False
                break
            previous = current
        row.settle = time.monotonic() - start

    def stop(self, keep: bool) -> None:
        if self.launcher is not None and self.launcher.poll() is None:
            self.launcher.send_signal(signal.SIGTERM)
            try:
                self.launcher.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.launcher.kill()
                self.launcher.wait(timeout=10)
        for part in (self.zuul, self.observer):
            if part is not None:
                part.stop()
        if self.filler is not None:
            self.filler.disconnect()
        self.zookeeper.stop()
        if self.log is not None:
            self.log.close()
        if keep:
            print(f"  state kept in {self.state_dir}")
        else:
            shutil.rmtree(self.state_dir, ignore_errors=True)


def measure(count: int, args, final: bool) -> Row:
    row = Row(nodes=count, requests=args.requests)
    deployment = Deployment(count, args.open_requests,
                            tempfile.mkdtemp(prefix=f"nodepool-scale-{count}-"))
    try:
        deployment.start(row)
        deployment.launch(row, args.timeout)
        pid = deployment.launcher.pid
        deployment.settle(row, 3.0, args.settle_limit)
        row.after_settle = by_state(deployment.observer.nodes.nodes())
        profile = args.profile and final
        if profile:
            deployment.launcher.send_signal(signal.SIGUSR2)
        row.idle_cpu = cpu_rate(pid, args.idle_seconds)
        row.rss_settled = rss_mib(pid)
        burst = Burst(deployment.zuul, deployment.observer)
        labels = [[BURST_LABELS[i % len(BURST_LABELS)]] for i in range(args.requests)]
        cpu_before = cpu_seconds(pid)
        started = time.monotonic()
        try:
            burst.run(labels, args.timeout)
        finally:
            burst.stop()
        row.burst_seconds = time.monotonic() - started
        row.burst_cpu = cpu_seconds(pid) - cpu_before
        row.rss_after = rss_mib(pid)
        if profile:
            deployment.launcher.send_signal(signal.SIGUSR2)
            print(f"  profile (idle window and burst) in {deployment.state_dir}/launcher.log")
        row.latencies = burst.latencies()
        row.fulfilled = len(row.latencies)
        row.throughput = row.fulfilled / max(burst.fulfilled_by - burst.started, 1e-9)
        row.after_burst = by_state(deployment.observer.nodes.nodes())
        print_row(row)
        if final:
            tools_at(deployment, args.runs)
        return row
    finally:
        deployment.stop(args.keep)


def print_row(row: Row) -> None:
    print(f"N={row.nodes}: filled in {row.fill:.1f} s; start-up {row.registered:.2f} s "
          f"to running, {row.first_served:.2f} s to a waiting request served; "
          f"settled after {row.settle:.0f} s{'' if row.settled else ' (NOT settled)'}",
          flush=True)
    print(f"  written:      {fmt_states(row.population)}; {row.open_requests} open "
          "requests")
    print(f"  after settle: {fmt_states(row.after_settle)}")
    print(f"  after burst:  {fmt_states(row.after_burst)}")
    print(f"  idle CPU {row.idle_cpu * 1000:.0f} ms/s; RSS {row.rss_settled:.0f} MiB "
          f"settled, {row.rss_after:.0f} MiB after the burst")
    print(f"  burst: {row.fulfilled}/{row.requests} fulfilled, "
          f"{row.throughput:.1f} requests/s, latency p50 "
          f"{percentile(row.latencies, 50):.3f} s p99 {percentile(row.latencies, 99):.3f} s; "
          f"launcher CPU {row.burst_cpu:.2f} s over {row.burst_seconds:.1f} s (incl. "
          f"deletions) = {row.cpu_per_request:.2f} ms/request, "
          f"{row.net_cpu_per_request:.2f} ms/request net of the idle rate", flush=True)


def fmt_states(counts: dict[str, int]) -> str:
    return f"{sum(counts.values())} nodes (" + ", ".join(
        f"{state} {counts[state]}" for state in NodeState.ALL if counts.get(state)) + ")"


def tools_at(deployment: Deployment, runs: int) -> None:
    """The CLI's and the web server's node and request lists, timed."""
    print(f"at N={deployment.count}:")
    for args in (["list"], ["list", "--detail"], ["request-list"]):
        times, lines = time_command(deployment.config, args, runs)
        print(f"  nodepool {' '.join(args):<15} {statistics.median(times):.2f} s median "
              f"of {runs} (max {max(times):.2f}; {lines} lines; process start included)",
              flush=True)
    for path in ("/node-list", "/node-list.json", "/request-list.json"):
        time.sleep(1.1)  # past the response cache
        code, body, first = fetch(deployment.web_port, path)
        times = []
        for _ in range(runs):
            time.sleep(1.1)
            times.append(fetch(deployment.web_port, path)[2])
        print(f"  web {path:<22} {code} {len(body)} bytes: {statistics.median(times):.0f} "
              f"ms median of {runs} (first {first:.0f} ms)", flush=True)


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys against xs."""
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / spread


def summary(rows: list[Row]) -> None:
    print()
    print(f"{'N':>6} {'start s':>8} {'served s':>9} {'idle ms/s':>10} {'RSS MiB':>8} "
          f"{'ms/req':>7} {'net ms/req':>11} {'req/s':>6}")
    for row in rows:
        print(f"{row.nodes:>6} {row.registered:>8.2f} {row.first_served:>9.2f} "
              f"{row.idle_cpu * 1000:>10.0f} {row.rss_settled:>8.0f} "
              f"{row.cpu_per_request:>7.2f} {row.net_cpu_per_request:>11.2f} "
              f"{row.throughput:>6.1f}")
    if len(rows) < 2:
        return
    small, large = rows[0], rows[-1]
    print(f"CPU/request at N={large.nodes} vs N={small.nodes}: "
          f"{large.cpu_per_request / small.cpu_per_request:.2f}x "
          f"({large.net_cpu_per_request / small.net_cpu_per_request:.2f}x net of idle)")
    per_10k = slope([r.nodes for r in rows], [r.rss_settled for r in rows]) * 10000
    print(f"memory: {per_10k:.0f} MiB per 10,000 nodes (slope of settled RSS vs N)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="1000,5000,10000,20000",
                        help="comma-separated existing-node counts")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--idle-seconds", type=float, default=10.0,
                        help="idle CPU sample (covers the pools' 5 s idle passes)")
    parser.add_argument("--settle-limit", type=float, default=120.0)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--open-requests", type=int, default=2000)
    parser.add_argument("--profile", action="store_true",
                        help="yappi-profile the launcher (SIGUSR2) over the idle window "
                        "and the burst at the largest N; the profile lands in its log "
                        "(implies --keep)")
    parser.add_argument("--keep", action="store_true",
                        help="keep each N's state directory (launcher log, ZooKeeper)")
    args = parser.parse_args()
    args.keep = args.keep or args.profile
    counts = sorted(int(n) for n in args.nodes.split(","))
    # SIGTERM unwinds like Ctrl-C, so every launcher and ZooKeeper is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(f"deployment: {len(PROVIDERS)} providers x {POOLS_PER_PROVIDER} pools (fake "
          f"cloud), {len(LABELS)} labels, min-ready {MIN_READY} on "
          f"{len(MIN_READY_LABELS)}; {args.open_requests} open requests for "
          f"{len(FULL_LABELS)} labels of 2 pools held at max-servers "
          f"({FULL_POOL_SIZE}) by in-use nodes; burst of {args.requests} over "
          f"{len(BURST_LABELS)} labels", flush=True)
    rows = []
    for count in counts:
        rows.append(measure(count, args, final=count == counts[-1]))
    summary(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
