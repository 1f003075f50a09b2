"""Fault-injection soak: nodepool under the faults operators meet.

Runs a ZooKeeper server (TLS only) - or with ``--ensemble`` a three-server
ensemble -, two nodepool-launchers (one behind TCP proxies so its session can
be expired), one nodepool-builder and the OpenStack API simulator, while
Zuul-role clients submit, use and release nodes (single and multi-node
requests, several requestors and priorities), retrying each step through
ZooKeeper outages as Zuul does. Faults are injected at random moments; after
a quiet period the invariants are checked and a one-line verdict printed.
Exit status 1 on any violation.

    .venv/bin/python tools/soak.py --duration 600
    .venv/bin/python tools/soak.py --duration 600 --ensemble
    .venv/bin/python tools/soak.py --duration 1800 --shared

``--shared`` runs three launchers on the one provider, with the cloud's quota
equal to the pool's, kills among them (one, or two at once) that last past
their session, and a watcher that counts the provider's node records at
every change: quota must hold at every moment, and the launches the dead
left must be carried on by the others.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import random
import re
import signal
import subprocess
import tempfile
import threading
import time
import traceback
import urllib.request
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import yaml  # noqa: E402
from kazoo.client import KazooState  # noqa: E402
from kazoo.exceptions import (  # noqa: E402
    BadVersionError, ConnectionLoss, LockTimeout, NoNodeError, OperationTimeoutError,
    SessionExpiredError,
)
from kazoo.handlers.threading import KazooTimeoutError  # noqa: E402
from kazoo.recipe.lock import Lock  # noqa: E402
from nodepool.testing.burst import Observer  # noqa: E402
from nodepool.testing.openstack_sim import OpenStackSimulator  # noqa: E402
from nodepool.testing.zkserver import TCPProxy, ZooKeeperEnsemble, ZooKeeperServerProcess  # noqa: E402
from nodepool.testing.zuul_client import NODES, REQUESTS, FakeZuul  # noqa: E402
from nodepool.zk.client import ZooKeeperTLS  # noqa: E402

BIN = os.path.join(ROOT, ".venv", "bin")
LABELS = ["small", "large", "image"]
SESSION_TIMEOUT = 6
MAX_SERVERS = 24
ENSEMBLE_SIZE = 3
# How long the Zuul-role client keeps retrying one step (returning a node,
# locking one, deleting a request) through ZooKeeper outages.
RETRY_SECONDS = 120.0
# What a ZooKeeper restart can do to a call in flight.
RETRYABLE = (ConnectionLoss, SessionExpiredError, OperationTimeoutError,
             KazooTimeoutError)

CONFIG = """
zookeeper-servers:
{zookeeper_servers}
zookeeper-tls:
  ca: {ca}
  cert: {cert}
  key: {key}
zookeeper-timeout: {session_timeout}
webapp: {{port: {web_port}, listen_address: 127.0.0.1}}
images-dir: {state}/images
build-log-dir: {state}/build-logs
build-log-retention: 2
labels:
  - name: small
    min-ready: 2
  - name: large
  - name: image
    min-ready: 1
diskimages:
  - name: soak-image
    elements: [vm]
    dib-cmd: {dib}
    rebuild-age: 45
providers:
  - name: soak-cloud
    cloud: sim
    region-name: RegionOne
    rate: 0.001
    launch-timeout: 15
    boot-timeout: 10
    launch-retries: 3
    clean-floating-ips: true
    port-cleanup-interval: 5
    diskimages:
      - name: soak-image
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
          - name: large
            cloud-image: ubuntu
            flavor-name: m1.large
          - name: image
            diskimage: soak-image
            min-ram: 1024
