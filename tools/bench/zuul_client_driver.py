"""Plays Zuul with Zuul's own classes, for tools/bench/zuul_compare.py.

Runs with the Python of a virtualenv holding ``zuul`` (14.3.0), not ours:
nothing from nodepool is imported here. It talks to its parent over
stdin/stdout, one JSON object a line: it connects and prints
``{"ready": true}`` once Zuul's scheduler-side node-request election is won,
waits for a ``go`` line, then

* scheduler role (``zuul.nodepool.Nodepool(scheduler=True)``): submits N
  single-node requests (``requestNodes``, from several threads at once, as
  several schedulers would), learns of fulfilment through Zuul's request
  cache (which puts a NodesProvisionedEvent on the pipeline's result queue in
  ZooKeeper), and processes those events as the scheduler does: read the
  request, read the nodes (``getNodesetInfo``), acknowledge the event;
* executor role (a second ZooKeeper connection, ``Nodepool()``): reads the
  request, ``acceptNodes`` (lock the nodes, delete the request),
  ``useNodeSet`` (in-use), ``returnNodeSet`` (used, unlock);

then waits for the launcher to delete every node it was given and prints
one result line. Per request, submit time and the time Zuul's cache saw it
fulfilled; CPU is this process's own (all threads).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from configparser import ConfigParser

from zuul import model
from zuul.lib.tracing import Tracing
from zuul.nodepool import Nodepool
from zuul.zk import ZooKeeperClient
from zuul.zk.event_queues import PipelineResultEventQueue
from zuul.zk.nodepool import NodeRequestEvent

TENANT = "bench"
PIPELINE = "check"
PROJECT = "example.org/bench"
LABEL = "small"


class ObservedNodepool(Nodepool):
    """Zuul's scheduler-side Nodepool, noting when each request completes as
    Zuul's request cache delivers it (before the event goes to the queue)."""

    def __init__(self, *args, **kwargs):
        self.completed: dict[str, float] = {}
        super().__init__(*args, **kwargs)

    def _handleNodeRequestEvent(self, request, event):
        if event == NodeRequestEvent.COMPLETED and request.requestor == self.system_id:
            self.completed.setdefault(request.id, time.monotonic())
        super()._handleNodeRequestEvent(request, event)


def make_job() -> model.Job:
    job = model.Job("bench-job")
    nodeset = model.NodeSet()
    nodeset.addNode(model.Node(["node"], LABEL))
    job.nodeset = nodeset
    job.uuid = uuid.uuid4().hex
    return job


def connect(args) -> ZooKeeperClient:
    client = ZooKeeperClient(args.hosts, timeout=30.0, tls_cert=args.tls_cert,
                             tls_key=args.tls_key, tls_ca=args.tls_ca)
    client.connect()
    return client


def emit(record: dict) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


