"""The status web server under many connections: a fixed number of threads
whatever the number of clients, idle connections closed after a timeout,
the longest-idle one given up for a new client at the limit, stalled
requests holding a worker only until the timeout; and a port in use is a
one-line start-up error."""

import os
import socket
import subprocess
import sys
import threading
import urllib.request

import pytest

from conftest import wait_until

from nodepool.launcher.launcher import Launcher
from nodepool.web.app import StatusWebApp
from nodepool.web.pooled import ListenError

BIN = os.path.dirname(sys.executable)
WORKERS = 4


@pytest.fixture
def launcher(env):
    return env.start(env.config("labels: []\nproviders: []\n"))


@pytest.fixture
def make_app(launcher):
    apps = []

    def make(**options):
        app = StatusWebApp(launcher, "127.0.0.1", 0, workers=WORKERS, **options)
        app.start()
        apps.append(app)
        return app
    yield make
    for app in apps:
        app.stop()


def get(app, path="/ready"):
    with urllib.request.urlopen(f"http://127.0.0.1:{app.port}{path}", timeout=30) as r:
        return r.status, r.read()


def connect(app, count):
    return [socket.create_connection(("127.0.0.1", app.port), timeout=30)
            for _ in range(count)]


def closed_by_server(sock, timeout=30.0) -> bool:
    """Blocks until the server closes ``sock`` (EOF) or ``timeout``."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def still_open(sock) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) != b""
    except BlockingIOError:
        return True
    except ConnectionResetError:
        return False
    finally:
        sock.setblocking(True)


def web_threads():
    return [t for t in threading.enumerate() if t.name.startswith("webapp")]


def test_300_idle_connections_add_no_thread_and_are_closed(make_app):
    app = make_app(idle_timeout=5.0, max_connections=400)
    assert len(web_threads()) == WORKERS + 1
    before = threading.active_count()
    socks = connect(app, 300)
    try:
        wait_until(lambda: app.server.open_connections == 300, timeout=20,
                   message="300 connections accepted")
        # Each connection was a thread (and 300 idle ones 339 more threads)
        # before; now they wait in the dispatcher's selector.
        assert len(web_threads()) == WORKERS + 1
        assert threading.active_count() <= before + 2
        # Pages are answered while they are open.
        assert get(app) == (200, b"OK\n")
        assert get(app, "/node-list.json")[0] == 200
        assert app.server.open_connections >= 300
        # The server closes every one of them once idle for the timeout.
        assert all(closed_by_server(sock) for sock in socks)
        wait_until(lambda: app.server.open_connections == 0, timeout=20,
                   message="every connection closed")
    finally:
        for sock in socks:
            sock.close()


def test_a_new_client_at_the_limit_evicts_the_longest_idle(make_app):
    app = make_app(idle_timeout=120.0, max_connections=50)
    first = connect(app, 50)
    later = []
    try:
        wait_until(lambda: app.server.open_connections == 50, timeout=20,
                   message="50 connections accepted")
        for _ in range(10):
            later += connect(app, 1)
            wait_until(lambda: not still_open(first[len(later) - 1]), timeout=20,
                       message="the oldest connection closed")
        assert app.server.open_connections == 50
        assert all(closed_by_server(sock, 5) for sock in first[:10])
        assert all(still_open(sock) for sock in first[10:] + later)
        # A page fetch at the limit is answered at once (one more eviction).
        assert get(app) == (200, b"OK\n")
        assert not still_open(first[10])
        assert app.server.open_connections <= 50
    finally:
        for sock in first + later:
            sock.close()


def read_response(reader):
    status_line = reader.readline()
    headers = {}
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, value = line.decode().split(":", 1)
        headers[name.strip().lower()] = value.strip()
    return status_line, reader.read(int(headers["content-length"]))


def test_keep_alive_and_pipelined_requests(make_app):
    app = make_app(idle_timeout=30.0)
    with socket.create_connection(("127.0.0.1", app.port), timeout=30) as sock:
        reader = sock.makefile("rb")
        for _ in range(3):  # one after another on the same connection
            sock.sendall(b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(reader) == (b"HTTP/1.1 200 OK\r\n", b"OK\n")
        # Two requests in one packet: the second is answered too, although
        # it was read ahead with the first.
        sock.sendall(b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /label-list.json HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(reader) == (b"HTTP/1.1 200 OK\r\n", b"OK\n")
        assert read_response(reader) == (b"HTTP/1.1 200 OK\r\n", b"[]\n")
        sock.sendall(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert read_response(reader)[1] == b"OK\n"
        assert closed_by_server(sock, 10)


def test_stalled_requests_hold_workers_only_until_the_timeout(make_app):
    app = make_app(idle_timeout=2.0)
    stalled = connect(app, WORKERS)
    try:
        for sock in stalled:  # a request line, and then nothing
            sock.sendall(b"GET /ready HTTP/1.1\r\n")
        # Every worker waits on a stalled client; a page is answered once
        # the timeout frees them, and the stalled clients are dropped.
        assert get(app) == (200, b"OK\n")
        assert all(closed_by_server(sock) for sock in stalled)
        assert len(web_threads()) == WORKERS + 1
    finally:
        for sock in stalled:
            sock.close()


def test_stop_frees_the_port_started_or_not(launcher):
    app = StatusWebApp(launcher, "127.0.0.1", 0)
    app.bind()
    port = app.port
    app.stop()  # never started: must not wait for a serving loop
    again = StatusWebApp(launcher, "127.0.0.1", port)
    again.start()
    try:
        assert get(again) == (200, b"OK\n")
    finally:
        again.stop()
    assert not [t for t in web_threads() if t.is_alive()]


@pytest.fixture
def taken_port():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def test_launcher_with_its_web_port_in_use_exits_with_one_line(env, taken_port):
    config = env.config(f"webapp: {{port: {taken_port}, listen_address: 127.0.0.1}}\n"
                        "labels: []\nproviders: []\n")
    expected = f"web server cannot listen on 127.0.0.1:{taken_port}: address in use"
    for mode in (["-f"], ["-p", os.path.join(os.path.dirname(config), "np.pid")]):
        done = subprocess.run([os.path.join(BIN, "nodepool-launcher"), "-c", config]
                              + mode, capture_output=True, text=True, timeout=60)
        assert done.returncode == 1, (mode, done.stdout, done.stderr)
        assert done.stderr.strip() == expected, mode
        assert "Traceback" not in done.stdout + done.stderr
    # The port taken between that check and the launcher's own bind: the
    # launcher fails before touching ZooKeeper, with the same line.
    with pytest.raises(ListenError) as raised:
        Launcher(config, webapp=True)
    assert str(raised.value) == expected


def process_threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise AssertionError("no thread count")


def test_launcher_process_threads_stay_flat_under_300_idle_connections(env, tmp_path):
    """The daemon as run (defaults: 8 workers, 30 s idle timeout): 300 idle
    connections took it from 26 to 365 threads before."""
    from nodepool.testing.zkserver import free_port
    port = free_port()
    config = env.config(f"webapp: {{port: {port}, listen_address: 127.0.0.1}}\n"
                        "labels: []\nproviders: []\n")
    daemon = subprocess.Popen([os.path.join(BIN, "nodepool-launcher"), "-c", config, "-f"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    socks = []
    try:
        def ready():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready",
                                            timeout=5) as r:
                    return r.status == 200
            except OSError:
                return False
        wait_until(ready, timeout=60, interval=0.2, message="launcher ready")
        before = process_threads(daemon.pid)
        socks = [socket.create_connection(("127.0.0.1", port), timeout=30)
                 for _ in range(300)]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/node-list.json",
                                    timeout=30) as r:
            assert r.status == 200
        assert process_threads(daemon.pid) <= before + 2
    finally:
        for sock in socks:
            sock.close()
        daemon.terminate()
        daemon.wait(timeout=60)