"""


class RetryingZuul(FakeZuul):
    """FakeZuul whose client-side steps ride out ZooKeeper restarts.

    Zuul keeps trying to return nodes; so does this. Every step (submitting,
    locking a node, writing it ``in-use`` or ``used``, unlocking it, deleting
    the request) is retried until it succeeds or ``RETRY_SECONDS`` pass,
    waiting for the connection to come back between attempts. Calls are made
    asynchronously with a timeout, so none can block past its deadline.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # For the report: calls retried after an outage, locks taken again
        # after they went with an expired session.
        self.retried = 0
        self.relocked = 0
        self._connected = threading.Event()
        self.kazoo.add_listener(self._on_state)
        if self.kazoo.connected:
            self._connected.set()

    def _on_state(self, state) -> None:
        # Called on kazoo's connection thread: just record the state.
        if state == KazooState.CONNECTED:
            self._connected.set()
        else:
            self._connected.clear()

    def retrying(self, what: str, call, deadline: float):
        """``call(timeout)`` until it does not fail for a ZooKeeper outage."""
        delay = 0.1
        last: Exception | None = None
        for _ in range(100000):  # bounded by the deadline long before this
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if not self._connected.wait(timeout=remaining):
                break
            try:
                return call(max(0.1, deadline - time.monotonic()))
            except RETRYABLE as exc:
                last = exc
                self.retried += 1
            # The state listener may not have seen the drop yet: back off a
            # little so a failing call is not repeated in a tight loop.
            time.sleep(max(0.1, min(delay, deadline - time.monotonic())))
            delay = min(delay * 2, 2.0)
        raise TimeoutError(f"{what}: ZooKeeper still failing after the retry bound "
                           f"({type(last).__name__ if last else 'not connected'})")

    # -- single calls with a timeout (kazoo's own calls may wait forever) -----

    def _get(self, path: str, timeout: float):
        return self.kazoo.get_async(path).get(timeout=timeout)

    def _exists(self, path: str, timeout: float):
        return self.kazoo.exists_async(path).get(timeout=timeout)

    def _delete(self, path: str, timeout: float) -> bool:
        """False if it was already gone."""
        try:
            self.kazoo.delete_async(path).get(timeout=timeout)
            return True
        except NoNodeError:
            return False

    # -- requests ---------------------------------------------------------------

    def submit_retrying(self, labels: list[str], priority: str, deadline: float) -> str:
        """Submit once: after a cut create, look for it before creating again."""
        marker = uuid.uuid4().hex
        requestor_data = {"build_set_uuid": marker, "tenant_name": None,
                          "pipeline_name": "check", "job_uuid": uuid.uuid4().hex,
                          "job_name": "unit-test", "span_info": None}

        cut = False

        def attempt(timeout: float) -> str:
            nonlocal cut
            if cut:  # did the cut attempt land after all?
                found = self._find_request(marker, timeout)
                if found:
                    return found
            cut = True
            path = self.kazoo.create_async(
                f"{REQUESTS}/{priority}-",
                json.dumps(self._request_data(labels, requestor_data)).encode(),
                sequence=True, makepath=True).get(timeout=timeout)
            return path.rsplit("/", 1)[1]

        return self.retrying("submit", attempt, deadline)

    def _request_data(self, labels: list[str], requestor_data: dict) -> dict:
        now = time.time()
        return {"requestor_data": requestor_data, "node_types": list(labels),
                "requestor": self.system_id, "created_time": now, "provider": None,
                "state": "requested", "state_time": now, "relative_priority": 0,
                "event_id": uuid.uuid4().hex, "tenant_name": None}

    def _find_request(self, marker: str, timeout: float) -> str | None:
        # The server we reconnected to may lag the one that took the create.
        self.kazoo.sync_async(REQUESTS).get(timeout=timeout)
        try:
            children = self.kazoo.get_children_async(REQUESTS).get(timeout=timeout)
        except NoNodeError:
            return None
        for child in children:
            try:
                data, _ = self._get(f"{REQUESTS}/{child}", timeout)
                request = json.loads(data)
            except NoNodeError:
                continue
            except ValueError:  # a corrupt record (a fault), not ours
                continue
            if isinstance(request, dict) and (request.get("requestor_data") or {}) \
                    .get("build_set_uuid") == marker:
                return child
        return None

    def delete_request_retrying(self, request_id: str, deadline: float) -> None:
        self.retrying(f"delete request {request_id}",
                      lambda t: self._delete(f"{REQUESTS}/{request_id}", t), deadline)

    def get_request_retrying(self, request_id: str, deadline: float) -> dict | None:
        def attempt(timeout: float) -> dict | None:
            try:
                data, _ = self._get(f"{REQUESTS}/{request_id}", timeout)
            except NoNodeError:
                return None
            return json.loads(data) if data else None
        return self.retrying(f"read request {request_id}", attempt, deadline)

    # -- nodes -------------------------------------------------------------------

    def lock_node_retrying(self, node_id: str, deadline: float,
                           must_exist: bool = False) -> bool:
        """Lock a node; False if it is gone or stays locked by someone else.

        One Lock object across attempts: after a cut attempt kazoo's recipe
        finds its own contender znode again instead of leaving it behind to
        block every later attempt.
        """
        lock = Lock(self.kazoo, f"{NODES}/{node_id}/lock")
        # Re-locking a node that may have been deleted meanwhile must not
        # recreate it (the recipe makes the lock's parents otherwise).
        lock.assured_path = must_exist

        def attempt(timeout: float) -> bool:
            if self._exists(f"{NODES}/{node_id}", timeout) is None:
                return False
            try:
                if lock.acquire(timeout=min(30.0, timeout)):
                    return True
            except LockTimeout:
                pass
            except NoNodeError:  # the node (or its lock directory) vanished
                lock.assured_path = False
                if self._exists(f"{NODES}/{node_id}", timeout) is None:
                    return False
            # Held by someone else for a long time, or cut short: retry.
            raise OperationTimeoutError()

        try:
            locked = self.retrying(f"lock node {node_id}", attempt, deadline)
        except TimeoutError:
            self._drop_contender(lock)
            raise
        if locked:
            self._node_locks[node_id] = lock
        return locked

    def _drop_contender(self, lock: Lock) -> None:
        """Best effort: remove our waiting contender znode after giving up."""
        try:
            for child in self.kazoo.get_children_async(lock.path).get(timeout=5):
                if child.startswith(lock.prefix):
                    self._delete(f"{lock.path}/{child}", 5)
        except Exception:
            pass

    def get_node_retrying(self, node_id: str, deadline: float) -> dict | None:
        def attempt(timeout: float) -> dict | None:
            try:
                data, _ = self._get(f"{NODES}/{node_id}", timeout)
            except NoNodeError:
                return None
            return json.loads(data) if data else None
        return self.retrying(f"read node {node_id}", attempt, deadline)

    def _holds_lock(self, node_id: str, timeout: float) -> bool:
        """Whether our lock znode for the node still exists in this session
        (an expired session took its ephemeral znodes with it)."""
        lock = self._node_locks.get(node_id)
        if lock is None or not lock.is_acquired or not lock.node:
            return False
        stat = self._exists(f"{lock.path}/{lock.node}", timeout)
        session = self.kazoo.client_id
        return (stat is not None and session is not None
                and stat.ephemeralOwner == session[0])

    def store_node(self, node: dict, target: str, from_states: tuple[str, ...],
                   deadline: float) -> str:
        """Write ``node`` with state ``target`` under its lock.

        If the lock was lost with the session it is taken again first. The
        write is versioned against what is stored now, and only made while
        the node is still ours (same allocation, state in ``from_states``).
        Returns ``written``, ``already`` (a cut write that did land),
        ``gone`` (no node any more) or ``taken`` (the launcher took it over
        meanwhile, e.g. it is being deleted).
        """
        node_id = node["id"]
        path = f"{NODES}/{node_id}"
        for _ in range(1000):  # each pass waits (retrying) or ends
            if time.monotonic() >= deadline:
                break
            if not self.retrying(f"check lock of {node_id}",
                                 lambda t: self._holds_lock(node_id, t), deadline):
                self._forget_lock(node_id)
                if not self.lock_node_retrying(node_id, deadline, must_exist=True):
                    return "gone"
                self.relocked += 1
                continue

            def attempt(timeout: float) -> str:
                try:
                    data, stat = self._get(path, timeout)
                except NoNodeError:
                    return "gone"
                try:
                    current = json.loads(data)
                except ValueError:
                    return "taken"
                if current.get("allocated_to") != node.get("allocated_to"):
                    return "taken"
                if current.get("state") == target:
                    return "already"
                if current.get("state") not in from_states:
                    return "taken"
                record = dict(node, state=target, state_time=time.time())
                try:
                    self.kazoo.set_async(path, json.dumps(record).encode(),
                                         version=stat.version).get(timeout=timeout)
                except NoNodeError:
                    return "gone"
                except BadVersionError:
                    return "again"  # changed under us: look again
                return "written"

            outcome = self.retrying(f"write node {node_id} {target}", attempt, deadline)
            if outcome != "again":
                if outcome in ("written", "already"):
                    node["state"] = target
                return outcome
        raise TimeoutError(f"write node {node_id} {target}: gave up at the retry bound")

    def _forget_lock(self, node_id: str) -> None:
        lock = self._node_locks.pop(node_id, None)
        if lock is not None:
            lock.is_acquired = False

    def unlock_node_retrying(self, node_id: str, deadline: float) -> None:
        """Delete our lock znode (gone with an expired session: nothing to do)."""
        lock = self._node_locks.get(node_id)
        if lock is None:
            return
        if lock.is_acquired and lock.node:
            self.retrying(f"unlock node {node_id}",
                          lambda t: self._delete(f"{lock.path}/{lock.node}", t), deadline)
        self._forget_lock(node_id)

    def use_retrying(self, nodes: list[dict], deadline: float,
                     project: str = "example.org/project") -> None:
        for node in nodes:
            node["user_data"] = {"zuul_system": self.system_id, "project_name": project}
            self.store_node(node, "in-use", ("ready",), deadline)

    def release_node(self, node: dict, deadline: float) -> str:
        """Return one node as Zuul does: ``used`` if it was in use, then unlock."""
        outcome = "unlocked"
        try:
            if node["state"] == "in-use":
                outcome = self.store_node(node, "used", ("in-use",), deadline)
        finally:
            # Still try to unlock (briefly) when the write ran out of time.
            self.unlock_node_retrying(node["id"], max(deadline, time.monotonic() + 10))
        return outcome


