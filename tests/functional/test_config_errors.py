"""Configuration errors as an operator meets them: from ``nodepool
config-validate``, at daemon start-up (one line, exit 1, no traceback), and
in a running launcher whose file goes bad (one ERROR line per change, the last
good configuration keeps serving)."""

import logging
import os
import subprocess
import sys

import pytest

from conftest import wait_until
from launcher_fixtures import FAKE_PROVIDER

# Everything here loads in upstream's config-validate; each line marked
# "warns" is accepted with a warning.
UPSTREAM_ACCEPTED = """
labels:
  - name: small
  - name: large
  - name: small          # warns: duplicate label, this one is kept
    min-ready: 0
diskimages:
  - name: debian
    elements: [debian-minimal]
    env-vars:
      TOKEN: '%(NODEPOOL_UNSET_TOKEN)'     # warns: unset, kept verbatim
  - name: centos
    elements: [centos]
providers:
  - name: fake-cloud
    cloud: fake
    rate: '0.001'
    diskimages:
      - name: debian
    cloud-images:
      - name: precise
        image-name: Fake Precise
    pools:
      - name: main
        max-servers: 5
        labels:
          - name: small
            cloud-image: precise
            min-ram: 1
            instance-properties: {count: 2, enabled: true}
            dynamic-instance-properties: {number: 42, tenant: '{request.tenant_name}'}
          - name: large
            diskimage: centos          # warns: not in this provider's diskimages
            min-ram: 1
"""

SECURE_WITH_EXTRA_KEYS = "diskimages:\n  - name: debian\n    env-vars: {A: '1'}\n" \
    "mysql: {password: x}\n"


def run(module, *args, env=None, timeout=60):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True,
                          text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def lines(text):
    return [line for line in text.splitlines() if line.strip()]


def test_config_validate_accepts_the_upstream_constructs_with_warnings(tmp_path):
    path = tmp_path / "nodepool.yaml"
    path.write_text(UPSTREAM_ACCEPTED)
    secure = tmp_path / "secure.yaml"
    secure.write_text(SECURE_WITH_EXTRA_KEYS)
    env = {k: v for k, v in os.environ.items() if k != "NODEPOOL_UNSET_TOKEN"}
    result = subprocess.run([sys.executable, "-m", "nodepool.cmd.nodepool", "-c",
                             str(path), "-s", str(secure), "config-validate"],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in lines(result.stderr) if line.startswith("warning: ")]
    expected = [
        "line 11: environment variable NODEPOOL_UNSET_TOKEN is not set",
        "labels[2].name: duplicate label 'small'",
        "providers[0].pools[0].labels[1].diskimage: diskimage 'centos' is not listed",
        "mysql: unknown key in the secure file",
    ]
    for words in expected:
        assert [w for w in warnings if words in w], (words, result.stderr)
    assert len(warnings) == len(expected)
    assert "configuration is valid" in result.stderr


def test_config_validate_on_a_fifo_returns_with_one_clear_line(tmp_path):
    fifo = tmp_path / "nodepool.yaml"
    os.mkfifo(fifo)
    # The subprocess timeout bounds the wait: a hang fails the test.
    result = run("nodepool.cmd.nodepool", "-c", str(fifo), "config-validate",
                 timeout=60)
    assert result.returncode == 1
    assert f"{fifo}: is a FIFO (named pipe), not a regular file" in lines(result.stderr)
    assert "Traceback" not in result.stderr


