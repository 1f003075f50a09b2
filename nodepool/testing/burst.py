"""Zuul's side of a burst of requests, and a watcher of what launchers do,
for the tests and the benchmarks (``tools/bench/``).

:class:`Observer` follows requests and nodes through watch-driven caches of
its own connection: when each request ended, when each node went, and - at
every node event, in ZooKeeper's order - how many node records each
provider has, so a test can check that quota held at every moment.
:class:`Burst` submits requests all at once and, as each is fulfilled,
takes its nodes, uses them and returns them, as Zuul does.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from nodepool.testing.zuul_client import FakeZuul
from nodepool.zk.cache import NodeCache, RequestCache
from nodepool.zk.client import ZooKeeperClient, ZooKeeperTLS


class Observer:
    """Times fulfilments and node deletions; counts node records per
    provider at every change."""

    def __init__(self, hosts: str, tls: ZooKeeperTLS | None = None):
        self.client = ZooKeeperClient(hosts, tls=tls)
        self.client.connect(timeout=30)
        self.requests = RequestCache(self.client)
        self.nodes = NodeCache(self.client)
        self.fulfilled: dict[str, float] = {}
        self.deleted: dict[str, float] = {}
        self.done = threading.Condition()
        # node id -> provider of every node record that exists now, the
        # count per provider, and the highest count each reached.
        self._providers: dict[str, str] = {}
        self.counts: Counter[str] = Counter()
        self.peaks: Counter[str] = Counter()
        # Callbacks on every node change (kind, node id, node), for tests.
        self.node_watchers: list = []
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
            provider = self._providers.pop(node_id, None)
            if provider is not None:
                self.counts[provider] -= 1
        elif kind == "changed" and node_id not in self._providers and node.provider:
            self._providers[node_id] = node.provider
            self.counts[node.provider] += 1
            self.peaks[node.provider] = max(self.peaks[node.provider],
                                            self.counts[node.provider])
        for watcher in list(self.node_watchers):
            watcher(kind, node_id, node)

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
        # request id -> the nodes it was given (as Zuul read them).
        self.given: dict[str, list[dict]] = {}
        self.unfinished = 0
        self.started = self.submit_done = self.fulfilled_by = 0.0

    def consume(self, request_id: str) -> None:
        nodes = self.zuul.accept(request_id)
        self.given[request_id] = nodes
        self.zuul.use(nodes)
        for node in nodes:
            self.used_at[node["id"]] = time.monotonic()
        self.zuul.release(nodes)

    def run(self, node_types: list[list[str]], timeout: float, during=None,
            tenant: str | None = None) -> None:
        """One request per entry of ``node_types`` (of ``tenant``); returns
        once all were fulfilled and their nodes deleted (or ``timeout`` ran
        out for either). ``during(finished)`` is called as requests finish (a
        test's fault)."""
        observer = self.observer
        self.started = time.monotonic()
        # All creates pipelined, as many schedulers submitting at once.
        pending_creates = [(self.zuul.submit_async(labels, tenant=tenant),
                            time.monotonic())
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
            if during is not None:
                during(len(self.submitted) - len(pending))
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
