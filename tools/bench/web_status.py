"""Benchmark: every status web page with a full ZooKeeper.

Starts a throw-away ZooKeeper, fills it (nodepool.testing.status_fill: by
default 1000 nodes in every state, 100 node requests as Zuul and launchers
write them, 100 builds with their uploads, 20 pool registrations), starts a
launcher (no providers of its own, so it leaves the records alone) with its
status web server, and fetches every page as a table and as JSON, printing
the status code, the number of rows and the time of the first fetch and of
the median of ``--runs`` fetches made after the one-second response cache
expired (so each is rendered anew); then the thread count with 300 idle
connections open, and a page fetched meanwhile.

    .venv/bin/python tools/bench/web_status.py --nodes 1000 --requests 100
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import urllib.error
import urllib.request

from nodepool.testing.status_fill import fill
from nodepool.testing.zkserver import ZooKeeperServerProcess
from nodepool.zk.client import ZooKeeperClient
from nodepool.zk.store import Store

PAGES = ["/node-list", "/request-list", "/label-list", "/image-list",
         "/dib-image-list", "/image-status"]


def fetch(port: int, path: str) -> tuple[int, bytes, float]:
    start = time.monotonic()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=60) as r:
            code, body = r.status, r.read()
    except urllib.error.HTTPError as error:
        code, body = error.code, error.read()
    return code, body, (time.monotonic() - start) * 1000


def rows_of(path: str, body: bytes) -> int:
    if path.endswith(".json"):
        return len(json.loads(body))
    # A table: border, header, border, rows..., border.
    return max(0, len(body.decode().splitlines()) - 4)


def caches_hold(launcher, nodes: int, requests: int, uploads: int) -> bool:
    return (len(launcher.nodes.nodes()) >= nodes
            and len(launcher.requests.requests()) >= requests
            and len(launcher.images.uploads()) >= uploads)


def idle_connections(port: int, count: int = 300) -> None:
    """Threads of this process before and with ``count`` idle connections,
    and a page fetched while they stay open."""
    import socket
    import threading
    before = threading.active_count()
    socks = [socket.create_connection(("127.0.0.1", port), timeout=30)
             for _ in range(count)]
    try:
        code, _, ms = fetch(port, "/request-list.json")
        print(f"{count} idle connections: threads {before} -> "
              f"{threading.active_count()}; /request-list.json {code} in {ms:.1f} ms")
    finally:
        for sock in socks:
            sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--builds", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    from nodepool.launcher.launcher import Launcher
    workdir = tempfile.mkdtemp(prefix="nodepool-web-bench-")
    server = ZooKeeperServerProcess(workdir)
    server.start()
    client = launcher = None
    try:
        client = ZooKeeperClient(server.hosts + "/bench", timeout=10)
        client.connect(timeout=15)
        start = time.monotonic()
        filled = fill(Store(client), nodes=args.nodes, requests=args.requests,
                      builds=args.builds)
        print(f"filled {len(filled.node_ids)} nodes, {len(filled.request_ids)} "
              f"requests, {len(filled.builds)} builds, {len(filled.uploads)} uploads "
              f"in {time.monotonic() - start:.1f} s")
        config = os.path.join(workdir, "nodepool.yaml")
        with open(config, "w") as out:
            out.write(f"zookeeper-servers:\n  - host: 127.0.0.1\n    port: {server.port}\n"
                      "    chroot: /bench\nlabels: []\nproviders: []\n")
        launcher = Launcher(config, webapp=True, webapp_port=0)
        launcher.start(connect_timeout=15)
        deadline = time.monotonic() + 60
        while not caches_hold(launcher, len(filled.node_ids), len(filled.request_ids),
                              len(filled.uploads)):
            if time.monotonic() > deadline:
                raise SystemExit("the launcher's caches did not load in 60 s")
            time.sleep(0.1)
        port = launcher.webapp.port
        print(f"{'page':<22} {'code':>4} {'rows':>5} {'bytes':>8} {'first ms':>9} "
              f"{'median ms':>10}")
        for page in PAGES:
            for path in (page, page + ".json"):
                time.sleep(1.1)  # past the response cache
                code, body, first = fetch(port, path)
                times = []
                for _ in range(args.runs):
                    time.sleep(1.1)
                    times.append(fetch(port, path)[2])
                print(f"{path:<22} {code:>4} {rows_of(path, body):>5} {len(body):>8} "
                      f"{first:>9.1f} {statistics.median(times):>10.1f}")
        idle_connections(port)
        filled.release()
    finally:
        if launcher is not None:
            launcher.stop()
        if client is not None:
            client.disconnect()
        server.stop()


if __name__ == "__main__":
    main()