def _bad_configs(tmp_path):
    cert = tmp_path / "client.pem"
    cert.write_text("x")
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    zk = "zookeeper-servers:\n  - host: 127.0.0.1\n    port: {port}\n"
    base = "labels:\n  - name: small\nproviders:" + FAKE_PROVIDER
    return {
        "boot-timeout -1": (zk.format(port=2181) + base.replace(
            "    cloud: fake\n", "    cloud: fake\n    boot-timeout: -1\n"),
            "providers[0].boot-timeout: must be a positive number of seconds, got -1"),
        "port out of range": (zk.format(port=70000) + base,
                              "zookeeper-servers[0].port: must be a port number from "
                              "1 to 65535, got 70000"),
        "missing TLS file": (zk.format(port=2181) + "zookeeper-tls:\n"
                             f"  cert: {cert}\n  key: {cert}\n"
                             f"  ca: {tmp_path / 'ca.pem'}\n" + base,
                             f"zookeeper-tls.ca: file '{tmp_path / 'ca.pem'}' not found"),
        "fifo": (fifo, "is a FIFO (named pipe), not a regular file"),
        "huge integer": (zk.format(port=2181) + "max-hold-age: " + "7" * 10000 + "\n",
                         "a number of 10000 characters is too long"),
        "deep nesting": (zk.format(port=2181) + "labels: " + "[" * 10000 + "]" * 10000
                         + "\n", "nested more than 100 levels deep"),
    }


@pytest.mark.parametrize("program", ["nodepool.cmd.launcher", "nodepool.cmd.builder"])
def test_daemon_start_up_with_a_bad_config_is_one_line(tmp_path, program):
    for case, (content, message) in _bad_configs(tmp_path).items():
        if isinstance(content, str):
            path = tmp_path / "nodepool.yaml"
            path.write_text(content)
        else:
            path = content
        extra = ["--no-webapp"] if program.endswith("launcher") else []
        result = run(program, "-c", str(path), "-f", *extra, timeout=60)
        assert result.returncode == 1, (case, result.stderr)
        [line] = lines(result.stderr)
        assert line.startswith(f"{path}: ") and message in line, (case, line)
        assert "Traceback" not in result.stderr


def test_running_launcher_reports_a_bad_file_once_per_change(env, zuul, caplog):
    caplog.set_level(logging.INFO)
    good = UPSTREAM_ACCEPTED.replace("    diskimages:\n      - name: debian\n", "")
    path = env.config(good)
    launcher = env.start(path)
    # The upstream-style file runs: its warnings are logged, it serves.
    warned = [r.getMessage() for r in caplog.records
              if r.levelno == logging.WARNING and r.name == "nodepool.config"]
    assert any("duplicate label 'small'" in w for w in warned), warned
    assert "large" not in launcher.config.providers["fake-cloud"].pools["main"].labels
    first = zuul.submit(["small"])
    assert zuul.wait_for_request(first, timeout=30)["state"] == "fulfilled"

    def config_errors():
        return [r for r in caplog.records if r.levelno >= logging.ERROR and
                "still running on the last good one" in r.getMessage()]

    # 1. An invalid value.
    env.rewrite(path, good.replace("    rate: '0.001'\n",
                                   "    rate: '0.001'\n    boot-timeout: -1\n"))
    wait_until(lambda: launcher.config_errors == 1, message="bad file noticed")
    for _ in range(5):  # asked again and again: nothing new to say
        assert launcher.check_config() is False
    assert launcher.config_errors == 1
    [record] = config_errors()
    message = record.getMessage()
    assert "providers[0].boot-timeout: must be a positive number of seconds" in message
    assert "\n" not in message and record.exc_info is None
    # The last good configuration keeps serving.
    second = zuul.submit(["small"])
    assert zuul.wait_for_request(second, timeout=30)["state"] == "fulfilled"

    # 2. A FIFO in place of the file: reported once, the reload does not freeze.
    os.unlink(path)
    os.mkfifo(path)
    wait_until(lambda: launcher.config_errors == 2, message="FIFO noticed")
    assert launcher.check_config() is False
    assert "is a FIFO (named pipe), not a regular file" in config_errors()[1].getMessage()
    assert len(config_errors()) == 2

    # 3. A good file again is applied.
    os.unlink(path)
    env.config(good.replace("max-servers: 5", "max-servers: 7"),
               name=os.path.basename(path))
    wait_until(lambda: launcher.managers["fake-cloud"].provider.pools["main"]
               .max_servers == 7, message="good file applied")
    assert launcher.config_errors == 2
    assert not [r for r in caplog.records if r.exc_info is not None and
                r.name.startswith("nodepool.launcher")]
