"""A stop signal stops a daemon whichever of its threads the kernel hands it to.

A signal sent to a process (kill, or a terminal's Ctrl-C to its process
group) may be delivered to any thread; Python runs the handler on the main
thread only, once that thread wakes. A main thread asleep in an untimed wait
never woke, and the daemon ran on until SIGKILL (the quickstart's 30 s hang).
``tgkill`` aims the signal at a worker thread on purpose.
"""

import ctypes
import os
import platform
import signal
import subprocess
import sys

import pytest

from conftest import wait_until

BIN = os.path.dirname(sys.executable)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SYS_TGKILL = {"x86_64": 234, "aarch64": 131}.get(platform.machine())


def signal_thread(pid: int, tid: int, signum: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(SYS_TGKILL, pid, tid, signum) != 0:
        raise OSError(ctypes.get_errno(), f"tgkill({pid}, {tid}) failed")


def worker_threads(pid: int) -> list[int]:
    return [int(tid) for tid in os.listdir(f"/proc/{pid}/task") if int(tid) != pid]


@pytest.mark.skipif(SYS_TGKILL is None, reason="tgkill number unknown here")
@pytest.mark.parametrize("program,signum", [
    ("nodepool-launcher", signal.SIGINT), ("nodepool-launcher", signal.SIGTERM),
    ("nodepool-builder", signal.SIGINT)])
def test_stop_signal_delivered_to_a_worker_thread_stops_the_daemon(
        env, tmp_path, program, signum):
    images = tmp_path / "images"
    images.mkdir()
    config = env.config(
        f"images-dir: {images}\nbuild-log-dir: {tmp_path / 'builds'}\n"
        "webapp: {port: 0, listen_address: 127.0.0.1}\n"
        "labels:\n  - name: small\n"
        "providers:\n  - name: fake-cloud\n    cloud: fake\n    cloud-images:\n"
        "      - name: precise\n        image-name: Fake Precise\n    pools:\n"
        "      - name: main\n        max-servers: 5\n        labels:\n"
        "          - name: small\n            cloud-image: precise\n"
        "            min-ram: 1\n")
    log_path = tmp_path / "daemon.log"
    with open(log_path, "wb") as log:
        daemon = subprocess.Popen([os.path.join(BIN, program), "-f", "-c", config],
                                  stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: " running" in log_path.read_text(), timeout=60,
                   message=f"{program} running")
        workers = worker_threads(daemon.pid)
        assert workers, "the daemon runs worker threads"
        signal_thread(daemon.pid, workers[-1], signum)
        # Generous: the stop itself takes well under a second.
        assert daemon.wait(timeout=30) == 0, log_path.read_text()
        text = log_path.read_text()
        assert f"Received {signal.Signals(signum).name}, stopping" in text
        assert " stopped" in text.splitlines()[-1]
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
