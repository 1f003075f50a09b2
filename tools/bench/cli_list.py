"""Benchmark: ``nodepool list`` on a big pool.

Starts a throw-away ZooKeeper, writes N node records (realistic ones, a
tenth of them locked, as Zuul holds nodes in use), then runs the real
``nodepool list`` command (a new process each time, so interpreter start-up
and imports are counted) and prints the wall time of each form.

    .venv/bin/python tools/bench/cli_list.py --nodes 10000
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nodepool.testing.zkserver import ZooKeeperServerProcess  # noqa: E402

from nodepool.zk import paths  # noqa: E402
from nodepool.zk.client import ZooKeeperClient  # noqa: E402
from nodepool.zk.records import Node  # noqa: E402


def populate(client: ZooKeeperClient, count: int) -> None:
    kazoo = client.kazoo
    kazoo.ensure_path(paths.NODES)
    now = time.time()
    batch = []
    for index in range(count):
        node = Node(id=f"{index:010d}", provider=f"cloud-{index % 4}",
                    pool="main", type=["ubuntu-jammy"], state="in-use" if index % 10
                    else "ready", state_time=now - index, external_id=f"srv-{index}",
                    interface_ip=f"10.0.{index // 250}.{index % 250}",
                    public_ipv4=f"203.0.{index // 250}.{index % 250}",
                    hostname=f"np{index:010d}", launcher="bench", az="az1",
                    username="zuul", connection_port=22,
                    host_keys=["ssh-ed25519 AAAAC3Nza" + "x" * 60])
        batch.append(kazoo.create_async(paths.node(node.id), node.to_json()))
        if index % 10 == 0:
            batch.append(kazoo.create_async(
                f"{paths.node_lock(node.id)}/{'a' * 32}__lock__0000000000",
                b"", makepath=True))
        if len(batch) >= 2000:
            for result in batch:
                result.get(timeout=60)
            batch = []
    for result in batch:
        result.get(timeout=60)


def time_command(config: str, args: list[str], runs: int) -> tuple[list[float], int]:
    times = []
    lines = 0
    for _ in range(runs):
        start = time.monotonic()
        done = subprocess.run([os.path.join(ROOT, ".venv", "bin", "nodepool"), "-c",
                               config, *args], capture_output=True, text=True,
                              timeout=600)
        times.append(time.monotonic() - start)
        if done.returncode != 0:
            raise SystemExit(f"nodepool {' '.join(args)} failed: {done.stderr}")
        lines = done.stdout.count("\n")
    return times, lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    state = tempfile.mkdtemp(prefix="nodepool-bench-list-")
    zookeeper = ZooKeeperServerProcess(os.path.join(state, "zk"))
    os.makedirs(zookeeper.workdir)
    zookeeper.start()
    try:
        client = ZooKeeperClient(f"{zookeeper.hosts}/bench")
        client.connect(timeout=30)
        start = time.monotonic()
        populate(client, args.nodes)
        print(f"nodes:                {args.nodes} written in "
              f"{time.monotonic() - start:.1f} s", flush=True)
        client.disconnect()
        config = os.path.join(state, "nodepool.yaml")
        with open(config, "w") as handle:
            handle.write(f"zookeeper-servers:\n  - host: 127.0.0.1\n"
                         f"    port: {zookeeper.port}\n    chroot: /bench\n")
        for label, extra in (("nodepool list", []), ("nodepool list --detail", ["--detail"]),
                             ("nodepool list --json", ["--json"])):
            times, lines = time_command(config, ["list", *extra], args.runs)
            print(f"{label + ':':<22}{statistics.median(times):.2f} s median of "
                  f"{args.runs} (min {min(times):.2f}, max {max(times):.2f}; "
                  f"{lines} lines out, start-up included)", flush=True)
        times, _ = time_command(config, ["--help"], args.runs)
        print(f"{'start-up alone:':<22}{statistics.median(times):.2f} s "
              "(nodepool --help)")
    finally:
        zookeeper.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
