"""Real sshd servers on loopback, for the static driver's tests and demos.

Each server has its own freshly generated host keys, so a test can check that
the launcher recorded exactly the keys the host presents.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time

from nodepool.testing.zkserver import free_port

SSHD = "/usr/sbin/sshd"


class SSHServer:
    def __init__(self, workdir: str | None = None):
        # Without a workdir, a temporary one is made and removed on stop().
        self._owns_workdir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix="sshd-")
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.host_keys: list[str] = []

    def start(self, timeout: float = 15.0) -> "SSHServer":
        if not os.path.exists(SSHD) or not shutil.which("ssh-keygen"):
            raise RuntimeError("sshd is not installed: run tools/install-deps.sh "
                               "(it installs Debian's openssh-server)")
        os.makedirs(self.workdir, exist_ok=True)
        os.makedirs("/run/sshd", exist_ok=True)  # privilege separation directory
        keys = []
        for kind in ("ed25519", "ecdsa"):
            path = os.path.join(self.workdir, f"host_{kind}")
            if not os.path.exists(path):
                subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", path],
                               check=True)
            keys.append(path)
            with open(path + ".pub") as handle:
                kind_name, material = handle.read().split()[:2]
            self.host_keys.append(f"{kind_name} {material}")
        config = os.path.join(self.workdir, "sshd_config")
        with open(config, "w") as handle:
            handle.write(f"ListenAddress 127.0.0.1\nPort {self.port}\n"
                         + "".join(f"HostKey {k}\n" for k in keys)
                         + f"PidFile {self.workdir}/sshd.pid\nUsePAM no\n"
                         "StrictModes no\nPasswordAuthentication no\n")
        log = open(os.path.join(self.workdir, "sshd.log"), "ab")
        self.process = subprocess.Popen([SSHD, "-D", "-e", "-f", config],
                                        stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"sshd exited; see {self.workdir}/sshd.log")
                time.sleep(0.05)
        raise RuntimeError("sshd did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
