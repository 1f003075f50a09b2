"""The least a launcher can do per request, as a baseline for the benchmarks.

Plain kazoo, no scheduling, no cloud, no caches: it registers a launcher and
one pool component (so Zuul and other launchers see it), watches the
children of /nodepool/requests, and for each new request takes the request
lock, re-reads it, sets it ``pending``, creates one node per label (state
``init``, allocated to the request, with the fields Zuul reads) and marks it
``ready`` - the two node writes issue 14 lists ("create node, ready"); a
real launcher also locks the node and writes ``building`` -, sets the request
``fulfilled`` and unlocks. It watches each node it made; once Zuul has set it
``used`` it locks it (waiting for Zuul's unlock) and deletes it with its lock
directory. Record formats: /work/shared/spec/zk-protocol-and-launcher.md
sections 2 and 8.

    .venv/bin/python tools/bench/minimal_launcher.py --hosts 127.0.0.1:2181
"""

from __future__ import annotations

import argparse
import json
import logging
import queue
import signal
import socket
import threading
import time
import uuid

from kazoo.client import KazooClient
from kazoo.exceptions import KazooException, NoNodeError, NotEmptyError
from kazoo.recipe.lock import Lock

REQUESTS = "/nodepool/requests"
REQUEST_LOCKS = "/nodepool/requests-lock"
NODES = "/nodepool/nodes"
COMPONENTS = "/nodepool/components"
PROVIDER = "minimal"
POOL = "main"
# Zuul's executor may hold a node lock for this long before our delete gives up.
NODE_LOCK_TIMEOUT = 30.0

log = logging.getLogger("minimal-launcher")


def node_record(labels: list[str], request_id: str, request: dict,
                launcher_id: str, index: int) -> dict:
    """A new node with every key Zuul's executor reads (spec §8.5 item 4)."""
    now = time.time()
    address = f"198.51.100.{index % 250 + 1}"
    return {
        "state": "init", "state_time": now, "created_time": now,
        "provider": PROVIDER, "pool": POOL, "type": labels, "launcher": launcher_id,
        "allocated_to": request_id, "tenant_name": request.get("tenant_name"),
        "requestor": request.get("requestor"), "cloud": "none", "region": None,
        "az": None, "host_id": None, "external_id": f"minimal-{index}",
        "hostname": None, "interface_ip": address, "public_ipv4": address,
        "private_ipv4": None, "public_ipv6": None, "connection_type": "ssh",
        "connection_port": 22, "ssh_port": 22, "username": "zuul",
        "python_path": "auto", "shell_type": None, "host_keys": [],
        "image_id": None, "resources": {"cores": 1, "instances": 1, "ram": 1024},
        "attributes": None, "slot": None, "driver_data": None, "user_data": None,
        "hold_job": None, "comment": None, "hold_expiration": None,
    }