class Burst:
    def __init__(self, args, scheduler: ObservedNodepool, executor: Nodepool,
                 scheduler_zk: ZooKeeperClient):
        self.args = args
        self.scheduler = scheduler
        self.executor = executor
        self.jobs: dict[str, model.Job] = {}
        self.submitted: dict[str, float] = {}
        self.failed: set[str] = set()
        self.errors: list[str] = []
        self.node_ids: set[str] = set()
        self.returned = 0
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=8)
        self.queue = PipelineResultEventQueue(scheduler_zk, TENANT, PIPELINE)
        self.wake = threading.Event()
        scheduler_zk.client.ChildrenWatch(self.queue.event_root,
                                          lambda children: self.wake.set())

    def submit_one(self) -> None:
        job = make_job()
        sent = time.monotonic()
        request = self.scheduler.requestNodes(
            uuid.uuid4().hex, job, TENANT, PIPELINE, None, "200", 0)
        with self.lock:
            self.submitted[request.id] = sent
            self.jobs[request.id] = job

    def submit_all(self) -> None:
        """requestNodes is synchronous (one round trip each); several threads
        call it at once, as several schedulers would, so that the burst
        reaches the launcher at once."""
        with ThreadPoolExecutor(max_workers=self.args.submitters) as submitters:
            for future in [submitters.submit(self.submit_one)
                           for _ in range(self.args.requests)]:
                try:
                    future.result()
                except Exception as exc:  # reported, the bench goes on
                    with self.lock:
                        self.errors.append(f"submit: {exc!r}")

    def process_events(self) -> None:
        """The scheduler's handling of NodesProvisionedEvents."""
        for event in self.queue:
            with self.lock:
                job = self.jobs.get(event.request_id)
            request = self.scheduler.zk_nodepool.getNodeRequest(event.request_id)
            if request is not None and job is not None:
                self.scheduler.getNodesetInfo(request, job.nodeset)
                if request.state == model.STATE_FAILED:
                    self.failed.add(request.id)
                    self.scheduler.deleteNodeRequest(request.id)
                else:
                    self.pool.submit(self.run_build, request.id, job)
            self.queue.ack(event)

    def run_build(self, request_id: str, job: model.Job) -> None:
        """The executor's side of one build, without the build."""
        try:
            request = self.executor.zk_nodepool.getNodeRequest(request_id)
            nodeset = job.nodeset.copy()
            self.executor.acceptNodes(request, nodeset)
            with self.lock:
                self.node_ids.update(node.id for node in nodeset.getNodes())
            self.executor.useNodeSet(nodeset, TENANT, PROJECT)
            self.executor.returnNodeSet(nodeset, None, TENANT, PROJECT, 0)
            with self.lock:
                self.returned += 1
        except Exception as exc:  # reported, the bench goes on
            with self.lock:
                self.errors.append(f"{request_id}: {exc!r}")

    def finished(self) -> bool:
        with self.lock:
            return self.returned + len(self.failed) + len(self.errors) >= \
                self.args.requests

    def run(self) -> dict:
        cpu_start = time.process_time()
        start = time.monotonic()
        submitter = threading.Thread(target=self.submit_all, daemon=True)
        submitter.start()
        deadline = start + self.args.timeout
        while not self.finished() and time.monotonic() < deadline:
            self.wake.wait(0.5)
            self.wake.clear()
            self.process_events()
        submitter.join(timeout=max(0.0, deadline - time.monotonic()))
        returned_at = time.monotonic()
        self.pool.shutdown(wait=True)
        undeleted = self.wait_deleted(deadline)
        completed = self.scheduler.completed
        latencies = [completed[r] - t for r, t in self.submitted.items()
                     if r in completed and r not in self.failed]
        done_times = [completed[r] for r in self.submitted if r in completed]
        return {
            "requests": self.args.requests,
            "submitted": len(self.submitted),
            "fulfilled": len(latencies),
            "failed": len(self.failed),
            "returned": self.returned,
            "errors": self.errors[:5],
            "error_count": len(self.errors),
            "latencies": latencies,
            "elapsed": (max(done_times) - start) if done_times else None,
            "submit_seconds": max(self.submitted.values(), default=start) - start,
            "returned_seconds": returned_at - start,
            "deleted_seconds": time.monotonic() - start,
            "undeleted": undeleted,
            "client_cpu": time.process_time() - cpu_start,
        }

    def wait_deleted(self, deadline: float) -> int:
        kazoo = self.executor.zk_nodepool.kazoo_client
        remaining = set(self.node_ids)
        while remaining and time.monotonic() < deadline:
            remaining &= set(kazoo.get_children("/nodepool/nodes"))
            if remaining:
                time.sleep(0.1)
        return len(remaining)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", required=True)
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--tls-ca")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--submitters", type=int, default=16,
                        help="threads calling requestNodes at once")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="for the whole burst, deletions included")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    # As every Zuul service starts: the tracer provider, here with tracing off.
    Tracing(ConfigParser())
    system_id = uuid.uuid4().hex
    scheduler_zk = connect(args)
    executor_zk = connect(args)
    scheduler = ObservedNodepool(scheduler_zk, system_id, None, scheduler=True)
    executor = Nodepool(executor_zk, system_id, None)
    try:
        scheduler.zk_nodepool.register()
        deadline = time.monotonic() + 30
        while not scheduler.election_won and time.monotonic() < deadline:
            time.sleep(0.05)
        if not scheduler.election_won:
            emit({"error": "Zuul's node-request election was not won in 30 s"})
            return 1
        burst = Burst(args, scheduler, executor, scheduler_zk)
        emit({"ready": True})
        if sys.stdin.readline().strip() != "go":
            return 1
        emit(burst.run())
        return 0
    finally:
        scheduler.stop()
        executor.stop()
        scheduler_zk.disconnect()
        executor_zk.disconnect()


if __name__ == "__main__":
    raise SystemExit(main())
