"""Benchmark: how soon a dead launcher's launches are carried on.

Starts a throw-away ZooKeeper, the OpenStack simulator (one cloud, shared by
every launcher process; servers take ``--boot-delay`` seconds to boot) and
``--launchers`` launcher processes on the same provider. Submits a burst of
single-node requests and, once one launcher drives at least ``--in-flight``
launches, kills it with SIGKILL. A watcher of its own follows each node's
progress record and prints, for the dead launcher's launches:

* kill -> its session expired (its components vanish): ZooKeeper's
  session timeout (``--session-timeout``) at work;
* session expired -> each launch resumed by another launcher (the node's
  ``progress.launcher`` changes): the takeover itself;
* kill -> resumed, the sum;

and checks that every request was fulfilled, with the instances the launches
had when their launcher died.

    .venv/bin/python tools/bench/launcher_takeover.py --launchers 3 --runs 3
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import time

import yaml
from common import SIM_PROVIDER, Daemon, our_launcher, percentile, start_zookeeper, \
    wait_until

from nodepool.testing.burst import Burst, Observer
from nodepool.testing.openstack_sim import OpenStackSimulator
from nodepool.testing.zuul_client import FakeZuul
from nodepool.zk.records import NodeState

CONFIG = """
zookeeper-servers:
  - host: 127.0.0.1
    port: {port}
    chroot: /takeover{run}
zookeeper-timeout: {session_timeout}
labels:
  - name: small