class Soak:
    def __init__(self, args):
        self.args = args
        self.random = random.Random(args.seed)
        self.state = tempfile.mkdtemp(prefix="nodepool-soak-")
        os.makedirs(os.path.join(self.state, "images"))
        self.faults = collections.Counter()
        self.fault_seconds: dict[str, float] = {}  # longest run of each kind
        self.violations: list[str] = []
        self.lock = threading.Lock()
        self.submitted = 0
        self.finished = collections.Counter()
        self.stuck: list[str] = []
        self.holders: dict[str, str] = {}  # node id -> request using it now
        self.duplicates: list[str] = []
        self.stop_workload = threading.Event()
        self.processes: dict[str, subprocess.Popen] = {}
        self.phase: dict[int, str] = {}  # what each client is doing, for progress
        self.launchers = ["launcher-a", "launcher-b"] + (
            ["launcher-c"] if args.shared else [])
        self.observer: Observer | None = None

    # -- the cluster -----------------------------------------------------------

    def start(self) -> None:
        os.makedirs(os.path.join(self.state, "zk"))
        if self.args.ensemble:
            self.zk = ZooKeeperEnsemble(os.path.join(self.state, "zk"),
                                        size=ENSEMBLE_SIZE, tls=True)
            self.zk.start()
            servers = self.zk.servers
        else:
            self.zk = ZooKeeperServerProcess(os.path.join(self.state, "zk"), tls=True)
            self.zk.start()
            servers = [self.zk]
        tls_ports = [server.tls_port for server in servers]
        # launcher-b reaches every server through its own proxy, so cutting
        # them all at once cuts it off from the whole ensemble.
        self.proxies = [TCPProxy(port) for port in tls_ports]
        # A cloud password no log line or listing may ever show.
        self.password = f"soak-Pa55-{self.random.randrange(10**12):012d}"
        # Shared: the cloud's quota is the pool's, so a launcher counting
        # wrong meets the cloud's refusals, not only the watcher.
        self.sim = OpenStackSimulator(
            boot_delay=0.3, max_instances=MAX_SERVERS if self.args.shared else 40,
            max_cores=400, password=self.password).start()
        clouds = os.path.join(self.state, "clouds.yaml")
        with open(clouds, "w") as handle:
            yaml.safe_dump(self.sim.clouds_yaml(), handle)
        self.env = dict(os.environ, OS_CLIENT_CONFIG_FILE=clouds)
        tls = self.zk.tls_files
        common = dict(ca=tls.ca, cert=tls.client_cert, key=tls.client_key,
                      state=self.state, dib=os.path.join(ROOT, "tools",
                                                         "fake-image-create"),
                      session_timeout=SESSION_TIMEOUT, max_servers=MAX_SERVERS)
        self.configs = {}
        for name, ports in [(n, [proxy.port for proxy in self.proxies]
                             if n == "launcher-b" else tls_ports)
                            for n in self.launchers] + [("builder", tls_ports)]:
            path = os.path.join(self.state, f"{name}.yaml")
            with open(path, "w") as handle:
                handle.write(CONFIG.format(zookeeper_servers=_servers_yaml(ports),
                                           web_port=_free_port(), **common))
            self.configs[name] = path
        for name in self.configs:
            self.start_daemon(name)
        hosts = ",".join(f"127.0.0.1:{port}" for port in tls_ports) + "/soak"
        if self.args.shared:
            # Counts the provider's node records at every change, in
            # ZooKeeper's order: the quota watcher.
            self.observer = Observer(hosts, tls=ZooKeeperTLS(
                cert=tls.client_cert, key=tls.client_key, ca=tls.ca))
        self.zuuls = [RetryingZuul(hosts, system_id=f"zuul-{i}", use_ssl=True,
                                   verify_certs=True, ca=tls.ca,
                                   certfile=tls.client_cert, keyfile=tls.client_key)
                      for i in range(3)]

    def start_daemon(self, name: str) -> None:
        program = "nodepool-builder" if name == "builder" else "nodepool-launcher"
        log = open(os.path.join(self.state, f"{name}.log"), "ab")
        self.processes[name] = subprocess.Popen(
            [os.path.join(BIN, program), "-f", "-c", self.configs[name],
             "--cleanup-interval", "5"] + (["--no-webapp"] if name == "launcher-b"
                                           else []),
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env)

    def stop(self) -> None:
        if self.observer is not None:
            self.observer.stop()
        for zuul in getattr(self, "zuuls", []):
            zuul.stop()
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                process.kill()
        for proxy in getattr(self, "proxies", []):
            proxy.stop()
        if getattr(self, "sim", None) is not None:
            self.sim.stop()
        if getattr(self, "zk", None) is not None:
            self.zk.stop()

    # -- the Zuul role -------------------------------------------------------------

    def client(self, index: int) -> None:
        zuul = self.zuuls[index % len(self.zuuls)]
        rng = random.Random(self.args.seed * 1000 + index)
        while not self.stop_workload.is_set():
            self.phase[index] = "submitting"
            labels = [rng.choice(LABELS) for _ in range(rng.choice([1, 1, 1, 2, 3]))]
            priority = rng.choice(["100", "200", "300"])
            try:
                request_id = zuul.submit_retrying(labels, priority,
                                                  time.monotonic() + RETRY_SECONDS)
            except Exception as exc:
                self.note(f"cannot submit a request: {exc}")
                time.sleep(1)
                continue
            with self.lock:
                self.submitted += 1
            self.phase[index] = f"waiting for {request_id}"
            request = self.wait_request(zuul, request_id, self.args.request_timeout)
            if request is None or request.get("state") not in ("fulfilled", "failed"):
                with self.lock:
                    self.stuck.append(request_id)
                continue
            with self.lock:
                self.finished[request["state"]] += 1
            if request["state"] == "fulfilled":
                self.phase[index] = f"using the nodes of {request_id}"
                self.use(zuul, request_id, request, rng)
            self.phase[index] = f"deleting {request_id}"
            try:
                zuul.delete_request_retrying(request_id,
                                             time.monotonic() + RETRY_SECONDS)
            except Exception as exc:
                self.note(f"cannot delete request {request_id}: {exc}")

    @staticmethod
    def wait_request(zuul, request_id: str, timeout: float) -> dict | None:
        """Poll gently (ten times a second), riding out ZooKeeper restarts."""
        deadline = time.monotonic() + timeout
        request = None
        while time.monotonic() < deadline:
            try:
                # Each read bounded too: ZooKeeper may be down right now.
                request = zuul.get_request_retrying(
                    request_id, min(deadline, time.monotonic() + 10))
            except Exception:
                request = None
            if request is not None and request.get("state") in ("fulfilled", "failed"):
                return request
            time.sleep(0.1)
        return request

    def use(self, zuul: RetryingZuul, request_id: str, request: dict, rng) -> None:
        deadline = time.monotonic() + RETRY_SECONDS
        nodes = []
        for node_id in request["nodes"]:
            try:
                if not zuul.lock_node_retrying(node_id, deadline):
                    self.note(f"node {node_id} of {request_id} is gone")
                    continue
                node = zuul.get_node_retrying(node_id, deadline)
                if node is None:
                    zuul.unlock_node_retrying(node_id, time.monotonic() + RETRY_SECONDS)
                    continue
            except Exception as exc:
                self.note(f"cannot lock node {node_id} of {request_id}: {exc}")
                continue
            node["id"] = node_id
            if node.get("allocated_to") != request_id:
                with self.lock:
                    self.duplicates.append(f"{node_id} of {request_id} is allocated to "
                                           f"{node.get('allocated_to')}")
            with self.lock:
                other = self.holders.get(node_id)
                if other is not None:
                    self.duplicates.append(f"{node_id}: {other} and {request_id}")
                self.holders[node_id] = request_id
            nodes.append(node)
        try:
            zuul.use_retrying(nodes, time.monotonic() + RETRY_SECONDS)
            time.sleep(rng.uniform(0.0, 1.0))
        except Exception as exc:
            self.note(f"using nodes of {request_id} failed: {exc}")
        finally:
            with self.lock:
                for node in nodes:
                    self.holders.pop(node["id"], None)
            # Each node is returned on its own, each with the full retry bound.
            for node in nodes:
                try:
                    outcome = zuul.release_node(node, time.monotonic() + RETRY_SECONDS)
                except Exception as exc:
                    self.note(f"returning node {node['id']} of {request_id} "
                              f"failed: {exc}")
                    continue
                if outcome in ("gone", "taken"):
                    self.note(f"node {node['id']} of {request_id} was {outcome} "
                              "when returned (its lock went with the session)")

    def note(self, message: str) -> None:
        print(f"  note: {message}", flush=True)

    # -- faults ----------------------------------------------------------------------

    def fault_kinds(self) -> dict:
        kinds = {
            "kill-launcher": self.kill_launcher,
            "kill-builder": self.kill_builder,
            "expire-session": self.expire_session,
            # With an ensemble: all its servers stopped, then all started.
            "zookeeper-restart": self.zookeeper_restart,
            "cloud-500s": lambda: self.set_fault("http_500", 3),
            "cloud-slow": self.slow_cloud,
            "cloud-quota": lambda: self.set_fault("quota_creates", 2),
            "cloud-error-servers": lambda: self.set_fault("error_servers", 2),
            "cloud-stuck-build": self.stuck_build,
            "cloud-failing-deletes": lambda: self.set_fault("failing_deletes", 3),
            "broken-config": self.broken_config,
            "corrupt-records": self.corrupt_records,
        }
        if self.args.ensemble:
            kinds["kill-zk-leader"] = lambda: self.kill_zk_member("leader")
            kinds["kill-zk-follower"] = lambda: self.kill_zk_member("follower")
        if self.args.shared:
            kinds["kill-two-launchers"] = lambda: self.kill_launchers(2)
        return kinds

    def inject(self) -> None:
        kinds = self.fault_kinds()
        order = list(kinds)
        self.random.shuffle(order)
        first_round_done = False
        deadline = time.monotonic() + self.args.duration
        # The first round always completes, so even a short soak has every
        # kind at least once (it may overrun --duration for that).
        for _ in range(1000000):  # ends at the deadline long before this
            if first_round_done and time.monotonic() >= deadline:
                break
            if not order:
                order = list(kinds)
                self.random.shuffle(order)
            kind = order.pop()
            first_round_done = first_round_done or not order
            print(f"[{time.strftime('%H:%M:%S')}] fault: {kind}", flush=True)
            started = time.monotonic()
            try:
                kinds[kind]()
                self.faults[kind] += 1
            except Exception:
                traceback.print_exc()
            self.fault_seconds[kind] = max(self.fault_seconds.get(kind, 0.0),
                                           time.monotonic() - started)
            gap = self.random.uniform(*self.args.fault_gap)
            end = time.monotonic() + gap
            while time.monotonic() < end:
                time.sleep(max(0.1, min(1.0, end - time.monotonic())))
                self.progress()

    def progress(self) -> None:
        now = time.monotonic()
        if now - getattr(self, "_progress_at", 0) < 10:
            return
        self._progress_at = now
        with self.lock:
            done = sum(self.finished.values())
        phases = collections.Counter(p.split(" ")[0] for p in self.phase.values())
        print(f"  progress: {self.submitted} submitted, {done} finished; clients: "
              + ", ".join(f"{k} {v}" for k, v in sorted(phases.items())), flush=True)

    def kill_launcher(self) -> None:
        self.kill_launchers(1)

    def kill_launchers(self, count: int) -> None:
        """SIGKILL ``count`` launchers at once and restart them after a
        moment; shared, they stay down past their session (so the others
        carry on what they were doing) or come back before it ends."""
        names = self.random.sample(self.launchers, count)
        for name in names:
            self.processes[name].send_signal(signal.SIGKILL)
        for name in names:
            self.processes[name].wait()
        down = (0.5, 2.5 * SESSION_TIMEOUT) if self.args.shared else (0.5, 3)
        time.sleep(self.random.uniform(*down))
        for name in names:
            self.start_daemon(name)

    def kill_builder(self) -> None:
        self.processes["builder"].send_signal(signal.SIGKILL)
        self.processes["builder"].wait()
        time.sleep(self.random.uniform(0.5, 3))
        self.start_daemon("builder")

    def expire_session(self) -> None:
        """launcher-b loses its connection for longer than its session (to
        every server of an ensemble at once)."""
        for proxy in self.proxies:
            proxy.refusing = True
        for proxy in self.proxies:
            proxy.drop_all()
        time.sleep(SESSION_TIMEOUT * 1.5)
        for proxy in self.proxies:
            proxy.refusing = False

    def zookeeper_restart(self) -> None:
        """The server restarts; an ensemble stops as a whole, then starts."""
        self.zk.stop()
        time.sleep(self.random.uniform(0.5, 2))
        self.zk.start()

    def kill_zk_member(self, role: str) -> None:
        """SIGKILL the ensemble's leader or a random follower, restart it after
        1-4 s and wait until it has rejoined (the others keep a quorum)."""
        self.zk.wait_healthy(60)
        if role == "leader":
            victim = self.zk.leader()
        else:
            followers = self.zk.followers()
            victim = self.random.choice(followers) if followers else None
        if victim is None:
            raise RuntimeError(f"no ZooKeeper {role} found: {self.zk.modes()}")
        print(f"  zookeeper: killing server {victim.myid} ({role})", flush=True)
        victim.kill()
        time.sleep(self.random.uniform(1, 4))
        victim.start(timeout=60)
        self.zk.wait_healthy(60)
        print(f"  zookeeper: server {victim.myid} rejoined: {self.zk.modes()}",
              flush=True)

    def set_fault(self, name: str, value) -> None:
        with self.sim.lock:
            setattr(self.sim.faults, name, value)

    def slow_cloud(self) -> None:
        self.set_fault("slow_seconds", 0.3)
        time.sleep(5)
        self.set_fault("slow_seconds", 0.0)

    def stuck_build(self) -> None:
        self.set_fault("never_active", True)
        time.sleep(3)
        self.set_fault("never_active", False)

    def broken_config(self) -> None:
        path = self.configs["launcher-a"]
        good = open(path).read()
        with open(path, "w") as handle:
            handle.write(good.replace("max-servers: 24", "max-servers: lots"))
        time.sleep(3)
        with open(path, "w") as handle:
            handle.write(good)

    def corrupt_records(self) -> None:
        kazoo = self.zuuls[0].kazoo
        suffix = f"{self.random.randrange(10**9):010d}"
        kazoo.create(f"/nodepool/nodes/9{suffix[1:]}", b"{not json", makepath=True)
        kazoo.create(f"/nodepool/requests/100-9{suffix[1:]}", b"\xff\xfe garbage",
                     makepath=True)
        self.corrupt = getattr(self, "corrupt", []) + [
            f"/nodepool/nodes/9{suffix[1:]}", f"/nodepool/requests/100-9{suffix[1:]}"]

    # -- the verdict -----------------------------------------------------------------

    def check(self) -> None:
        kazoo = self.zuuls[0].kazoo
        for path in getattr(self, "corrupt", []):
            try:
                kazoo.delete(path)
            except Exception:
                pass
        nodes = {}
        for node_id in kazoo.get_children("/nodepool/nodes"):
            try:
                data, _ = kazoo.get(f"/nodepool/nodes/{node_id}")
                nodes[node_id] = json.loads(data)
            except Exception:
                continue
        servers = {s.id: s for s in self.sim.live_servers()}
        node_servers = {n.get("external_id") for n in nodes.values()}
        self.leaks = [s.id for s in servers.values() if s.id not in node_servers]
        for server_id in self.leaks:
            self.violations.append(f"leaked server {server_id} "
                                   f"({servers[server_id].metadata})")
        for node_id, node in nodes.items():
            if node.get("state") in ("ready", "in-use", "hold") and \
                    node.get("external_id") not in servers:
                self.violations.append(f"node {node_id} ({node['state']}) has no server")
            if node.get("state") == "used":
                self.violations.append(f"node {node_id} still used")
        for request_id in self.stuck:
            self.violations.append(f"request {request_id} never finished")
        # The clients gave back every node they took: once they have stopped
        # no node is in use and no client still holds a node's lock.
        for client in getattr(self, "running_clients", []):
            self.violations.append(f"{client} still running")
        for node_id, node in nodes.items():
            if node.get("state") == "in-use":
                self.violations.append(f"node {node_id} still in-use")
        for zuul in self.zuuls:
            for node_id in list(zuul._node_locks):
                self.violations.append(f"node {node_id} still locked by "
                                       f"{zuul.system_id}")
        for duplicate in self.duplicates:
            self.violations.append(f"node allocated twice: {duplicate}")
        # Image retention: at most two ready builds (and two ready uploads)
        # once the builder has caught up with the newest build, at least one.
        deadline = time.monotonic() + 60
        while True:
            ready, uploads = self.image_counts(kazoo)
            if 1 <= ready <= 2 and uploads <= 2 or time.monotonic() > deadline:
                break
            time.sleep(1)
        if not (1 <= ready <= 2 and uploads <= 2):
            self.violations.append(f"soak-image: {ready} ready builds, {uploads} ready "
                                   "uploads (retention keeps two)")
        # Secrets: the cloud password and the TLS key never appear in logs,
        # the CLI's listings or the web server's.
        with open(self.zk.tls_files.client_key) as handle:
            key_line = handle.read().splitlines()[1]
        outputs = {}
        for name in os.listdir(self.state):
            if name.endswith(".log"):
                with open(os.path.join(self.state, name), errors="replace") as handle:
                    outputs[name] = handle.read()
        for command in (["list", "--detail"], ["image-list"], ["info", "soak-cloud"]):
            done = subprocess.run([os.path.join(BIN, "nodepool"), "-c",
                                   self.configs["launcher-a"], *command],
                                  capture_output=True, text=True, timeout=60, env=self.env)
            outputs["nodepool " + " ".join(command)] = done.stdout + done.stderr
        web = yaml.safe_load(open(self.configs["launcher-a"]))["webapp"]["port"]
        for path in ("/node-list.json", "/image-list.json", "/request-list.json",
                     "/dib-image-list", "/label-list"):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{web}{path}",
                                            timeout=10) as response:
                    outputs[f"web {path}"] = response.read().decode(errors="replace")
            except Exception as exc:
                self.violations.append(f"web {path} failed: {exc}")
        for name, text in outputs.items():
            for secret in (self.password, key_line):
                if secret in text:
                    self.violations.append(f"a secret appears in {name}")
        # Every launcher still runs, and requests are still served.
        for name in self.launchers:
            if self.processes[name].poll() is not None:
                self.violations.append(f"{name} is not running")
        if self.observer is not None:
            peak = self.observer.peaks["soak-cloud"]
            if peak > MAX_SERVERS:
                self.violations.append(f"soak-cloud had {peak} node records at one "
                                       f"moment; its quota is {MAX_SERVERS}")
        self.carried_on = collections.Counter()
        for name in self.launchers:
            text = outputs.get(f"{name}.log", "")
            self.carried_on["resumed"] += text.count(" resumed by ")
            self.carried_on["adopted"] += len(re.findall(r"Request \S+ adopted by",
                                                         text))
            self.carried_on["deletes-resumed"] += text.count(": delete resumed")
        zuul = self.zuuls[0]
        for _ in range(2):
            request_id = zuul.submit(["small"])
            request = self.wait_request(zuul, request_id, 60)
            if request is None or request["state"] != "fulfilled":
                self.violations.append(f"final request {request_id}: {request}")
            else:
                zuul.run_job(request_id)

    @staticmethod
    def image_counts(kazoo) -> tuple[int, int]:
        base = "/nodepool/images/soak-image/builds"
        ready = uploads = 0
        try:
            builds = [b for b in kazoo.get_children(base) if b != "lock"]
        except Exception:
            return 0, 0
        for build_id in builds:
            try:
                data, _ = kazoo.get(f"{base}/{build_id}")
                ready += json.loads(data).get("state") == "ready"
                images = f"{base}/{build_id}/providers/soak-cloud/images"
                for upload_id in kazoo.get_children(images):
                    if upload_id != "lock":
                        data, _ = kazoo.get(f"{images}/{upload_id}")
                        uploads += json.loads(data).get("state") == "ready"
            except Exception:
                continue
        return ready, uploads

    def run(self) -> int:
        zookeeper = (f"an ensemble of {ENSEMBLE_SIZE} servers" if self.args.ensemble
                     else "one server")
        print(f"soak: state in {self.state}, seed {self.args.seed}, "
              f"{self.args.duration:.0f} s of faults, ZooKeeper: {zookeeper}, "
              f"{len(self.launchers)} launchers sharing soak-cloud", flush=True)
        try:
            self.start()
            clients = [threading.Thread(target=self.client, args=(i,), daemon=True)
                       for i in range(self.args.clients)]
            for thread in clients:
                thread.start()
            self.inject()
            self.stop_workload.set()
            for name in ("http_500", "quota_creates", "error_servers", "failing_deletes"):
                self.set_fault(name, 0)
            for thread in clients:
                thread.join(self.args.request_timeout + 30)
            self.running_clients = [f"client {i} ({self.phase.get(i)})"
                                    for i, thread in enumerate(clients)
                                    if thread.is_alive()]
            print(f"clients: {sum(z.retried for z in self.zuuls)} ZooKeeper calls "
                  f"retried, {sum(z.relocked for z in self.zuuls)} node locks taken "
                  "again after an expired session", flush=True)
            print("longest fault runs: " + " ".join(
                f"{k}={v:.1f}s" for k, v in sorted(self.fault_seconds.items())),
                flush=True)
            print(f"quiet period: {self.args.quiet:.0f} s", flush=True)
            time.sleep(self.args.quiet)
            self.check()
        finally:
            self.stop()
        faults = " ".join(f"{k}={v}" for k, v in sorted(self.faults.items()))
        verdict = "PASS" if not self.violations else "FAIL"
        shared = ""
        if self.observer is not None:
            carried = getattr(self, "carried_on", collections.Counter())
            shared = (f"quota-peak={self.observer.peaks['soak-cloud']}/{MAX_SERVERS} "
                      f"resumed={carried['resumed']} adopted={carried['adopted']} "
                      f"deletes-resumed={carried['deletes-resumed']} ")
        print(f"soak {verdict}: requests={self.submitted} "
              f"fulfilled={self.finished['fulfilled']} failed={self.finished['failed']} "
              f"leaks={len(self.leaks)} stuck={len(self.stuck)} "
              f"duplicates={len(self.duplicates)} violations={len(self.violations)} "
              f"{shared}faults: {faults}", flush=True)
        for violation in self.violations[:50]:
            print(f"  violation: {violation}")
        return 0 if not self.violations else 1


