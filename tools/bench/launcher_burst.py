"""Benchmark: a burst of single-node requests through a real launcher.

Starts a throw-away ZooKeeper and ``nodepool-launcher`` (a separate process,
fake cloud, no boot delay), then plays Zuul: submits N requests at once over
ZooKeeper, and as each is fulfilled takes the node, marks it used and returns
it. Prints throughput, submit->fulfilled latency percentiles, the latency of
a single request on an idle launcher, node deletion latency (used -> znode
gone), and the launcher's CPU seconds per request (from /proc).

    .venv/bin/python tools/bench/launcher_burst.py --requests 1000
    .venv/bin/python tools/bench/launcher_burst.py --requests 1000 --launchers 3

With ``--launchers N`` that many launcher processes serve the same provider
(they share its requests and quota; with the fake cloud each process has a
cloud of its own, which the burst's raised quota makes no matter); the CPU
figure is then their sum, and each one's share of the launches is printed.
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import statistics
import tempfile
import time

from common import SIM_PROVIDER, Daemon, cpu_seconds, fake_cloud_config, our_launcher, \
    percentile, start_zookeeper, wait_until

from nodepool.testing.burst import Burst, Observer
from nodepool.testing.zuul_client import FakeZuul


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--singles", type=int, default=20,
                        help="single requests on the idle launcher, for latency")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--cloud", choices=["fake", "openstack"], default="fake",
                        help="fake: in-memory cloud in the launcher; openstack: "
                        "openstacksdk over HTTP to nodepool/testing/openstack_sim.py (run in "
                        "this process)")
    parser.add_argument("--launchers", type=int, default=1,
                        help="launcher processes serving the provider")
    parser.add_argument("--profile", action="store_true",
                        help="yappi-profile the launcher during the burst (SIGUSR2); "
                        "the profile lands in the launcher log")
    args = parser.parse_args()

    state = tempfile.mkdtemp(prefix="nodepool-bench-")
    zookeeper = start_zookeeper(state)
    config = os.path.join(state, "nodepool.yaml")
    max_servers = max(args.requests * 2, 100)
    text = fake_cloud_config(zookeeper.port, max_servers, chroot="/bench")
    env = dict(os.environ)
    simulator = None
    if args.cloud == "openstack":
        import yaml
        from nodepool.testing.openstack_sim import OpenStackSimulator
        simulator = OpenStackSimulator(max_instances=max_servers * 2,
                                       max_cores=max_servers * 8).start()
        clouds = os.path.join(state, "clouds.yaml")
        with open(clouds, "w") as handle:
            yaml.safe_dump(simulator.clouds_yaml(), handle)
        env["OS_CLIENT_CONFIG_FILE"] = clouds
        text = text[:text.index("  - name: fake-bench")] + \
            SIM_PROVIDER.format(name="sim-bench", max_servers=max_servers)
    with open(config, "w") as handle:
        handle.write(text)
    launchers: list[Daemon] = [
        our_launcher(config, os.path.join(state, f"launcher-{index}.log"), env).start()
        for index in range(args.launchers)]
    launcher = launchers[0]
    hosts = f"{zookeeper.hosts}/bench"
    observer = Observer(hosts)
    # Same protocol as Zuul; kazoo's cheaper select so the harness steals
    # less CPU from the launcher on this shared machine.
    from nodepool.zk.client import PollingHandler
    zuul = FakeZuul(hosts, handler=PollingHandler())
    burst = Burst(zuul, observer)

    try:
        # Wait for the launchers' pools to register.
        if not wait_until(lambda: zuul.kazoo.exists("/nodepool/components/pool")
                          and len(zuul.kazoo.get_children("/nodepool/components/pool"))
                          == args.launchers, 60, alive=launcher):
            raise SystemExit(f"the launchers did not start; see {state}/launcher-*.log")

        # Single requests on an idle launcher.
        singles = []
        for _ in range(args.singles):
            start = time.monotonic()
            request_id = zuul.submit(["small"])
            observer.wait([request_id], 30)
            singles.append(observer.fulfilled[request_id] - start)
            burst.consume(request_id)
            time.sleep(0.2)
        time.sleep(1.0)

        # The burst.
        cpu_before = sum(cpu_seconds(d.pid) for d in launchers)
        own_before = time.process_time()
        zk_before = cpu_seconds(zookeeper.process.pid)
        if args.profile:
            launcher.process.send_signal(signal.SIGUSR2)
            time.sleep(0.5)
        burst.run([["small"]] * args.requests, args.timeout)
        cpu_after = sum(cpu_seconds(d.pid) for d in launchers)
        if simulator is not None:
            # Give the delete worker a moment to finish, then count leaks.
            deadline = time.monotonic() + 30
            while (simulator.servers or simulator.floating_ips) and \
                    time.monotonic() < deadline:
                time.sleep(0.2)
        own_cpu = time.process_time() - own_before
        zk_cpu = cpu_seconds(zookeeper.process.pid) - zk_before
        if args.profile:
            launcher.process.send_signal(signal.SIGUSR2)
            time.sleep(2)
            print(f"profile in {state}/launcher.log")

        latencies = burst.latencies()
        deletions = burst.deletions()
        elapsed = burst.fulfilled_by - burst.started
        print(f"requests:             {args.requests} single-node, burst submitted in "
              f"{burst.submit_done - burst.started:.2f} s")
        print(f"fulfilled:            {len(latencies)} (unfinished: {burst.unfinished})")
        print(f"throughput:           {len(latencies) / elapsed:.1f} requests/s "
              f"(all fulfilled {elapsed:.2f} s after the first submit)")
        print(f"latency p50/p90/p99:  {percentile(latencies, 50):.3f} / "
              f"{percentile(latencies, 90):.3f} / {percentile(latencies, 99):.3f} s")
        print(f"idle single request:  p50 {statistics.median(singles) * 1000:.1f} ms, "
              f"max {max(singles) * 1000:.1f} ms ({len(singles)} requests)")
        print(f"node deletion:        p50 {percentile(deletions, 50) * 1000:.1f} ms, "
              f"p99 {percentile(deletions, 99) * 1000:.1f} ms (used -> znode gone)")
        cpu = cpu_after - cpu_before
        print(f"launcher CPU:         {cpu:.2f} s for the burst, "
              f"{cpu / args.requests * 1000:.2f} ms per request (incl. deletion)"
              + (f", {args.launchers} launchers together" if args.launchers > 1 else ""))
        if args.launchers > 1:
            shares = collections.Counter(
                nodes[0]["launcher"].split("-PoolWorker")[1] if nodes else "?"
                for nodes in burst.given.values())
            print(f"launches per launcher: {sorted(shares.values(), reverse=True)}")
        if simulator is not None:
            print(f"cloud left over:      {len(simulator.servers)} servers, "
                  f"{len(simulator.floating_ips)} floating IPs (every node was used "
                  f"and returned: anything left is a leak)")
        print(f"other CPU:            ZooKeeper {zk_cpu:.2f} s, this Zuul-role client "
              f"{own_cpu:.2f} s (the machine's cores are shared by all three)")
        return 0 if not burst.unfinished else 1
    finally:
        burst.stop()
        for daemon in launchers:
            daemon.stop(timeout=60)
        zuul.stop()
        observer.stop()
        zookeeper.stop()
        if simulator is not None:
            simulator.stop()


if __name__ == "__main__":
    raise SystemExit(main())
