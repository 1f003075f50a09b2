"""``nodepool config-validate`` run as an operator runs it."""

import os
import subprocess
import sys

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures")


def nodepool(*args, env=None):
    return subprocess.run([sys.executable, "-m", "nodepool.cmd.nodepool", *args],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_valid_files_exit_zero():
    for name in ("spec-example.yaml", "spec-static.yaml", "spec-fake.yaml"):
        result = nodepool("-c", os.path.join(FIXTURES, name), "config-validate",
                          "--no-file-checks")
        assert result.returncode == 0, result.stderr
        assert "configuration is valid" in result.stderr


def test_missing_tls_files_fail_validation_unless_file_checks_are_off():
    # spec-example.yaml names /etc/nodepool/tls/*.pem, absent here: a daemon
    # would not start, so validation says so first.
    result = nodepool("-c", os.path.join(FIXTURES, "spec-example.yaml"),
                      "config-validate")
    assert result.returncode == 1
    assert "zookeeper-tls.cert: file '/etc/nodepool/tls/client.pem' not found" \
        in result.stderr
    assert "configuration is invalid (3 problems)" in result.stderr


def test_secure_file_is_checked_too():
    args = ("-c", os.path.join(FIXTURES, "spec-example.yaml"),
            "-s", os.path.join(FIXTURES, "spec-secure.yaml"), "config-validate",
            "--no-file-checks")
    result = nodepool(*args, env={"NODEPOOL_REGISTRY_TOKEN": "t0k3n"})
    assert result.returncode == 0, result.stderr
    result = nodepool(*args, env={"NODEPOOL_REGISTRY_TOKEN": ""})
    assert result.returncode == 0
    env = {k: v for k, v in os.environ.items() if k != "NODEPOOL_REGISTRY_TOKEN"}
    result = subprocess.run([sys.executable, "-m", "nodepool.cmd.nodepool", *args],
                            capture_output=True, text=True, timeout=60, env=env)
    # Upstream keeps an unset reference as written: valid, with a warning.
    assert result.returncode == 0, result.stderr
    assert "warning: " + os.path.abspath(os.path.join(FIXTURES, "spec-secure.yaml")) + \
        ": line 8: environment variable NODEPOOL_REGISTRY_TOKEN is not set; the " \
        "text '%(NODEPOOL_REGISTRY_TOKEN)' is kept as written" in result.stderr
    # The secure file's TLS files (of the example's production host) are
    # the ones checked when file checks are on.
    result = nodepool(*args[:-1], env={"NODEPOOL_REGISTRY_TOKEN": "t0k3n"})
    assert result.returncode == 1
    assert os.path.abspath(os.path.join(FIXTURES, "spec-secure.yaml")) + \
        ": zookeeper-tls.ca: file '/etc/nodepool/secure/ca.pem' not found" \
        in result.stderr


def test_invalid_file_lists_every_problem_and_exits_one(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("""
labels:
  - name: small
providers:
  - name: cloud
    cloud: c
    pools:
      - name: main
        max-servers: lots
        labels:
          - name: medium
            cloud-image: missing
            min-ram: 1
  - name: other
    driver: vmware
""")
    result = nodepool("-c", str(path), "config-validate")
    assert result.returncode == 1
    assert "providers[0].pools[0].max-servers: expected an integer, got string " \
        "'lots'" in result.stderr
    assert "providers[1].driver: unknown driver 'vmware'" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_file_and_usage_errors(tmp_path):
    result = nodepool("-c", str(tmp_path / "nope.yaml"), "config-validate")
    assert result.returncode == 1 and "file not found" in result.stderr
    assert "Traceback" not in result.stderr
    assert nodepool().returncode == 1  # no sub-command: help, status 1
    assert nodepool("no-such-command").returncode == 2
    version = nodepool("--version")
    assert version.returncode == 0 and "Nodepool version:" in version.stdout


def test_every_subcommand_has_help():
    import subprocess
    import sys
    from nodepool.cmd.nodepool import build_parser
    commands = sorted(build_parser()._subparsers._group_actions[0].choices)
    assert {"list", "delete", "hold", "info", "erase", "request-list", "label-list",
            "alien-image-list", "config-validate", "dib-image-list", "image-status",
            "image-list", "image-build", "dib-image-delete", "image-delete",
            "image-pause", "image-unpause", "export-image-data",
            "import-image-data"} <= set(commands)
    for command in commands:
        result = subprocess.run([sys.executable, "-m", "nodepool.cmd.nodepool",
                                 command, "--help"], capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0 and "usage: nodepool" in result.stdout, command
        assert "-c CONFIG" in result.stdout and "-s SECURE" in result.stdout, command


def test_config_option_after_the_subcommand(tmp_path):
    import subprocess
    import sys
    bad = tmp_path / "bad.yaml"
    bad.write_text("labels: 3\n")
    good = tmp_path / "good.yaml"
    good.write_text("labels: []\n")
    run = [sys.executable, "-m", "nodepool.cmd.nodepool"]
    # The file given after the subcommand is the one validated...
    assert subprocess.run(run + ["-c", str(good), "config-validate", "-c", str(bad)],
                          capture_output=True, timeout=60).returncode == 1
    # ... and without it, the global one still applies.
    assert subprocess.run(run + ["-c", str(good), "config-validate"],
                          capture_output=True, timeout=60).returncode == 0