def _servers_yaml(ports: list[int]) -> str:
    """``zookeeper-servers`` entries; the same chroot on each, as the
    configuration requires of an ensemble."""
    return "\n".join(f"  - {{host: 127.0.0.1, port: {port}, chroot: /soak}}"
                     for port in ports)


def _free_port() -> int:
    from nodepool.testing.zkserver import free_port
    return free_port()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0,
                        help="seconds of fault injection")
    parser.add_argument("--quiet", type=float, default=30.0,
                        help="seconds without faults or work before checking")
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    parser.add_argument("--request-timeout", type=float, default=180.0)
    parser.add_argument("--fault-gap", type=float, nargs=2, default=(3.0, 8.0),
                        metavar=("MIN", "MAX"), help="seconds between faults")
    parser.add_argument("--shared", action="store_true",
                        help="three launchers share the provider, the cloud's quota "
                             "is the pool's, kills among them outlast their "
                             "sessions; quota is watched at every change")
    parser.add_argument("--ensemble", action="store_true",
                        help=f"run a {ENSEMBLE_SIZE}-server ZooKeeper ensemble, with "
                             "leader and follower kills among the faults")
    args = parser.parse_args()
    # kazoo's warnings on every dropped connection drown the soak's own
    # lines; the daemons' logs keep theirs.
    logging.getLogger("kazoo").setLevel(logging.ERROR)
    return Soak(args).run()


if __name__ == "__main__":
    raise SystemExit(main())
