"""A real ZooKeeper server for tests, demos and benchmarks.

Uses Debian's ``zookeeper`` package (installed by tools/install-deps.sh).

Started as a child process on a free loopback port with a throw-away data
directory; optionally with a TLS port (certificates made here with
``cryptography``). Also a three-server ensemble on loopback whose members can
be killed and restarted one by one, and a TCP proxy that can cut every client
connection on purpose, to prove that clients survive a dropped connection.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass

ZOOKEEPER_JAR = "/usr/share/java/zookeeper.jar"
ZOOKEEPER_CONF_DIR = "/etc/zookeeper/conf"
# Debian's zookeeper.jar manifest leaves out Netty's codec (needed by the
# Netty connection factory, hence TLS) and any SLF4J binding (no server log).
# A server that lost a port to someone else's short-lived connection is
# launched again this many times in all.
BIND_ATTEMPTS = 5
EXTRA_JARS = ["/usr/share/java/netty-codec.jar", "/usr/share/java/netty-resolver.jar",
              "/usr/share/java/slf4j-simple.jar"]


_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()


def free_port() -> int:
    """A free loopback port, never one this process was given before (the
    kernel readily hands a just-closed port out again, and an ensemble picks
    a dozen ports before any server binds them)."""
    with _handed_out_lock:
        for _ in range(100):
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise RuntimeError("no unused loopback port found")


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


@dataclass(frozen=True)
class Peer:
    """One member of an ensemble as the others see it (a ``server.N`` line)."""
    myid: int
    quorum_port: int
    election_port: int

    def line(self) -> str:
        return f"server.{self.myid}=127.0.0.1:{self.quorum_port}:{self.election_port}"


class ZooKeeperServerProcess:
    """One ZooKeeper server on loopback: standalone, or one member of an
    ensemble when ``myid`` and ``peers`` are given (see ZooKeeperEnsemble)."""

    # Standalone keeps the historical heap; ensemble members are small, so
    # three JVMs fit next to everything else.
    STANDALONE_HEAP = ("512m", "1g")
    PEER_HEAP = ("64m", "512m")

    def __init__(self, workdir: str, tls: bool = False,
                 tls_files: TLSFiles | None = None, myid: int | None = None,
                 peers: list[Peer] | None = None, own_process_group: bool = False):
        """``own_process_group``: the JVM runs in a session of its own, so a
        terminal's Ctrl-C (SIGINT to the foreground process group) does not
        reach it and its owner can stop it after its clients."""
        if (myid is None) != (peers is None):
            raise ValueError("myid and peers go together")
        self.workdir = workdir
        self.data_dir = os.path.join(workdir, "data")
        self.port = free_port()
        self.tls_files: TLSFiles | None = tls_files
        self.tls_port: int | None = None
        self.process: subprocess.Popen | None = None
        self._stopped_on_purpose = False
        self.myid = myid
        self.peers = list(peers) if peers is not None else None
        self.own_process_group = own_process_group
        if tls or tls_files is not None:
            os.makedirs(workdir, exist_ok=True)
            if self.tls_files is None:
                self.tls_files = make_tls_files(workdir)
            self.tls_port = free_port()

    @property
    def log_path(self) -> str:
        return os.path.join(self.workdir, "zookeeper.log")

    def _config(self) -> str:
        lines = [
            "tickTime=500",
            "minSessionTimeout=1000",
            "maxSessionTimeout=60000",
            f"dataDir={self.data_dir}",
            f"clientPort={self.port}",
            "clientPortAddress=127.0.0.1",
            "admin.enableServer=false",
            "4lw.commands.whitelist=ruok,stat,srvr,mntr,cons",
            "maxClientCnxns=0",
            "forceSync=no",
        ]
        if self.peers is not None:
            # Ticks of 500 ms: a follower has 5 s to sync after a restart and
            # is dropped after 2.5 s of silence, so elections stay quick.
            lines += ["initLimit=10", "syncLimit=5", "reconfigEnabled=false",
                      "standaloneEnabled=false"]
            lines += [peer.line() for peer in self.peers]
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

    def launch(self) -> None:
        """Start the JVM without waiting for it to serve (an ensemble member
        cannot serve before a quorum of its peers runs too)."""
        java = shutil.which("java")
        if not java or not os.path.exists(ZOOKEEPER_JAR):
            raise RuntimeError(
                "ZooKeeper is not installed: run tools/install-deps.sh (it installs "
                "Debian's zookeeper package)")
        if self.running:
            raise RuntimeError(f"ZooKeeper in {self.workdir} is already running")
        os.makedirs(self.data_dir, exist_ok=True)
        if self.myid is not None:
            with open(os.path.join(self.data_dir, "myid"), "w") as handle:
                handle.write(f"{self.myid}\n")
        config_path = os.path.join(self.workdir, "zoo.cfg")
        with open(config_path, "w") as handle:
            handle.write(self._config())
        classpath = ":".join([ZOOKEEPER_CONF_DIR, ZOOKEEPER_JAR] +
                             [j for j in EXTRA_JARS if os.path.exists(j)])
        heap_min, heap_max = (self.STANDALONE_HEAP if self.peers is None
                              else self.PEER_HEAP)
        main_class = ("org.apache.zookeeper.server.ZooKeeperServerMain"
                      if self.peers is None
                      else "org.apache.zookeeper.server.quorum.QuorumPeerMain")
        self._log = open(self.log_path, "ab")
        self._log_offset = self._log.tell()
        self._stopped_on_purpose = False
        self.process = subprocess.Popen(
            [java, f"-Xms{heap_min}", f"-Xmx{heap_max}", "-XX:+UseSerialGC",
             "-XX:TieredStopAtLevel=1", "-Dzookeeper.jmx.log4j.disable=true",
             "-cp", classpath, main_class, config_path],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=self.own_process_group)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until the server serves clients: ``srvr`` reports it standalone, or
        for an ensemble member leader or follower."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = self.process.returncode if self.process else None
                raise RuntimeError(f"ZooKeeper exited with {code}; see {self.log_path}")
            if self.serving():
                if self.tls_port is None or self._port_open(self.tls_port):
                    return
            time.sleep(0.1)
        raise TimeoutError(f"ZooKeeper in {self.workdir} did not serve within "
                           f"{timeout}s; see {self.log_path}")

    def start(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        for attempt in range(BIND_ATTEMPTS):
            self.launch()
            try:
                self.wait_ready(max(1.0, deadline - time.monotonic()))
                return
            except (RuntimeError, TimeoutError) as exc:
                error = exc
                if self.bind_failed() and attempt + 1 < BIND_ATTEMPTS:
                    self._close_log()
                    time.sleep(1)
                    continue
                self.stop()
                break
        raise RuntimeError(str(error)) from None

    def bind_failed(self) -> bool:
        """Whether the last launch died because one of its ports was taken
        (while a server is down, any outgoing connection may borrow its port
        for a moment)."""
        if self.running:
            return False
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(getattr(self, "_log_offset", 0))
                return b"Address already in use" in handle.read()
        except OSError:
            return False

    def relaunch_if_bind_failed(self) -> bool:
        """Launch again after a port clash; False if it died of anything else."""
        if not self.crashed or not self.bind_failed():
            return False
        self._close_log()
        time.sleep(1)
        self.launch()
        return True

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def crashed(self) -> bool:
        """Exited without being stopped or killed by us."""
        return (self.process is not None and self.process.poll() is not None
                and not self._stopped_on_purpose)

    def serving(self) -> bool:
        # ``ruok`` answers ``imok`` before the server serves (before it has
        # loaded its data; for an ensemble member, before it has a quorum).
        if self.peers is None:
            return self.mode() == "standalone"
        return self.mode() in ("leader", "follower")

    def _port_open(self, port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    def four_letter(self, word: str, timeout: float = 2.0,
                    secure: bool = False) -> str | None:
        """Send a four-letter word to the plain client port (``secure``: to
        the TLS port, whose connections only it lists); None if no answer."""
        chunks = []
        try:
            with self._admin_socket(secure, timeout) as sock:
                sock.sendall(word.encode())
                # The server closes the connection after its answer; the
                # socket timeout bounds every read.
                for _ in range(1000):
                    data = sock.recv(65536)
                    if not data:
                        break
                    chunks.append(data)
        except OSError:
            return None
        return b"".join(chunks).decode(errors="replace")

    def _admin_socket(self, secure: bool, timeout: float) -> socket.socket:
        if not secure:
            return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        assert self.tls_files is not None and self.tls_port is not None
        context = ssl.create_default_context(cafile=self.tls_files.ca)
        context.load_cert_chain(self.tls_files.client_cert, self.tls_files.client_key)
        context.check_hostname = False
        return context.wrap_socket(
            socket.create_connection(("127.0.0.1", self.tls_port), timeout=timeout))

    def _ruok(self) -> bool:
        return self.four_letter("ruok", timeout=1) == "imok"

    def mode(self) -> str | None:
        """``leader``, ``follower`` or ``standalone`` from ``srvr``; None
        while the server is down or not serving (no quorum)."""
        answer = self.four_letter("srvr")
        if not answer:
            return None
        match = re.search(r"^Mode: (\w+)", answer, re.MULTILINE)
        return match.group(1) if match else None

    def _close_log(self) -> None:
        if getattr(self, "_log", None):
            self._log.close()
            self._log = None

    def stop(self) -> None:
        """Graceful stop (SIGTERM); the data directory is kept."""
        self._stopped_on_purpose = True
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._close_log()

    def kill(self) -> None:
        """Hard stop (SIGKILL), as a crashed machine; the data directory is kept."""
        self._stopped_on_purpose = True
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self._close_log()

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def tls_hosts(self) -> str:
        return f"127.0.0.1:{self.tls_port}"


class ZooKeeperEnsemble:
    """Several ZooKeeper servers forming one ensemble on loopback.

    Each member has its own work and data directory (with its ``myid``), its
    own client and TLS ports, and the same TLS files (one CA, one server
    certificate for 127.0.0.1/localhost). Members can be killed, stopped and
    started again one by one; their data is kept.
    """

    def __init__(self, workdir: str, size: int = 3, tls: bool = False):
        if size < 1:
            raise ValueError("an ensemble needs at least one server")
        self.workdir = workdir
        os.makedirs(workdir, exist_ok=True)
        tls_files = make_tls_files(workdir) if tls else None
        self.peers = [Peer(myid=i + 1, quorum_port=free_port(),
                           election_port=free_port()) for i in range(size)]
        self.servers = [
            ZooKeeperServerProcess(os.path.join(workdir, f"zk-{peer.myid}"),
                                   tls_files=tls_files, myid=peer.myid,
                                   peers=self.peers)
            for peer in self.peers]
        self.tls_files = tls_files

    def start(self, timeout: float = 90.0) -> None:
        """Start every member, then wait for a leader and every member serving."""
        try:
            for server in self.servers:
                server.launch()
            self.wait_healthy(timeout)
        except Exception:
            self.stop()
            raise

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def modes(self) -> dict[int, str | None]:
        """Each member's ``srvr`` mode by myid (None: down or not serving)."""
        return {server.myid: server.mode() if server.running else None
                for server in self.servers}

    def leader(self) -> ZooKeeperServerProcess | None:
        for server in self.servers:
            if server.running and server.mode() == "leader":
                return server
        return None

    def followers(self) -> list[ZooKeeperServerProcess]:
        return [server for server in self.servers
                if server.running and server.mode() == "follower"]

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Until there is exactly one leader and every running member serves."""
        deadline = time.monotonic() + timeout
        modes: dict[int, str | None] = {}
        relaunches = 0
        while time.monotonic() < deadline:
            for server in self.servers:
                if server.crashed and relaunches < BIND_ATTEMPTS * len(self.servers) \
                        and server.relaunch_if_bind_failed():
                    relaunches += 1
                    continue
                if server.crashed:
                    raise RuntimeError(f"ZooKeeper {server.myid} exited with "
                                       f"{server.process.returncode}; see "
                                       f"{server.log_path}")
            running = [s for s in self.servers if s.running]
            modes = {s.myid: s.mode() for s in running}
            leaders = [m for m, mode in modes.items() if mode == "leader"]
            if running and len(leaders) == 1 and all(
                    mode in ("leader", "follower") for mode in modes.values()) and all(
                    s.tls_port is None or s._port_open(s.tls_port) for s in running):
                return
            time.sleep(0.2)
        raise TimeoutError(f"ZooKeeper ensemble not healthy within {timeout}s: "
                           f"modes {modes}; see {self.workdir}/zk-*/zookeeper.log")

    @property
    def hosts(self) -> str:
        return ",".join(server.hosts for server in self.servers)

    @property
    def tls_hosts(self) -> str:
        return ",".join(server.tls_hosts for server in self.servers)


class TCPProxy:
    """Forwards loopback connections to ZooKeeper; can cut them all at once,
    and hold the traffic of one direction (to cut a call after the server
    applied it but before its reply arrives, or before the server saw it)."""

    DIRECTIONS = ("to_server", "to_client")
    # A held direction longer than this is treated as cut (bounds the wait).
    MAX_HOLD = 300.0

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
        self._flowing = {direction: threading.Event() for direction in self.DIRECTIONS}
        for event in self._flowing.values():
            event.set()
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
            # The timeout was for connecting: a quiet server is no reason to
            # cut the pair.
            upstream.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
            for src, dst, direction in ((client, upstream, "to_server"),
                                        (upstream, client, "to_client")):
                threading.Thread(target=self._pump, args=(src, dst, direction),
                                 daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        flowing = self._flowing[direction]
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if not self._wait_flowing(flowing, src, dst):
                    break  # cut while held: what was held is lost
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    @classmethod
    def _wait_flowing(cls, flowing: threading.Event, src: socket.socket,
                      dst: socket.socket) -> bool:
        """Until the direction flows again; False once the pair was cut."""
        deadline = time.monotonic() + cls.MAX_HOLD
        while not flowing.wait(0.1):
            if src.fileno() == -1 or dst.fileno() == -1 or time.monotonic() > deadline:
                return False
        return src.fileno() != -1 and dst.fileno() != -1

    def hold(self, direction: str) -> None:
        """Stop forwarding ``direction`` (``to_server`` or ``to_client``): the
        bytes wait in the proxy until resume(), or are lost with drop_all()."""
        self._flowing[direction].clear()

    def resume(self) -> None:
        """Let every direction flow again."""
        for event in self._flowing.values():
            event.set()

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
    """Run a throw-away server in the foreground: ``python -m nodepool.testing.zkserver``
    (``--ensemble`` for three servers)."""
    import argparse
    import signal
    import tempfile
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, default=0, help="client port (0: free)")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--ensemble", action="store_true",
                        help="a three-server ensemble (free ports)")
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="zk-")
    server: ZooKeeperServerProcess | ZooKeeperEnsemble
    if args.ensemble:
        server = ZooKeeperEnsemble(workdir)
        server.start()
        print(f"ZooKeeper ensemble listening on {server.hosts} (modes "
              f"{server.modes()}, data in {workdir})", flush=True)
    else:
        server = ZooKeeperServerProcess(workdir)
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
