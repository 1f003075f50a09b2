"""The ``nodepool`` command when ZooKeeper cannot be reached: one line on
stderr naming the server and the timeout, nothing on stdout, exit 1; kazoo's
connection retries show only with ``--debug``. Also a bad ``-l`` file."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from nodepool.testing.zkserver import free_port

BIN = os.path.dirname(sys.executable)


@pytest.fixture
def unreachable(tmp_path) -> tuple[str, int]:
    """A configuration naming a loopback port nothing listens on."""
    port = free_port()
    path = tmp_path / "nodepool.yaml"
    path.write_text(f"zookeeper-servers:\n  - host: 127.0.0.1\n    port: {port}\n"
                    "labels: []\nproviders: []\n")
    return str(path), port


def nodepool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([os.path.join(BIN, "nodepool"), *args], capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("command", [["list"], ["request-list", "--json"],
                                     ["image-list"], ["info", "0000000001"]])
def test_one_line_when_zookeeper_is_unreachable(unreachable, command):
    config, port = unreachable
    result = nodepool("-c", config, "--zk-timeout", "2", *command)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"nodepool: cannot reach ZooKeeper at 127.0.0.1:{port} within 2s"]


def test_default_timeout_and_option_after_the_subcommand(unreachable):
    config, port = unreachable
    result = nodepool("list", "-c", config)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"nodepool: cannot reach ZooKeeper at 127.0.0.1:{port} within 10s"]
    result = nodepool("list", "-c", config, "--zk-timeout", "0.5")
    assert result.stderr.splitlines() == [
        f"nodepool: cannot reach ZooKeeper at 127.0.0.1:{port} within 0.5s"]


def test_debug_shows_the_connection_retries(unreachable):
    config, port = unreachable
    result = nodepool("-c", config, "--debug", "--zk-timeout", "1", "list")
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[-1] == f"nodepool: cannot reach ZooKeeper at 127.0.0.1:{port} within 1s"
    assert any("kazoo.client" in line and "Connection refused" in line
               for line in lines[:-1])


@pytest.mark.parametrize("value", ["0", "-1", "inf", "nan", "soon"])
def test_zk_timeout_must_be_positive_and_finite(unreachable, value):
    config, _ = unreachable
    result = nodepool("-c", config, f"--zk-timeout={value}", "list")
    assert result.returncode == 2  # argparse's usage error
    assert "--zk-timeout" in result.stderr and "Traceback" not in result.stderr


def test_missing_logging_config_is_one_line(unreachable, tmp_path):
    config, _ = unreachable
    missing = tmp_path / "no-such-logging.yaml"
    result = nodepool("-c", config, "-l", str(missing), "list")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"nodepool: logging configuration {missing} does not exist"]