class MinimalLauncher:
    def __init__(self, hosts: str, labels: list[str], workers: int = 4,
                 tls: dict | None = None):
        self.kazoo = KazooClient(hosts=hosts, timeout=10.0, **(tls or {}))
        self.labels = set(labels)
        self.hostname = socket.gethostname()
        self.launcher_id = f"{self.hostname}-PoolWorker.{PROVIDER}-{POOL}-{uuid.uuid4().hex}"
        self.work: queue.Queue = queue.Queue()
        self.seen: set[str] = set()
        self.watched_nodes: set[str] = set()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._worker, daemon=True,
                                         name=f"worker-{i}") for i in range(workers)]
        self.counter = 0
        self.counter_lock = threading.Lock()

    # -- set-up ---------------------------------------------------------------

    def start(self) -> None:
        self.kazoo.start(timeout=30)
        for kind in ("launcher", "pool"):
            self.kazoo.ensure_path(f"{COMPONENTS}/{kind}")
        self.kazoo.ensure_path(REQUESTS)
        self.kazoo.ensure_path(NODES)
        common = {"hostname": self.hostname, "model_api": 0, "state": "running",
                  "version": "minimal"}
        self._register("launcher", dict(common, kind="launcher"))
        self._register("pool", dict(common, kind="pool", id=self.launcher_id,
                                    name=POOL, provider_name=PROVIDER, priority=100,
                                    paused=False, supported_labels=sorted(self.labels)))
        for thread in self.threads:
            thread.start()
        self.kazoo.ChildrenWatch(REQUESTS, self._on_requests)

    def _register(self, kind: str, record: dict) -> None:
        self.kazoo.create(f"{COMPONENTS}/{kind}/{self.hostname}",
                          json.dumps(record, sort_keys=True).encode(),
                          ephemeral=True, sequence=True)

    def stop(self) -> None:
        self.stopping.set()
        for _ in self.threads:
            self.work.put(None)
        for thread in self.threads:
            thread.join(timeout=10)
        self.kazoo.stop()
        self.kazoo.close()

    # -- watches (kazoo's event thread: no blocking calls here) ----------------

    def _on_requests(self, children: list[str]):
        if self.stopping.is_set():
            return False
        current = set(children)
        for request_id in current - self.seen:
            self.work.put(("request", request_id))
        self.seen = current
        return None

    def _watch_node(self, node_id: str) -> None:
        def on_change(data, stat, event=None):
            if data is None:
                return False  # deleted: the watch ends
            try:
                state = json.loads(data).get("state")
            except ValueError:
                return None
            if state == "used":
                self.work.put(("delete", node_id))
                return False
            return None
        self.kazoo.DataWatch(f"{NODES}/{node_id}", on_change)

    # -- work -------------------------------------------------------------------

    def _worker(self) -> None:
        while True:
            item = self.work.get()
            if item is None or self.stopping.is_set():
                return
            kind, key = item
            try:
                if kind == "request":
                    self._handle_request(key)
                else:
                    self._delete_node(key)
            except KazooException:
                log.exception("%s %s failed", kind, key)

    def _handle_request(self, request_id: str) -> None:
        lock = Lock(self.kazoo, f"{REQUEST_LOCKS}/{request_id}")
        if not lock.acquire(blocking=False):
            return
        try:
            try:
                data, _ = self.kazoo.get(f"{REQUESTS}/{request_id}")
            except NoNodeError:
                return
            if not data:
                return
            request = json.loads(data)
            if request.get("state") != "requested" or \
                    not set(request.get("node_types", [])) <= self.labels:
                return
            request.update(state="pending", state_time=time.time())
            request.setdefault("declined_by", [])
            request.setdefault("nodes", [])
            self.kazoo.set(f"{REQUESTS}/{request_id}", json.dumps(request).encode())
            nodes = []
            for label in request["node_types"]:
                with self.counter_lock:
                    self.counter += 1
                    index = self.counter
                record = node_record([label], request_id, request,
                                     self.launcher_id, index)
                path = self.kazoo.create(f"{NODES}/", json.dumps(record).encode(),
                                         sequence=True)
                record.update(state="ready", state_time=time.time())
                self.kazoo.set(path, json.dumps(record).encode())
                node_id = path.rsplit("/", 1)[1]
                nodes.append(node_id)
                self._watch_node(node_id)
            request.update(state="fulfilled", state_time=time.time(), nodes=nodes)
            self.kazoo.set(f"{REQUESTS}/{request_id}", json.dumps(request).encode())
        finally:
            lock.release()

    def _delete_node(self, node_id: str) -> None:
        lock_dir = f"{NODES}/{node_id}/lock"
        lock = Lock(self.kazoo, lock_dir)
        if not lock.acquire(timeout=NODE_LOCK_TIMEOUT):
            log.warning("node %s still locked after %ss; left", node_id,
                        NODE_LOCK_TIMEOUT)
            return
        # One round trip: our contender, the lock directory and the node.
        transaction = self.kazoo.transaction()
        transaction.delete(lock.node)
        transaction.delete(lock_dir)
        transaction.delete(f"{NODES}/{node_id}")
        if any(isinstance(result, Exception) for result in transaction.commit()):
            try:
                self.kazoo.delete(f"{NODES}/{node_id}", recursive=True)
            except (NoNodeError, NotEmptyError):
                log.warning("node %s not deleted", node_id)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", required=True,
                        help="ZooKeeper host:port[,...][/chroot]")
    parser.add_argument("--labels", default="small", help="comma-separated")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--tls-ca")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kazoo").setLevel(logging.WARNING)
    tls = None
    if args.tls_ca:
        tls = {"use_ssl": True, "ca": args.tls_ca, "certfile": args.tls_cert,
               "keyfile": args.tls_key}
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    launcher = MinimalLauncher(args.hosts, args.labels.split(","), args.workers, tls)
    launcher.start()
    log.info("serving %s as %s", args.labels, launcher.launcher_id)
    # A timed wait: an untimed one can sleep through a signal.
    while not stop.wait(1.0):
        pass
    launcher.stop()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
