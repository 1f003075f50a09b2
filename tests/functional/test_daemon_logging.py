"""Where the daemons' logs go, as operators run them: detached without
``-l`` into default log files; with ``-l`` as the file says (YAML, JSON or
ini, and the shipped example); a bad ``-l`` file or log directory is one
line on the terminal and exit status 78; and with ``-d`` kazoo's per-packet
DEBUG lines only when asked for."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys

import pytest

from conftest import alive, wait_until
from launcher_fixtures import FAKE_PROVIDER

BIN = os.path.dirname(sys.executable)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(ROOT, "doc", "examples", "logging.yaml")
EXIT_LOGGING = 78
# "2026-01-01 12:00:00,000 DEBUG kazoo.client: ..." (and kazoo's BLATHER, 5)
KAZOO_DEBUG = re.compile(r"^\S+ \S+ (DEBUG|Level 5) kazoo\b", re.M)
NODEPOOL_DEBUG = re.compile(r"^\S+ \S+ DEBUG nodepool\.", re.M)
LOG_NAMES = {"nodepool-launcher": "nodepool", "nodepool-builder": "nodepool-builder"}
RUNNING = {"nodepool-launcher": "Launcher running", "nodepool-builder": " running: "}


def read(path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def daemon_config(env, tmp_path) -> str:
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    return env.config(
        f"images-dir: {images}\nbuild-log-dir: {tmp_path / 'builds'}\n"
        "labels:\n  - name: small\ndiskimages:\n  - name: ubuntu\n"
        f"    dib-cmd: {ROOT}/tools/fake-image-create\nproviders:" + FAKE_PROVIDER)


def command(program: str, config: str, *extra: str) -> list[str]:
    web = ["--no-webapp"] if program == "nodepool-launcher" else []
    return [os.path.join(BIN, program), "-c", config, *web, *extra]


@contextlib.contextmanager
def detached(program: str, config: str, pidfile, *extra: str, env=None):
    """Start a detached daemon; yields its pid; SIGKILL at the end if alive."""
    started = subprocess.run(command(program, config, "-p", str(pidfile), *extra),
                             capture_output=True, text=True, timeout=60, env=env)
    assert started.returncode == 0, started.stderr
    # Nothing on the terminal: the logs went to their files.
    assert started.stderr == "" and started.stdout == ""
    wait_until(lambda: read(pidfile).strip(), timeout=20, message="pid file written")
    pid = int(pidfile.read_text())
    try:
        yield pid
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def stop(pid: int) -> None:
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not alive(pid), timeout=30, message="stopped by SIGTERM")


@contextlib.contextmanager
def foreground(program: str, config: str, output, *extra: str, env=None):
    """A foreground daemon with stdout and stderr in ``output``."""
    with open(output, "ab") as sink:
        process = subprocess.Popen(command(program, config, *extra), stdout=sink,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# -- detached without -l: the default log files -------------------------------

@pytest.mark.parametrize("program,how", [("nodepool-launcher", "--log-dir"),
                                         ("nodepool-builder", "NODEPOOL_LOG_DIR")])
def test_detached_daemon_writes_default_log_files(env, tmp_path, program, how):
    config = daemon_config(env, tmp_path)
    log_dir = tmp_path / "var-log"  # does not exist yet: created
    environ = dict(os.environ)
    extra: list[str] = []
    if how == "--log-dir":
        extra = ["--log-dir", str(log_dir)]
    else:
        environ["NODEPOOL_LOG_DIR"] = str(log_dir)
    name = LOG_NAMES[program]
    normal, debug = log_dir / f"{name}.log", log_dir / f"{name}-debug.log"
    with detached(program, config, tmp_path / "run" / f"{name}.pid", *extra,
                  env=environ) as pid:
        wait_until(lambda: RUNNING[program] in read(normal), timeout=30,
                   message="the daemon logs that it runs")
        text = normal.read_text()
        assert f"{program} " in text and f"starting (pid {pid}" in text
        assert " DEBUG " not in text  # the normal log is INFO and above
        wait_until(lambda: NODEPOOL_DEBUG.search(read(debug)), timeout=30,
                   message="nodepool's DEBUG lines in the debug log")
        assert RUNNING[program] in debug.read_text()
        assert not KAZOO_DEBUG.search(debug.read_text())
        # logrotate moves the file away: the next line goes to a new one.
        os.rename(normal, log_dir / f"{name}.log.1")
        os.kill(pid, signal.SIGUSR2)  # logs the thread stacks at WARNING
        wait_until(lambda: "Thread stacks:" in read(normal), timeout=15,
                   message="a new log file after rotation")
        assert "Thread stacks:" not in read(log_dir / f"{name}.log.1")
        stop(pid)
    assert " stopped" in normal.read_text()


@pytest.mark.parametrize("program", ["nodepool-launcher", "nodepool-builder"])
@pytest.mark.parametrize("problem", ["parent is a file", "log file is a directory"])
def test_unusable_log_directory_fails_before_detaching(env, tmp_path, program, problem):
    config = daemon_config(env, tmp_path)
    name = LOG_NAMES[program]
    if problem == "parent is a file":
        (tmp_path / "plain-file").write_text("")
        log_dir = tmp_path / "plain-file" / "logs"
        named = str(log_dir)
    else:
        log_dir = tmp_path / "logs"
        (log_dir / f"{name}.log").mkdir(parents=True)
        named = str(log_dir / f"{name}.log")
    pidfile = tmp_path / f"{name}.pid"
    result = subprocess.run(command(program, config, "-p", str(pidfile),
                                    "--log-dir", str(log_dir)),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == EXIT_LOGGING
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{program}: ") and named in lines[0]
    assert not pidfile.exists()  # it never detached


# -- -l: the operator's logging configuration ------------------------------------

BAD_LOGCONFIGS = {
    "missing": None,
    "invalid YAML": "version: 1\nroot: {handlers: [\n",
    "not a mapping": "- version\n- 1\n",
    "handler directory missing": (
        "version: 1\nhandlers:\n  f: {class: logging.FileHandler, "
        "filename: /nonexistent-nodepool-dir/x.log}\nroot: {handlers: [f]}\n"),
    "unknown handler class": (
        "version: 1\nhandlers:\n  f: {class: nodepool.NoSuchHandler}\n"
        "root: {handlers: [f]}\n"),
}


@pytest.mark.parametrize("mode", ["detached", "-f", "-d"])
@pytest.mark.parametrize("problem", sorted(BAD_LOGCONFIGS))
def test_bad_logging_config_is_one_line_and_exit_78(env, tmp_path, mode, problem):
    config = daemon_config(env, tmp_path)
    logconfig = tmp_path / "logging.yaml"
    if BAD_LOGCONFIGS[problem] is not None:
        logconfig.write_text(BAD_LOGCONFIGS[problem])
    pidfile = tmp_path / "launcher.pid"
    extra = ["-p", str(pidfile)] if mode == "detached" else [mode]
    result = subprocess.run(command("nodepool-launcher", config, *extra,
                                    "-l", str(logconfig)),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == EXIT_LOGGING, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("nodepool-launcher: ") and str(logconfig) in lines[0]
    assert not pidfile.exists()


def test_bad_ini_logging_config_is_one_line(env, tmp_path):
    config = daemon_config(env, tmp_path)
    logconfig = tmp_path / "logging.conf"
    logconfig.write_text("[loggers]\nkeys=root\n")  # no [handlers], [formatters]
    result = subprocess.run(command("nodepool-builder", config, "-f", "-l",
                                    str(logconfig)),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == EXIT_LOGGING
    assert result.stderr.count("\n") == 1 and "missing section" in result.stderr


INI = """[loggers]
keys=root

