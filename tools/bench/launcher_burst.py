"""Benchmark: a burst of single-node requests through a real launcher.

Starts a throw-away ZooKeeper and ``nodepool-launcher`` (a separate process,
fake cloud, no boot delay), then plays Zuul: submits N requests at once over
ZooKeeper, and as each is fulfilled takes the node, marks it used and returns
it. Prints throughput, submit->fulfilled latency percentiles, the latency of
a single request on an idle launcher, node deletion latency (used -> znode
gone), and the launcher's CPU seconds per request (from /proc).

    .venv/bin/python tools/bench/launcher_burst.py --requests 1000
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from common import Daemon, fake_cloud_config, our_launcher, percentile, start_zookeeper, \
    cpu_seconds, wait_until

from nodepool.testing.zuul_client import FakeZuul
from nodepool.zk.cache import NodeCache, RequestCache
from nodepool.zk.client import ZooKeeperClient

OPENSTACK_PROVIDER = """
  - name: sim-bench
    cloud: sim
    region-name: RegionOne
    rate: 0.0001
    cloud-images:
      - name: ubuntu
        image-id: ubuntu-image-id
    pools:
      - name: main
        max-servers: {max_servers}
        host-key-checking: false
        labels:
          - name: small
            cloud-image: ubuntu
            min-ram: 1024
"""


class Observer:
    """Times fulfilments and node deletions through watch-driven caches."""

    def __init__(self, hosts: str):
        self.client = ZooKeeperClient(hosts)
        self.client.connect(timeout=30)
        self.requests = RequestCache(self.client)
        self.nodes = NodeCache(self.client)
        self.fulfilled: dict[str, float] = {}
        self.deleted: dict[str, float] = {}
        self.done = threading.Condition()
        self.requests.add_listener(self._on_request)
        self.nodes.add_listener(self._on_node)
        self.requests.start().wait_synced()
        self.nodes.start().wait_synced()

    def _on_request(self, kind, request_id, request):
        if kind == "changed" and request.state in ("fulfilled", "failed") \
                and request_id not in self.fulfilled:
            with self.done:
                self.fulfilled[request_id] = time.monotonic()
                self.done.notify_all()

    def _on_node(self, kind, node_id, node):
        if kind == "deleted":
            self.deleted[node_id] = time.monotonic()

    def wait(self, request_ids, timeout):
        deadline = time.monotonic() + timeout
        with self.done:
            while not all(r in self.fulfilled for r in request_ids):
                if not self.done.wait(max(0.0, deadline - time.monotonic())):
                    if time.monotonic() > deadline:
                        return False
        return True

    def stop(self):
        self.requests.stop()
        self.nodes.stop()
        self.client.disconnect()


class Burst:
    """Plays Zuul for a burst of requests: submits them all at once, and as
    each is fulfilled takes its nodes, uses them and returns them used."""

    def __init__(self, zuul: FakeZuul, observer: Observer, workers: int = 8):
        self.zuul = zuul
        self.observer = observer
        self.pool = ThreadPoolExecutor(max_workers=workers)
        self.used_at: dict[str, float] = {}
        self.submitted: dict[str, float] = {}
        self.unfinished = 0
        self.started = self.submit_done = self.fulfilled_by = 0.0

    def consume(self, request_id: str) -> None:
        nodes = self.zuul.accept(request_id)
        self.zuul.use(nodes)
        for node in nodes:
            self.used_at[node["id"]] = time.monotonic()
        self.zuul.release(nodes)

    def run(self, node_types: list[list[str]], timeout: float) -> None:
        """One request per entry of ``node_types``; returns once all were
        fulfilled and their nodes deleted (or ``timeout`` ran out for either)."""
        observer = self.observer
        self.started = time.monotonic()
        # All creates pipelined, as many schedulers submitting at once.
        pending_creates = [(self.zuul.submit_async(labels), time.monotonic())
                           for labels in node_types]
        for result, sent in pending_creates:
            self.submitted[result.get(timeout=60).rsplit("/", 1)[1]] = sent
        self.submit_done = time.monotonic()
        pending = set(self.submitted)
        futures = []
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            with observer.done:
                observer.done.wait(0.05)
            finished = [r for r in pending if r in observer.fulfilled]
            for request_id in finished:
                pending.discard(request_id)
                futures.append(self.pool.submit(self.consume, request_id))
        self.unfinished = len(pending)
        self.fulfilled_by = max(observer.fulfilled.get(r, 0) for r in self.submitted)
        for future in futures:
            future.result()
        # Wait for the used nodes to be deleted.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and \
                not all(n in observer.deleted for n in self.used_at):
            time.sleep(0.05)

    def latencies(self) -> list[float]:
        """Submit -> fulfilled, of the fulfilled requests."""
        return [self.observer.fulfilled[r] - t for r, t in self.submitted.items()
                if r in self.observer.fulfilled]

    def deletions(self) -> list[float]:
        """Returned used -> znode gone, of the deleted nodes."""
        return [self.observer.deleted[n] - t for n, t in self.used_at.items()
                if n in self.observer.deleted]

    def stop(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


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
            OPENSTACK_PROVIDER.format(max_servers=max_servers)
    with open(config, "w") as handle:
        handle.write(text)
    launcher: Daemon = our_launcher(config, os.path.join(state, "launcher.log"),
                                    env).start()
    hosts = f"{zookeeper.hosts}/bench"
    observer = Observer(hosts)
    # Same protocol as Zuul; kazoo's cheaper select so the harness steals
    # less CPU from the launcher on this shared machine.
    from nodepool.zk.client import PollingHandler
    zuul = FakeZuul(hosts, handler=PollingHandler())
    burst = Burst(zuul, observer)

    try:
        # Wait for the launcher's pool to register.
        if not wait_until(lambda: zuul.kazoo.exists("/nodepool/components/pool")
                          and zuul.kazoo.get_children("/nodepool/components/pool"),
                          60, alive=launcher):
            raise SystemExit(f"the launcher did not start; see {state}/launcher.log")

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
        cpu_before = cpu_seconds(launcher.pid)
        own_before = time.process_time()
        zk_before = cpu_seconds(zookeeper.process.pid)
        if args.profile:
            launcher.process.send_signal(signal.SIGUSR2)
            time.sleep(0.5)
        burst.run([["small"]] * args.requests, args.timeout)
        cpu_after = cpu_seconds(launcher.pid)
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
              f"{cpu / args.requests * 1000:.2f} ms per request (incl. deletion)")
        if simulator is not None:
            print(f"cloud left over:      {len(simulator.servers)} servers, "
                  f"{len(simulator.floating_ips)} floating IPs (every node was used "
                  f"and returned: anything left is a leak)")
        print(f"other CPU:            ZooKeeper {zk_cpu:.2f} s, this Zuul-role client "
              f"{own_cpu:.2f} s (the machine's cores are shared by all three)")
        return 0 if not burst.unfinished else 1
    finally:
        burst.stop()
        launcher.stop(timeout=60)
        zuul.stop()
        observer.stop()
        zookeeper.stop()
        if simulator is not None:
            simulator.stop()


if __name__ == "__main__":
    raise SystemExit(main())