providers:
"""


class Takeover:
    """Watches one run: which launches the victim drove, when its session
    went, when each of them changed hands."""

    def __init__(self, observer: Observer):
        self.observer = observer
        self.victim: str | None = None
        self.in_flight: dict[str, object] = {}
        self.killed_at = 0.0
        self.resumed: dict[str, float] = {}
        self.resumed_by: dict[str, str] = {}
        observer.node_watchers.append(self._on_node)

    def _on_node(self, kind, node_id, node):
        if kind != "changed" or node_id not in self.in_flight or \
                node_id in self.resumed:
            return
        progress = node.progress
        if progress is not None and progress.launcher != self.victim:
            self.resumed[node_id] = time.monotonic()
            self.resumed_by[node_id] = progress.launcher

    def victim_gone(self) -> bool:
        components = self.observer.client.kazoo.get_children(
            "/nodepool/components/launcher")
        for name in components:
            data, _ = self.observer.client.kazoo.get(
                f"/nodepool/components/launcher/{name}")
            if self.victim and self.victim.encode() in data:
                return False
        return True


def one_run(args, run: int, state: str, zookeeper, simulator, env) -> dict:
    config = os.path.join(state, f"nodepool-{run}.yaml")
    with open(config, "w") as handle:
        handle.write(CONFIG.format(port=zookeeper.port, run=run,
                                   session_timeout=args.session_timeout)
                     + SIM_PROVIDER.format(name="sim-takeover",
                                           max_servers=args.requests * 2))
    daemons: list[Daemon] = [
        our_launcher(config, os.path.join(state, f"launcher-{run}-{i}.log"), env).start()
        for i in range(args.launchers)]
    hosts = f"{zookeeper.hosts}/takeover{run}"
    observer = Observer(hosts)
    zuul = FakeZuul(hosts)
    burst = Burst(zuul, observer)
    watch = Takeover(observer)
    try:
        if not wait_until(lambda: zuul.kazoo.exists("/nodepool/components/pool") and
                          len(zuul.kazoo.get_children("/nodepool/components/pool"))
                          == args.launchers, 60):
            raise SystemExit(f"the launchers did not start; see {state}")
        for daemon in daemons:
            # Which process is which launcher id: its log says at start.
            wait_until(lambda d=daemon: "Launcher running" in open(d.log_path).read(), 30)
        gone_at = [0.0]

        def kill(finished: int) -> None:
            if watch.victim is not None:
                if not gone_at[0] and watch.victim_gone():
                    gone_at[0] = time.monotonic()
                return
            by_launcher: dict[str, dict] = {}
            for node in observer.nodes.nodes():
                if node.state == NodeState.BUILDING and node.progress is not None \
                        and node.external_id is not None:
                    by_launcher.setdefault(node.progress.launcher, {})[node.id] = \
                        node.external_id
            if not by_launcher:
                return
            victim, launches = max(by_launcher.items(), key=lambda kv: len(kv[1]))
            if len(launches) < args.in_flight:
                return
            daemon = next((d for d in daemons if victim in open(d.log_path).read()),
                          None)
            if daemon is None:
                return
            watch.victim, watch.in_flight = victim, dict(launches)
            watch.killed_at = time.monotonic()
            daemon.process.send_signal(signal.SIGKILL)

        burst.run([["small"]] * args.requests, args.timeout, during=kill)
        given = {n["id"]: n for nodes in burst.given.values() for n in nodes}
        same = sum(1 for node_id, server in watch.in_flight.items()
                   if given.get(node_id, {}).get("external_id") == server)
        return {"in_flight": len(watch.in_flight), "resumed": len(watch.resumed),
                "same_instance": same, "unfinished": burst.unfinished,
                "to_gone": gone_at[0] - watch.killed_at if gone_at[0] else None,
                "gone_to_resumed": [t - gone_at[0] for t in watch.resumed.values()]
                if gone_at[0] else [],
                "kill_to_resumed": [t - watch.killed_at for t in watch.resumed.values()]}
    finally:
        burst.stop()
        for daemon in daemons:
            daemon.stop(timeout=60)
        zuul.stop()
        observer.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--launchers", type=int, default=3)
    parser.add_argument("--requests", type=int, default=90)
    parser.add_argument("--boot-delay", type=float, default=8.0,
                        help="seconds a server takes to boot in the simulator")
    parser.add_argument("--in-flight", type=int, default=10,
                        help="kill a launcher once it drives this many launches")
    parser.add_argument("--session-timeout", type=float, default=5.0,
                        help="the launchers' zookeeper-timeout")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()

    state = tempfile.mkdtemp(prefix="nodepool-takeover-")
    zookeeper = start_zookeeper(state)
    simulator = OpenStackSimulator(boot_delay=args.boot_delay,
                                   max_instances=args.requests * 4,
                                   max_cores=args.requests * 40).start()
    clouds = os.path.join(state, "clouds.yaml")
    with open(clouds, "w") as handle:
        yaml.safe_dump(simulator.clouds_yaml(), handle)
    env = dict(os.environ, OS_CLIENT_CONFIG_FILE=clouds)
    results = []
    try:
        for run in range(args.runs):
            result = one_run(args, run, state, zookeeper, simulator, env)
            results.append(result)
            gone = result["to_gone"]
            gone_text = f"session gone after {gone:.2f} s" if gone is not None \
                else "session not seen gone"
            print(f"run {run + 1}: {result['in_flight']} launches in flight at the kill, "
                  f"{result['resumed']} resumed, {result['same_instance']} with their "
                  f"instance, {result['unfinished']} requests unfinished; {gone_text}",
                  flush=True)
    finally:
        simulator.stop()
        zookeeper.stop()
    to_gone = [r["to_gone"] for r in results if r["to_gone"] is not None]
    after = [t for r in results for t in r["gone_to_resumed"]]
    total = [t for r in results for t in r["kill_to_resumed"]]
    print(f"launchers: {args.launchers}, session timeout {args.session_timeout:.1f} s, "
          f"boot delay {args.boot_delay:.1f} s, {len(results)} runs")
    if to_gone:
        print(f"kill -> session expired:   p50 {percentile(to_gone, 50):.2f} s, "
              f"max {max(to_gone):.2f} s")
    if after:
        print(f"session expired -> resumed: p50 {percentile(after, 50) * 1000:.0f} ms, "
              f"p90 {percentile(after, 90) * 1000:.0f} ms, max {max(after) * 1000:.0f} ms "
              f"({len(after)} launches)")
    if total:
        print(f"kill -> resumed:            p50 {percentile(total, 50):.2f} s, "
              f"max {max(total):.2f} s")
    failed = any(r["unfinished"] or r["resumed"] < r["in_flight"] for r in results)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
