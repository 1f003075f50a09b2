"""Fault-injection soak: nodepool under the faults operators meet.

Runs a ZooKeeper server (TLS only), two nodepool-launchers (one behind a TCP
proxy so its session can be expired), one nodepool-builder and the OpenStack
API simulator, while Zuul-role clients submit, use and release nodes
(single and multi-node requests, several requestors and priorities). Faults
are injected at random moments; after a quiet period the invariants are
checked and a one-line verdict printed. Exit status 1 on any violation.

    .venv/bin/python tools/soak.py --duration 600
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, ROOT)

import yaml  # noqa: E402
from openstack_sim import OpenStackSimulator  # noqa: E402
from zkserver import TCPProxy, ZooKeeperServerProcess  # noqa: E402
from zuul import FakeZuul  # noqa: E402

BIN = os.path.join(ROOT, ".venv", "bin")
LABELS = ["small", "large", "image"]
SESSION_TIMEOUT = 6

CONFIG = """
zookeeper-servers:
  - host: 127.0.0.1
    port: {port}
    chroot: /soak
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
        max-servers: 24
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


class Soak:
    def __init__(self, args):
        self.args = args
        self.random = random.Random(args.seed)
        self.state = tempfile.mkdtemp(prefix="nodepool-soak-")
        os.makedirs(os.path.join(self.state, "images"))
        self.faults = collections.Counter()
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

    # -- the cluster -----------------------------------------------------------

    def start(self) -> None:
        os.makedirs(os.path.join(self.state, "zk"))
        self.zk = ZooKeeperServerProcess(os.path.join(self.state, "zk"), tls=True)
        self.zk.start()
        self.proxy = TCPProxy(self.zk.tls_port)
        # A cloud password no log line or listing may ever show.
        self.password = f"soak-Pa55-{self.random.randrange(10**12):012d}"
        self.sim = OpenStackSimulator(boot_delay=0.3, max_instances=40, max_cores=400,
                                      password=self.password).start()
        clouds = os.path.join(self.state, "clouds.yaml")
        with open(clouds, "w") as handle:
            yaml.safe_dump(self.sim.clouds_yaml(), handle)
        self.env = dict(os.environ, OS_CLIENT_CONFIG_FILE=clouds)
        tls = self.zk.tls_files
        common = dict(ca=tls.ca, cert=tls.client_cert, key=tls.client_key,
                      state=self.state, dib=os.path.join(ROOT, "tools",
                                                         "fake-image-create"),
                      session_timeout=SESSION_TIMEOUT)
        self.configs = {}
        for name, port in (("launcher-a", self.zk.tls_port),
                           ("launcher-b", self.proxy.port),
                           ("builder", self.zk.tls_port)):
            path = os.path.join(self.state, f"{name}.yaml")
            with open(path, "w") as handle:
                handle.write(CONFIG.format(port=port, web_port=_free_port(), **common))
            self.configs[name] = path
        for name in self.configs:
            self.start_daemon(name)
        self.zuuls = [FakeZuul(f"127.0.0.1:{self.zk.tls_port}/soak",
                               system_id=f"zuul-{i}", use_ssl=True, verify_certs=True,
                               ca=tls.ca, certfile=tls.client_cert,
                               keyfile=tls.client_key)
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
        self.proxy.stop()
        self.sim.stop()
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
                request_id = zuul.submit(labels, priority=priority)
            except Exception:  # ZooKeeper restarting: try again
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
            try:
                zuul.kazoo.delete(f"/nodepool/requests/{request_id}")
            except Exception:
                pass

    @staticmethod
    def wait_request(zuul, request_id: str, timeout: float) -> dict | None:
        """Poll gently (ten times a second), riding out ZooKeeper restarts."""
        deadline = time.monotonic() + timeout
        request = None
        while time.monotonic() < deadline:
            try:
                request = zuul.get_request(request_id)
            except Exception:
                request = None
            if request is not None and request.get("state") in ("fulfilled", "failed"):
                return request
            time.sleep(0.1)
        return request

    def use(self, zuul, request_id: str, request: dict, rng) -> None:
        nodes = []
        for node_id in request["nodes"]:
            try:
                zuul.lock_node(node_id, timeout=30)
            except Exception as exc:
                self.note(f"cannot lock node {node_id} of {request_id}: {exc}")
                continue
            node = zuul.get_node(node_id)
            if node is None:
                zuul.unlock_node(node_id)
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
            zuul.use(nodes)
            time.sleep(rng.uniform(0.0, 1.0))
        except Exception as exc:
            self.note(f"using nodes of {request_id} failed: {exc}")
        finally:
            with self.lock:
                for node in nodes:
                    self.holders.pop(node["id"], None)
            try:
                zuul.release(nodes)
            except Exception as exc:
                self.note(f"releasing nodes of {request_id} failed: {exc}")

    def note(self, message: str) -> None:
        print(f"  note: {message}", flush=True)

    # -- faults ----------------------------------------------------------------------

    def fault_kinds(self):
        return {
            "kill-launcher": self.kill_launcher,
            "kill-builder": self.kill_builder,
            "expire-session": self.expire_session,
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

    def inject(self) -> None:
        kinds = self.fault_kinds()
        order = list(kinds)
        self.random.shuffle(order)
        deadline = time.monotonic() + self.args.duration
        while time.monotonic() < deadline:
            if not order:
                order = list(kinds)
                self.random.shuffle(order)
            kind = order.pop()
            print(f"[{time.strftime('%H:%M:%S')}] fault: {kind}", flush=True)
            try:
                kinds[kind]()
                self.faults[kind] += 1
            except Exception:
                traceback.print_exc()
            gap = self.random.uniform(*self.args.fault_gap)
            end = time.monotonic() + gap
            while time.monotonic() < end:
                time.sleep(min(1.0, end - time.monotonic()))
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
        name = self.random.choice(["launcher-a", "launcher-b"])
        self.processes[name].send_signal(signal.SIGKILL)
        self.processes[name].wait()
        time.sleep(self.random.uniform(0.5, 3))
        self.start_daemon(name)

    def kill_builder(self) -> None:
        self.processes["builder"].send_signal(signal.SIGKILL)
        self.processes["builder"].wait()
        time.sleep(self.random.uniform(0.5, 3))
        self.start_daemon("builder")

    def expire_session(self) -> None:
        """launcher-b loses its connection for longer than its session."""
        self.proxy.refusing = True
        self.proxy.drop_all()
        time.sleep(SESSION_TIMEOUT * 1.5)
        self.proxy.refusing = False

    def zookeeper_restart(self) -> None:
        self.zk.stop()
        time.sleep(self.random.uniform(0.5, 2))
        self.zk.start()

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
        # Both launchers still serve: each alone fulfils a request.
        for name in ("launcher-a", "launcher-b"):
            if self.processes[name].poll() is not None:
                self.violations.append(f"{name} is not running")
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
        print(f"soak: state in {self.state}, seed {self.args.seed}, "
              f"{self.args.duration:.0f} s of faults", flush=True)
        self.start()
        try:
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
            print(f"quiet period: {self.args.quiet:.0f} s", flush=True)
            time.sleep(self.args.quiet)
            self.check()
        finally:
            self.stop()
        faults = " ".join(f"{k}={v}" for k, v in sorted(self.faults.items()))
        verdict = "PASS" if not self.violations else "FAIL"
        print(f"soak {verdict}: requests={self.submitted} "
              f"fulfilled={self.finished['fulfilled']} failed={self.finished['failed']} "
              f"leaks={len(self.leaks)} stuck={len(self.stuck)} "
              f"duplicates={len(self.duplicates)} violations={len(self.violations)} "
              f"faults: {faults}", flush=True)
        for violation in self.violations[:50]:
            print(f"  violation: {violation}")
        return 0 if not self.violations else 1


def _free_port() -> int:
    from zkserver import free_port
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
    args = parser.parse_args()
    return Soak(args).run()


if __name__ == "__main__":
    raise SystemExit(main())
