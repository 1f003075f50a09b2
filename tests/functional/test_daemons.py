"""nodepool-launcher and nodepool-builder as operators run them: detached
with a pid file and a logging configuration, stopped with SIGTERM, and
debugged with SIGUSR2."""

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import alive, wait_until

BIN = os.path.dirname(sys.executable)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

LOGGING = """
version: 1
formatters:
  plain: {{format: '%(asctime)s %(levelname)s %(name)s: %(message)s'}}
handlers:
  file: {{class: logging.FileHandler, filename: {path}, formatter: plain}}
root: {{level: INFO, handlers: [file]}}
"""


def daemon_config(env, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    return env.config(
        f"images-dir: {images}\nbuild-log-dir: {tmp_path / 'builds'}\n"
        "webapp: {port: 0, listen_address: 127.0.0.1}\n"
        "labels:\n  - name: small\ndiskimages:\n  - name: ubuntu\n"
        f"    dib-cmd: {ROOT}/tools/fake-image-create\n"
        "providers:\n  - name: fake-cloud\n    cloud: fake\n    diskimages:\n"
        "      - name: ubuntu\n    cloud-images:\n      - name: precise\n"
        "        image-name: Fake Precise\n    pools:\n      - name: main\n"
        "        max-servers: 5\n        labels:\n          - name: small\n"
        "            cloud-image: precise\n            min-ram: 1\n")


@pytest.mark.parametrize("program", ["nodepool-launcher", "nodepool-builder"])
def test_detached_daemon_pid_file_sigusr2_and_sigterm(env, tmp_path, program):
    config = daemon_config(env, tmp_path)
    log_path = tmp_path / "daemon.log"
    logconfig = tmp_path / "logging.yaml"
    logconfig.write_text(LOGGING.format(path=log_path))
    pidfile = tmp_path / "run" / f"{program}.pid"
    started = subprocess.run([os.path.join(BIN, program), "-c", config, "-p",
                              str(pidfile), "-l", str(logconfig)],
                             capture_output=True, text=True, timeout=60)
    # The command returns once detached; the daemon lives on.
    assert started.returncode == 0, started.stderr
    wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), timeout=20,
               message="pid file written")
    pid = int(pidfile.read_text())
    try:
        assert alive(pid)
        wait_until(lambda: log_path.exists() and " running" in log_path.read_text(),
                   timeout=30, message="the daemon logs that it runs")
        assert oct(os.stat(pidfile).st_mode & 0o777) == "0o644"  # umask 022
        os.kill(pid, signal.SIGUSR2)
        wait_until(lambda: "yappi profiling started" in log_path.read_text(),
                   timeout=15, message="first SIGUSR2: stacks and yappi on")
        text = log_path.read_text()
        assert "Thread stacks:" in text and "MainThread" in text
        time.sleep(0.3)
        os.kill(pid, signal.SIGUSR2)
        wait_until(lambda: "yappi profile:" in log_path.read_text(), timeout=15,
                   message="second SIGUSR2: the profile")
        assert "ncall" in log_path.read_text()
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not alive(pid), timeout=30, message="stopped by SIGTERM")
        assert not pidfile.exists()  # no stale pid file
        assert "stopped" in log_path.read_text()
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_second_daemon_refuses_a_held_pid_file(env, tmp_path):
    config = daemon_config(env, tmp_path)
    pidfile = tmp_path / "launcher.pid"
    first = subprocess.run([os.path.join(BIN, "nodepool-launcher"), "-c", config,
                            "-p", str(pidfile)], capture_output=True, text=True,
                           timeout=60)
    assert first.returncode == 0, first.stderr
    wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), timeout=20,
               message="pid file written")
    pid = int(pidfile.read_text())
    try:
        second = subprocess.run([os.path.join(BIN, "nodepool-launcher"), "-c", config,
                                 "-p", str(pidfile)], capture_output=True, text=True,
                                timeout=60)
        assert second.returncode == 1 and str(pid) in second.stderr
        assert int(pidfile.read_text()) == pid
    finally:
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not alive(pid), timeout=30, message="stopped")


def test_builder_refuses_to_start_without_images_dir(env, tmp_path):
    config = env.config("labels: []\nproviders: []\n")
    result = subprocess.run([os.path.join(BIN, "nodepool-builder"), "-f", "-c", config],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "No images-dir specified in config." in result.stderr


def test_launcher_stats_name_names_its_statsd_keys(env, tmp_path, statsd):
    from nodepool import stats
    config = daemon_config(env, tmp_path)
    pidfile = tmp_path / "launcher.pid"
    started = subprocess.run([os.path.join(BIN, "nodepool-launcher"), "-c", config,
                              "-p", str(pidfile), "--no-webapp",
                              "--stats-name", "rack-2"],
                             capture_output=True, text=True, timeout=60)
    assert started.returncode == 0, started.stderr
    wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), timeout=20,
               message="pid file written")
    pid = int(pidfile.read_text())
    try:
        assert statsd.wait_for(lambda keys: stats.launcher_work_key(
            "rack-2", "requests_held") in keys, timeout=30)
        assert statsd.wait_for(lambda keys: stats.zk_queue_key(
            "rack-2", "client.connection_queue") in keys, timeout=30)
        assert not any(key.startswith("nodepool.launcher.") and ".rack-2." not in key
                       for key in statsd.keys())
    finally:
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not alive(pid), timeout=30, message="stopped")
