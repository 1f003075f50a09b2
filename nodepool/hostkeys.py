"""Waiting for a new host to answer and reading its SSH host keys (the
"nodescan"), for launched instances and static hosts alike."""

from __future__ import annotations

import logging
import socket
import time
from concurrent.futures import ThreadPoolExecutor

from nodepool.drivers.base import LaunchKeyscanError

log = logging.getLogger("nodepool.hostkeys")

# Scans block on the network; they run here, never on a shared loop.
scan_pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="nodescan")


def scan_host_keys(ip: str, port: int, timeout: float, connection_type: str,
                   gather_keys: bool = True) -> list[str]:
    """Wait for the host to answer, then collect its SSH host keys.

    Blocking; runs on the nodescan executor.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((ip, port), timeout=min(
                    10.0, max(0.1, deadline - time.monotonic()))):
                pass
            break
        except OSError as exc:
            last_error = exc
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    else:
        raise LaunchKeyscanError(f"{ip}:{port} did not answer within {timeout}s: "
                                 f"{last_error}")
    if not gather_keys or connection_type not in ("ssh", "network_cli"):
        return []
    import paramiko
    keys = []
    for key_type in ("ssh-ed25519", "ecdsa-sha2-nistp256", "rsa-sha2-512"):
        sock = None
        transport = None
        try:
            sock = socket.create_connection((ip, port), timeout=10)
            transport = paramiko.Transport(sock)
            opts = transport.get_security_options()
            opts.key_types = [key_type]
            transport.start_client(timeout=max(1.0, deadline - time.monotonic()))
            key = transport.get_remote_server_key()
            keys.append(f"{key.get_name()} {key.get_base64()}")
        except Exception as exc:
            log.debug("No %s host key from %s:%s: %s", key_type, ip, port, exc)
        finally:
            if transport is not None:
                transport.close()
            if sock is not None:
                sock.close()
    if not keys:
        raise LaunchKeyscanError(f"no SSH host key could be read from {ip}:{port}")
    return keys
