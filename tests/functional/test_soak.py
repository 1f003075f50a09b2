"""The reliability soak, shortened: every fault kind at least once in about
two minutes, and every invariant checked (tools/soak.py, doc/soak.rst); the
same against a three-server ZooKeeper ensemble; and the soak's Zuul-role
client returning nodes through ZooKeeper restarts and an expired session."""

import os
import re
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _soak(*options: str) -> tuple[subprocess.CompletedProcess, str]:
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "soak.py"), *options],
        capture_output=True, text=True, timeout=600)
    verdict = [line for line in result.stdout.splitlines() if line.startswith("soak ")]
    assert verdict, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.returncode == 0, "\n".join(
        line for line in result.stdout.splitlines()
        if line.startswith(("soak ", "  violation")))
    return result, verdict[-1]


def _fault_counts(verdict: str) -> dict[str, str]:
    return dict(re.findall(r"([a-z0-9-]+)=(\d+)", verdict.split("faults:")[1]))


def test_short_soak_passes_with_every_fault_kind():
    _, verdict = _soak("--duration", "80", "--quiet", "15", "--fault-gap", "1.5", "3",
                       "--clients", "4", "--seed", "11")
    counts = _fault_counts(verdict)
    assert len(counts) == 12 and all(int(v) >= 1 for v in counts.values()), counts
    assert "leaks=0 stuck=0 duplicates=0 violations=0" in verdict


def test_short_ensemble_soak_passes_with_every_fault_kind():
    # 14 kinds. One round of faults takes at most about 50 s (expire-session
    # 9 s, a whole-ensemble restart up to ~9 s, a leader or follower kill up
    # to ~7 s each, cloud-slow 5 s, broken-config and stuck-build 3 s each,
    # a launcher or builder kill up to ~3.5 s each, the rest instant) plus
    # 13 gaps of at most 3 s = 39 s: the last kind of the first round starts
    # by ~90 s. The soak also never stops before its first round is done.
    _, verdict = _soak("--ensemble", "--duration", "90", "--quiet", "15",
                       "--fault-gap", "1.5", "3", "--clients", "4", "--seed", "13")
    counts = _fault_counts(verdict)
    assert {"kill-zk-leader", "kill-zk-follower", "zookeeper-restart"} <= set(counts)
    assert len(counts) == 14 and all(int(v) >= 1 for v in counts.values()), counts
    assert "leaks=0 stuck=0 duplicates=0 violations=0" in verdict


def test_short_shared_soak_passes_with_every_fault_kind():
    # Three launchers on one provider whose cloud quota is the pool's; 13
    # kinds, kills of one or two launchers among them. The node-record
    # watcher never saw more than the quota.
    _, verdict = _soak("--shared", "--duration", "80", "--quiet", "15",
                       "--fault-gap", "1.5", "3", "--clients", "4", "--seed", "17")
    counts = _fault_counts(verdict)
    assert {"kill-launcher", "kill-two-launchers"} <= set(counts)
    assert len(counts) == 13 and all(int(v) >= 1 for v in counts.values()), counts
    assert "leaks=0 stuck=0 duplicates=0 violations=0" in verdict
    peak, quota = re.search(r"quota-peak=(\d+)/(\d+)", verdict).groups()
    assert 0 < int(peak) <= int(quota)


CLIENT_CHECK = textwrap.dedent("""
    import json, logging, os, sys, tempfile, threading, time
    sys.path.insert(0, os.path.join(sys.argv[1], "tools"))  # the soak is a script
    import soak
    from kazoo.client import KazooClient
    from nodepool.testing.zkserver import TCPProxy, ZooKeeperServerProcess

    logging.getLogger("kazoo").setLevel(logging.ERROR)
    zk = ZooKeeperServerProcess(tempfile.mkdtemp(prefix="soak-client-"))
    zk.start()
    proxy = TCPProxy(zk.port)
    admin = KazooClient(hosts=zk.hosts)
    admin.start(timeout=15)
    try:
        for node_id in "123":
            admin.create(f"/nodepool/nodes/{node_id}", json.dumps(
                {"state": "ready", "allocated_to": "100-0000000001"}).encode(),
                makepath=True)
        zuul = soak.RetryingZuul(proxy.hosts, timeout=2)
        deadline = lambda: time.monotonic() + 60
        nodes = []
        for node_id in "123":
            assert zuul.lock_node_retrying(node_id, deadline())
            node = zuul.get_node_retrying(node_id, deadline())
            node["id"] = node_id
            nodes.append(node)
        zuul.use_retrying(nodes, deadline())

        def state(node_id):
            return json.loads(admin.get(f"/nodepool/nodes/{node_id}")[0])["state"]

        def locks(node_id):
            return admin.get_children(f"/nodepool/nodes/{node_id}/lock")

        assert [state(n) for n in "123"] == ["in-use"] * 3

        # ZooKeeper restarts while a node is returned.
        admin.stop()
        zk.stop()
        outcome = {}
        thread = threading.Thread(target=lambda: outcome.update(
            one=zuul.release_node(nodes[0], deadline())))
        thread.start()
        time.sleep(1.5)
        zk.start()
        admin.start(timeout=15)
        thread.join(90)
        assert outcome == {"one": "written"}, outcome
        assert state("1") == "used" and locks("1") == [], (state("1"), locks("1"))

        def expired(node_id):
            # The server has ended the client's session once the session's
            # lock on the node is gone (bounded wait; load can slow it).
            end = time.monotonic() + 30
            while locks(node_id) and time.monotonic() < end:
                time.sleep(0.1)
            assert locks(node_id) == [], "session not expired"

        # The client's session expires: its locks go with it; the node is
        # locked again, then written used.
        proxy.refusing = True
        proxy.drop_all()
        expired("2")
        proxy.refusing = False
        assert zuul.release_node(nodes[1], deadline()) == "written"
        # Relocked at least once (more if a retry meets the reconnection).
        assert (state("2"), locks("2"), zuul.relocked >= 1) == ("used", [], True), \
            (state("2"), locks("2"), zuul.relocked)

        # Lock lost and the node deleted meanwhile: nothing to do.
        proxy.refusing = True
        proxy.drop_all()
        time.sleep(3.5)
        proxy.refusing = False
        admin.delete("/nodepool/nodes/3", recursive=True)
        assert zuul.release_node(nodes[2], deadline()) == "gone"
        assert admin.exists("/nodepool/nodes/3") is None and not zuul._node_locks

        # A request submitted while ZooKeeper restarts is created once.
        admin.stop()
        zk.stop()
        outcome = {}
        thread = threading.Thread(target=lambda: outcome.update(
            request=zuul.submit_retrying(["small"], "100", deadline())))
        thread.start()
        time.sleep(1.5)
        zk.start()
        admin.start(timeout=15)
        thread.join(90)
        assert admin.get_children("/nodepool/requests") == [outcome["request"]]
        zuul.delete_request_retrying(outcome["request"], deadline())
        assert admin.get_children("/nodepool/requests") == []
        zuul.stop()
        print("client check ok")
    finally:
        admin.stop()
        proxy.stop()
        zk.stop()
""")


def test_soak_client_returns_nodes_through_zookeeper_faults():
    result = subprocess.run([sys.executable, "-c", CLIENT_CHECK, ROOT],
                            capture_output=True, text=True, timeout=300)
    assert "client check ok" in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]
