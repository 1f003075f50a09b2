"""What the launcher benchmarks share: a throw-away ZooKeeper, our launcher's
fake-cloud configuration, daemons started in their own session and stopped
for sure, CPU seconds from /proc and percentiles.

Imported by the scripts next to it (``tools/bench/`` is their ``sys.path[0]``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH_DIR = os.path.join(ROOT, "tools", "bench")
VENV_BIN = os.path.join(ROOT, ".venv", "bin")

from nodepool.testing.zkserver import TLSFiles, ZooKeeperServerProcess  # noqa: E402

# A launcher on a fake cloud, quota raised so only max-servers (twice the
# burst) limits it. Ours and upstream's take the same keys but for the
# provider's cloud settings.
FAKE_CLOUD_CONFIG = """
zookeeper-servers:
  - host: 127.0.0.1
    port: {port}
{chroot}{tls}labels:
  - name: small
providers:
  - name: fake-bench
    cloud: fake
    rate: 0.0001
{provider_keys}    cloud-images:
      - name: precise
        image-name: Fake Precise
    pools:
      - name: main
        max-servers: {max_servers}
        labels:
          - name: small
            cloud-image: precise
            min-ram: 1024
"""
# Our fake cloud takes its quota from the configuration.
OUR_PROVIDER_KEYS = """    simulation:
      max-instances: 1000000
      max-cores: 100000000
      max-ram: 1000000000000
"""

# A provider on the OpenStack simulator (clouds.yaml entry "sim"), for the
# benchmarks that need one cloud shared by several launcher processes.
SIM_PROVIDER = """
  - name: {name}
    cloud: sim
    region-name: RegionOne
    rate: 0.0001
    launch-timeout: 600
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


def tls_config(tls: TLSFiles | None) -> str:
    """The ``zookeeper-tls`` section of a nodepool configuration (ours and
    upstream's read the same keys); empty without TLS."""
    if tls is None:
        return ""
    return (f"zookeeper-tls:\n  ca: {tls.ca}\n  cert: {tls.client_cert}\n"
            f"  key: {tls.client_key}\n")


def fake_cloud_config(port: int, max_servers: int, provider_keys: str = OUR_PROVIDER_KEYS,
                      chroot: str | None = None, tls: TLSFiles | None = None) -> str:
    """A launcher configuration (ours by default) with one fake-cloud pool."""
    return FAKE_CLOUD_CONFIG.format(
        port=port, max_servers=max_servers, tls=tls_config(tls),
        provider_keys=provider_keys,
        chroot=f"    chroot: {chroot}\n" if chroot else "")


def start_zookeeper(state_dir: str, tls: bool = False) -> ZooKeeperServerProcess:
    """A fresh server in its own session: a terminal's Ctrl-C reaches only the
    bench, which then stops its clients before the server."""
    server = ZooKeeperServerProcess(os.path.join(state_dir, "zk"), tls=tls,
                                    own_process_group=True)
    os.makedirs(server.workdir, exist_ok=True)
    server.start()
    return server


@dataclass
class Daemon:
    """A process started in its own session, its output in a log file."""
    argv: list[str]
    log_path: str
    env: dict[str, str] | None = None
    process: subprocess.Popen | None = field(default=None, init=False)

    def start(self) -> "Daemon":
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=self.env, start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is not None:
            stop_process(self.process, timeout)


def stop_process(process: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM; then SIGKILL to its whole session (started with
    ``start_new_session``) so that nothing it started outlives it."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def our_launcher(config_path: str, log_path: str, env: dict[str, str] | None = None
                 ) -> Daemon:
    """Our ``nodepool-launcher`` in the foreground (INFO), this checkout's code
    first on the path (the venv's editable install may point elsewhere)."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"]
                                if env.get("PYTHONPATH") else "")
    return Daemon([os.path.join(VENV_BIN, "nodepool-launcher"), "-f", "--no-webapp",
                   "-c", config_path], log_path, env)


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    result = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as handle:
                result += [int(child) for child in handle.read().split()]
    except OSError:
        pass
    return result


def tree_cpu_seconds(pid: int) -> float:
    """CPU of a process, its live descendants and the children it reaped."""
    try:
        fields = _stat_fields(pid)
    except OSError:
        return 0.0
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))
    total = ticks / os.sysconf("SC_CLK_TCK")
    return total + sum(tree_cpu_seconds(child) for child in _children(pid))


def _socket_ports(pid: int) -> set[int]:
    """Local TCP ports of the sockets a process (and its children) hold."""
    inodes = set()
    for proc in [pid] + _children(pid):
        try:
            for fd in os.listdir(f"/proc/{proc}/fd"):
                try:
                    target = os.readlink(f"/proc/{proc}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as handle:
                rows = handle.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


CONS_LINE = re.compile(r"/[\d.:a-f\[\]]*?:(\d+)\[\d+\]\((.*)\)")


def zk_packets(server: ZooKeeperServerProcess, pid: int) -> tuple[int, int]:
    """Packets the server received from and sent to ``pid``'s connections
    (the server's ``cons`` counters; they restart with each connection)."""
    answer = server.four_letter("cons", secure=server.tls_port is not None) or ""
    ports = _socket_ports(pid)
    received = sent = 0
    for line in answer.splitlines():
        match = CONS_LINE.search(line)
        if not match or int(match.group(1)) not in ports:
            continue
        counters = dict(item.split("=", 1) for item in match.group(2).split(",")
                        if "=" in item)
        received += int(counters.get("recved", 0))
        sent += int(counters.get("sent", 0))
    return received, sent


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, int(round(pct / 100 * len(ordered))) - 1))
    return ordered[index]


def wait_until(predicate, timeout: float, interval: float = 0.1,
               alive: Daemon | None = None) -> bool:
    """Poll ``predicate`` until true; False on timeout or if ``alive`` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if alive is not None and not alive.running():
            return False
        time.sleep(interval)
    return False