[handlers]
keys=file

[formatters]
keys=plain

[logger_root]
level=INFO
handlers=file

[handler_file]
class=logging.handlers.WatchedFileHandler
formatter=plain
args=({path!r},)

[formatter_plain]
format=%(levelname)s %(name)s: %(message)s
"""


@pytest.mark.parametrize("kind", ["ini", "json"])
def test_detached_daemon_with_ini_or_json_logging_config(env, tmp_path, kind):
    config = daemon_config(env, tmp_path)
    log_path = tmp_path / "out.log"
    if kind == "ini":
        logconfig = tmp_path / "logging.conf"
        logconfig.write_text(INI.format(path=str(log_path)))
    else:
        logconfig = tmp_path / "logging.json"
        logconfig.write_text(json.dumps({
            "version": 1,
            "formatters": {"plain": {"format": "%(levelname)s %(name)s: %(message)s"}},
            "handlers": {"file": {"class": "logging.FileHandler",
                                  "filename": str(log_path), "formatter": "plain"}},
            "root": {"level": "INFO", "handlers": ["file"]}}))
    with detached("nodepool-launcher", config, tmp_path / "launcher.pid",
                  "-l", str(logconfig)) as pid:
        wait_until(lambda: "Launcher running" in read(log_path), timeout=30,
                   message="the daemon logs through the -l file")
        assert "INFO nodepool.daemon: nodepool-launcher" in log_path.read_text()
        stop(pid)
    assert "Launcher stopped" in log_path.read_text()


@pytest.mark.parametrize("program", ["nodepool-launcher", "nodepool-builder"])
def test_shipped_example_logging_config(env, tmp_path, program):
    """doc/examples/logging.yaml as the systemd units use it (``-f -l``),
    its /var/log/nodepool pointed at a temporary directory."""
    config = daemon_config(env, tmp_path)
    log_dir = tmp_path / "var-log-nodepool"
    log_dir.mkdir()
    with open(EXAMPLE) as handle:
        text = handle.read()
    assert text.count("filename: /var/log/nodepool/") == 2
    logconfig = tmp_path / "logging.yaml"
    logconfig.write_text(text.replace("filename: /var/log/nodepool/",
                                      f"filename: {log_dir}/"))
    name = LOG_NAMES[program]
    normal, debug = log_dir / f"{name}.log", log_dir / f"{name}-debug.log"
    with foreground(program, config, tmp_path / "terminal.out", "-f",
                    "-l", str(logconfig)) as process:
        wait_until(lambda: RUNNING[program] in read(normal), timeout=30,
                   message="the normal log file")
        wait_until(lambda: NODEPOOL_DEBUG.search(read(debug)), timeout=30,
                   message="nodepool's DEBUG lines in the debug log")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    assert " DEBUG " not in normal.read_text()
    assert not KAZOO_DEBUG.search(debug.read_text())
    assert "Zookeeper connection established" in debug.read_text()  # kazoo's INFO
    # Every line went to the files; nothing to the terminal.
    assert (tmp_path / "terminal.out").read_text() == ""
    # The other daemon's file names stay untouched.
    assert sorted(p.name for p in log_dir.iterdir()) == sorted([normal.name, debug.name])


# -- -d and kazoo's per-packet DEBUG lines -----------------------------------------

@pytest.mark.parametrize("switch", ["off", "--debug-kazoo", "NODEPOOL_KAZOO_DEBUG=1"])
def test_debug_mode_leaves_out_kazoo_packets_unless_asked(env, tmp_path, zuul, switch):
    config = daemon_config(env, tmp_path)
    environ = dict(os.environ)
    environ.pop("NODEPOOL_KAZOO_DEBUG", None)
    extra = ["-d"]
    if switch == "--debug-kazoo":
        extra.append(switch)
    elif switch != "off":
        environ["NODEPOOL_KAZOO_DEBUG"] = "1"
    output = tmp_path / "stdout.log"
    with foreground("nodepool-launcher", config, output, *extra, env=environ) as process:
        wait_until(lambda: "Launcher running" in read(output), timeout=30,
                   message="the launcher runs")
        # Some ZooKeeper traffic: a request served end to end.
        request = zuul.submit(["small"])
        wait_until(lambda: zuul.get_request(request)["state"] == "fulfilled",
                   timeout=60, message="the request fulfilled")
        wait_until(lambda: request in read(output), timeout=15,
                   message="the launcher logs the request")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    text = output.read_text()
    assert NODEPOOL_DEBUG.search(text)  # -d is DEBUG for nodepool itself
    assert "INFO kazoo.client: Zookeeper connection established" in text
    packets = KAZOO_DEBUG.findall(text)
    if switch == "off":
        assert packets == []
    else:
        assert "DEBUG kazoo.client: Sending request(xid=" in text
        assert "DEBUG kazoo.client: Received response(xid=" in text
