"""Benchmark: a burst of requests through a real launcher with an AWS provider.

Starts a throw-away ZooKeeper, the AWS simulator (moto's server mode in its
own process, nodepool/testing/aws_sim) and ``nodepool-launcher`` (a separate
process; boto3 reaches the simulator through ``AWS_ENDPOINT_URL``), then plays
Zuul: submits N requests at once, and as each is fulfilled takes the node,
uses it and returns it. Prints throughput, submit->fulfilled percentiles, node
deletion latency, the API calls the simulator served per node (by action),
and what is left in EC2 afterwards.

    .venv/bin/python tools/bench/aws_burst.py --requests 200
"""

from __future__ import annotations

import argparse
import os
import tempfile

from common import cpu_seconds, our_launcher, percentile, start_zookeeper, wait_until
from launcher_burst import Burst, Observer

from nodepool.testing.aws_sim import AWSSimulator, UBUNTU_AMI
from nodepool.testing.zuul_client import FakeZuul

CONFIG = """
zookeeper-servers:
  - host: 127.0.0.1
    port: {port}
    chroot: /bench
labels:
  - name: small
providers:
  - name: ec2-bench
    driver: aws
    region-name: us-east-1
    rate: {rate}
    cloud-images:
      - name: ubuntu
        image-id: {ami}
        username: ubuntu
    pools:
      - name: main
        max-servers: {max_servers}
        host-key-checking: false
        labels:
          - name: small
            cloud-image: ubuntu
            instance-type: t3.small
            key-name: zuul
"""


def live(ec2) -> tuple[int, int]:
    """(instances not terminated, volumes) in the simulated region."""
    pages = ec2.get_paginator("describe_instances").paginate(Filters=[{
        "Name": "instance-state-name",
        "Values": ["pending", "running", "shutting-down", "stopping", "stopped"]}])
    instances = sum(len(r["Instances"]) for p in pages for r in p["Reservations"])
    volumes = sum(len(p["Volumes"]) for p in
                  ec2.get_paginator("describe_volumes").paginate())
    return instances, volumes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rate", type=float, default=1000.0,
                        help="the provider's rate (API operations per second; "
                        "upstream's default is 2)")
    parser.add_argument("--boot-delay", type=float, default=0.5,
                        help="seconds an instance stays pending")
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()

    state = tempfile.mkdtemp(prefix="nodepool-aws-bench-")
    zookeeper = start_zookeeper(state)
    simulator = AWSSimulator().start()
    simulator.reset()
    simulator.set(boot_delay=args.boot_delay)
    config = os.path.join(state, "nodepool.yaml")
    with open(config, "w") as handle:
        handle.write(CONFIG.format(port=zookeeper.port, rate=args.rate, ami=UBUNTU_AMI,
                                   max_servers=max(args.requests * 2, 10)))
    env = dict(os.environ)
    env.update(simulator.env())
    launcher = our_launcher(config, os.path.join(state, "launcher.log"), env).start()
    hosts = f"{zookeeper.hosts}/bench"
    observer = Observer(hosts)
    from nodepool.zk.client import PollingHandler
    zuul = FakeZuul(hosts, handler=PollingHandler())
    burst = Burst(zuul, observer)
    ec2 = simulator.client("ec2")
    try:
        if not wait_until(lambda: zuul.kazoo.exists("/nodepool/components/pool")
                          and zuul.kazoo.get_children("/nodepool/components/pool"),
                          60, alive=launcher):
            raise SystemExit(f"the launcher did not start; see {state}/launcher.log")
        # One request first, so the launcher has read quota and instance types.
        warm = zuul.submit(["small"])
        observer.wait([warm], 60)
        burst.consume(warm)
        wait_until(lambda: live(ec2)[0] == 0, 60)
        simulator.calls(reset=True)
        cpu_before = cpu_seconds(launcher.pid)
        sim_before = cpu_seconds(simulator.process.pid)
        burst.run([["small"]] * args.requests, args.timeout)
        # Every node record is gone: the launcher saw every instance
        # terminated. Count its calls before this script's own look.
        cpu = cpu_seconds(launcher.pid) - cpu_before
        sim_cpu = cpu_seconds(simulator.process.pid) - sim_before
        calls = simulator.calls()
        wait_until(lambda: live(ec2) == (0, 0), 60)
        left = live(ec2)

        latencies = burst.latencies()
        deletions = burst.deletions()
        elapsed = burst.fulfilled_by - burst.started
        total = sum(calls.values())
        print(f"requests:             {args.requests} single-node (rate {args.rate:g}/s, "
              f"boot delay {args.boot_delay:g} s)")
        print(f"fulfilled:            {len(latencies)} (unfinished: {burst.unfinished})")
        print(f"throughput:           {len(latencies) / elapsed:.1f} requests/s "
              f"(all fulfilled {elapsed:.2f} s after the first submit)")
        print(f"latency p50/p90/p99:  {percentile(latencies, 50):.3f} / "
              f"{percentile(latencies, 90):.3f} / {percentile(latencies, 99):.3f} s")
        print(f"node deletion:        p50 {percentile(deletions, 50):.3f} s, "
              f"p99 {percentile(deletions, 99):.3f} s (used -> znode gone)")
        print(f"API calls:            {total} for {args.requests} nodes = "
              f"{total / args.requests:.2f} per node")
        for name, count in sorted(calls.items(), key=lambda item: -item[1]):
            print(f"    {name:34} {count:6}  ({count / args.requests:.2f} per node)")
        print(f"launcher CPU:         {cpu:.2f} s, {cpu / args.requests * 1000:.1f} ms "
              f"per node (launch and delete)")
        print(f"simulator CPU:        {sim_cpu:.2f} s, {sim_cpu / total * 1000:.1f} ms "
              f"per API call (moto serves one call at a time)")
        print(f"EC2 left over:        {left[0]} instances, {left[1]} volumes")
        return 0 if not burst.unfinished and left == (0, 0) else 1
    finally:
        burst.stop()
        launcher.stop(timeout=60)
        zuul.stop()
        observer.stop()
        zookeeper.stop()
        simulator.stop()


if __name__ == "__main__":
    raise SystemExit(main())
