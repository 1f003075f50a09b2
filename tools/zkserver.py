"""A real ZooKeeper server for tests, demos and benchmarks.

Uses Debian's ``zookeeper`` package (installed by tools/install-deps.sh).

Started as a child process on a free loopback port with a throw-away data
directory; optionally with a TLS port (certificates made here with
``cryptography``). Also a TCP proxy that can cut every client connection on
purpose, to prove that clients survive a dropped connection.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass

ZOOKEEPER_JAR = "/usr/share/java/zookeeper.jar"
ZOOKEEPER_CONF_DIR = "/etc/zookeeper/conf"
# Debian's zookeeper.jar manifest leaves out Netty's codec (needed by the
# Netty connection factory, hence TLS) and any SLF4J binding (no server log).
EXTRA_JARS = ["/usr/share/java/netty-codec.jar", "/usr/share/java/netty-resolver.jar",
              "/usr/share/java/slf4j-simple.jar"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class TLSFiles:
    ca: str
    server_pem: str
    client_cert: str
    client_key: str
    # A CA that did not sign the server's certificate (for negative tests).
    other_ca: str


def make_tls_files(directory: str) -> TLSFiles:
    """A CA, a server certificate for 127.0.0.1/localhost and a client pair."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def key():
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write(path, data):
        with open(path, "wb") as handle:
            handle.write(data)
        os.chmod(path, 0o600)
        return path

    def pem_key(k):
        return k.private_bytes(serialization.Encoding.PEM,
                               serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())

    def pem_cert(c):
        return c.public_bytes(serialization.Encoding.PEM)

    def make_ca(cn):
        ca_key = key()
        ca_cert = (x509.CertificateBuilder().subject_name(name(cn))
                   .issuer_name(name(cn)).public_key(ca_key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=30))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None),
                                  critical=True)
                   .sign(ca_key, hashes.SHA256()))
        return ca_key, ca_cert

    def issue(ca_key, ca_cert, cn, server):
        leaf_key = key()
        builder = (x509.CertificateBuilder().subject_name(name(cn))
                   .issuer_name(ca_cert.subject).public_key(leaf_key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=30)))
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return leaf_key, builder.sign(ca_key, hashes.SHA256())

    ca_key, ca_cert = make_ca("nodepool-test-ca")
    server_key, server_cert = issue(ca_key, ca_cert, "localhost", server=True)
    client_key, client_cert = issue(ca_key, ca_cert, "nodepool-client", server=False)
    _, other_cert = make_ca("some-other-ca")
    return TLSFiles(
        ca=write(os.path.join(directory, "ca.pem"), pem_cert(ca_cert)),
        server_pem=write(os.path.join(directory, "server.pem"),
                         pem_key(server_key) + pem_cert(server_cert)),
        client_cert=write(os.path.join(directory, "client.pem"), pem_cert(client_cert)),
        client_key=write(os.path.join(directory, "client.key"), pem_key(client_key)),
        other_ca=write(os.path.join(directory, "other-ca.pem"), pem_cert(other_cert)),
    )


class ZooKeeperServerProcess:
    """One standalone ZooKeeper server on loopback."""

    def __init__(self, workdir: str, tls: bool = False):
        self.workdir = workdir
        self.data_dir = os.path.join(workdir, "data")
        self.port = free_port()
        self.tls_files: TLSFiles | None = None
        self.tls_port: int | None = None
        self.process: subprocess.Popen | None = None
        if tls:
            self.tls_files = make_tls_files(workdir)
            self.tls_port = free_port()

    def _config(self) -> str:
        lines = [
            "tickTime=500",
            "minSessionTimeout=1000",
            "maxSessionTimeout=60000",
            f"dataDir={self.data_dir}",
            f"clientPort={self.port}",
            "clientPortAddress=127.0.0.1",
            "admin.enableServer=false",
            "4lw.commands.whitelist=ruok,stat,srvr,mntr",
            "maxClientCnxns=0",
            "forceSync=no",
        ]
        if self.tls_files:
            files = self.tls_files
            lines += [
                "serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory",
                f"secureClientPort={self.tls_port}",
                "secureClientPortAddress=127.0.0.1",
                f"ssl.keyStore.location={files.server_pem}",
                "ssl.keyStore.type=PEM",
                f"ssl.trustStore.location={files.ca}",
                "ssl.trustStore.type=PEM",
                "ssl.clientAuth=need",
            ]
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 60.0) -> None:
        java = shutil.which("java")
        if not java or not os.path.exists(ZOOKEEPER_JAR):
            raise RuntimeError(
                "ZooKeeper is not installed: run tools/install-deps.sh (it installs "
                "Debian's zookeeper package)")
        os.makedirs(self.data_dir, exist_ok=True)
        config_path = os.path.join(self.workdir, "zoo.cfg")
        with open(config_path, "w") as handle:
            handle.write(self._config())
        log_path = os.path.join(self.workdir, "zookeeper.log")
        classpath = ":".join([ZOOKEEPER_CONF_DIR, ZOOKEEPER_JAR] +
                             [j for j in EXTRA_JARS if os.path.exists(j)])
        self._log = open(log_path, "ab")
        self.process = subprocess.Popen(
            [java, "-Xms512m", "-Xmx1g", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Dzookeeper.jmx.log4j.disable=true",
             "-cp", classpath, "org.apache.zookeeper.server.ZooKeeperServerMain",
             config_path],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ZooKeeper exited with {self.process.returncode}; "
                                   f"see {log_path}")
            if self._ruok():
                if self.tls_port is None or self._port_open(self.tls_port):
                    return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"ZooKeeper did not start within {timeout}s; see {log_path}")

    def _port_open(self, port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    def _ruok(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"ruok")
                return sock.recv(4) == b"imok"
        except OSError:
            return False

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if getattr(self, "_log", None):
            self._log.close()

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def tls_hosts(self) -> str:
        return f"127.0.0.1:{self.tls_port}"


class TCPProxy:
    """Forwards loopback connections to ZooKeeper; can cut them all at once."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stopped = False
        # While refusing, new connections are closed at once (server "down").
        self.refusing = False
        threading.Thread(target=self._accept, daemon=True, name="tcp-proxy").start()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.refusing:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port),
                                                    timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def drop_all(self) -> int:
        """Cut every open connection; returns how many pairs were cut."""
        with self._lock:
            conns, self._conns = self._conns, []
        for sock in conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        return len(conns) // 2

    def stop(self) -> None:
        self._stopped = True
        self.listener.close()
        self.drop_all()

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self.port}"


def main() -> int:
    """Run a throw-away server in the foreground: ``python tools/zkserver.py``."""
    import argparse
    import signal
    import tempfile
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, default=0, help="client port (0: free)")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    server = ZooKeeperServerProcess(args.workdir or tempfile.mkdtemp(prefix="zk-"))
    if args.port:
        server.port = args.port
    server.start()
    print(f"ZooKeeper listening on {server.hosts} (data in {server.data_dir})",
          flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
