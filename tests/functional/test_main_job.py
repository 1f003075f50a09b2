"""The README's main job and the listing commands, run as an operator would."""

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

from conftest import alive
from launcher_fixtures import FAKE_PROVIDER

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


QUICKSTART_READY_TIMEOUT = 240.0
# Generous: the stop takes a second or two.
STOP_TIMEOUT = 60.0


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    if int(handle.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (FileNotFoundError, ProcessLookupError):
                pass
    return found


def cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as handle:
        return handle.read().replace(b"\0", b" ").decode()


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


class Output:
    """The quickstart's output, read on a thread so every wait is bounded."""

    def __init__(self, stream):
        self.lines: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream):
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def until(self, marker: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                break
            self.lines.append(line)
            if marker in line:
                return
        raise AssertionError(f"no {marker!r} in the output:\n" + "\n".join(self.lines))

    def value(self, label: str) -> str:
        [line] = [line for line in self.lines if line.strip().startswith(label)]
        return line.split(label, 1)[1].strip()


def ready_labels(listing: str) -> list[str]:
    table = [line for line in listing.splitlines() if "| fake-cloud" in line]
    assert all("| ready" in line for line in table), listing
    return sorted(line.split("|")[3].strip() for line in table)


def test_quickstart_tells_how_to_use_it_and_stops_on_ctrl_c():
    """The README's main job as a terminal runs it: once the pool is ready
    the printed ZooKeeper address, web URL and CLI commands work; Ctrl-C
    (SIGINT to the process group) stops the daemons, then ZooKeeper (in a
    session of its own, so the Ctrl-C does not take it down under them),
    and leaves nothing behind."""
    quickstart = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "tools", "quickstart.py")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        stdin=subprocess.DEVNULL, start_new_session=True)
    output = Output(quickstart.stdout)
    pids: dict[str, int] = {}
    state = None
    try:
        output.until("Starting ZooKeeper", 60)
        state = output.value("Starting ZooKeeper (state in").split(")")[0]
        output.until("Press Ctrl-C to stop.", QUICKSTART_READY_TIMEOUT)
        for pid in children(quickstart.pid):
            line = cmdline(pid)
            for name in ("nodepool-launcher", "nodepool-builder", "ZooKeeperServerMain"):
                if name in line:
                    pids[name] = pid
        assert sorted(pids) == ["ZooKeeperServerMain", "nodepool-builder",
                                "nodepool-launcher"], output.lines
        group = os.getpgid(quickstart.pid)
        assert os.getpgid(pids["nodepool-launcher"]) == group
        assert os.getpgid(pids["nodepool-builder"]) == group
        assert os.getpgid(pids["ZooKeeperServerMain"]) != group

        assert ready_labels("\n".join(output.lines)) == ["debian-small"] * 3 + ["ubuntu-large"]
        zk_address = output.value("ZooKeeper:").split()[0]
        zk_host, zk_port = zk_address.rsplit(":", 1)
        with socket.create_connection((zk_host, int(zk_port)), timeout=5) as sock:
            sock.sendall(b"ruok")
            assert sock.recv(16) == b"imok"
        # Both printed command lines, pasted into a shell as they are.
        for label in ("CLI:", "or:"):
            result = subprocess.run(["bash", "-c", output.value(label)],
                                    capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, (label, result.stdout, result.stderr)
            assert ready_labels(result.stdout) == ["debian-small"] * 3 + ["ubuntu-large"]
        url = output.value("Web status:")
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200
            assert "debian-small" in response.read().decode()
        with urllib.request.urlopen(url + ".json", timeout=10) as response:
            assert len(json.load(response)) == 4
        web_host, web_port = urllib.parse.urlparse(url).netloc.rsplit(":", 1)
        assert os.path.isdir(state)

        started = time.monotonic()
        os.killpg(group, signal.SIGINT)
        deadline = started + STOP_TIMEOUT
        while time.monotonic() < deadline:
            running = {name for name, pid in pids.items() if alive(pid)}
            # ZooKeeper goes last: it still serves while the daemons stop.
            if "ZooKeeperServerMain" not in running:
                assert not running, f"{running} outlived ZooKeeper"
            if quickstart.poll() is not None and not running:
                break
            time.sleep(0.02)
        stop_seconds = time.monotonic() - started
        assert quickstart.wait(timeout=5) == 0
        output.until("ZooKeeper stopped", 10)
        print(f"quickstart stopped {stop_seconds:.2f} s after SIGINT")
        assert not [name for name, pid in pids.items() if alive(pid)]
        tail = output.lines[output.lines.index("Stopping ..."):]
        assert tail == ["Stopping ...", "nodepool-builder stopped (exit 0)",
                        "nodepool-launcher stopped (exit 0)", "ZooKeeper stopped"]
        assert not os.path.exists(state)  # with its logs and data
        assert not port_open(zk_host, int(zk_port))
        assert not port_open(web_host, int(web_port))
    finally:
        if quickstart.poll() is None:
            os.killpg(quickstart.pid, signal.SIGKILL)
            quickstart.wait()
        for pid in pids.values():  # ZooKeeper is not in that group
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        if state:
            shutil.rmtree(state, ignore_errors=True)


def test_list_and_request_list(env, zuul):
    path = env.config("labels:\n  - name: small\nproviders:" + FAKE_PROVIDER)
    env.start(path)
    request_id = zuul.submit(["small"])
    node_id = zuul.wait_for_request(request_id)["nodes"][0]
    zuul.lock_node(node_id)
    waiting = zuul.submit(["nothing-serves-this"], priority="100")
    zuul.wait_for_request(waiting)

    def nodepool(*args):
        return subprocess.run([sys.executable, "-m", "nodepool.cmd.nodepool", "-c",
                               path, *args], capture_output=True, text=True,
                              timeout=60)

    listed = json.loads(nodepool("list", "--json").stdout)
    [row] = listed
    assert row["id"] == node_id and row["locked"] == "locked"
    assert row["label"] == ["small"] and row["state"] == "ready"
    assert "launcher" not in row
    detail = json.loads(nodepool("list", "--detail", "--json").stdout)[0]
    assert detail["allocated_to"] == request_id and detail["AZ"] in ("az1", "az2")
    table = nodepool("list").stdout
    assert table.splitlines()[1].startswith("| ID ") and node_id in table
    requests = json.loads(nodepool("request-list", "--json").stdout)
    assert [r["id"] for r in requests] == [waiting, request_id]
    assert requests[0]["state"] == "failed"


def test_unreachable_zookeeper_is_a_clear_error(tmp_path):
    from nodepool.testing.zkserver import free_port
    path = tmp_path / "nodepool.yaml"
    path.write_text(f"zookeeper-servers:\n  - host: 127.0.0.1\n    port: {free_port()}\n")
    result = subprocess.run([sys.executable, "-m", "nodepool.cmd.nodepool", "-c",
                             str(path), "list"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1
    assert "cannot reach ZooKeeper at 127.0.0.1:" in result.stderr
    assert "Traceback" not in result.stderr
