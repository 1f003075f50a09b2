"""Launcher gauges received as real UDP statsd packets."""

from conftest import wait_until
from launcher_fixtures import FAKE_PROVIDER

CONFIG = ("labels:\n  - name: small\n    min-ready: 1\n"
          "tenant-resource-limits:\n  - tenant-name: acme.org\n    max-cores: 8\n"
          "providers:" + FAKE_PROVIDER)


def last_value(statsd, key):
    values = [p.split(":", 1)[1].split("|")[0] for p in list(statsd.packets)
              if p.split(":", 1)[0] == key]
    return float(values[-1]) if values else None


def test_gauges_from_one_elected_reporter(env, statsd, zuul):
    path = env.config(CONFIG)
    first = env.start(path)
    second = env.start(path)
    wait_until(lambda: last_value(statsd, "nodepool.nodes.ready") == 1, timeout=20,
               message="one ready node reported")
    # A report spans several datagrams: wait for its last gauge too.
    wait_until(lambda: last_value(statsd, "nodepool.tenant_limits.acme_org.cores")
               is not None, timeout=10, message="the whole report received")
    assert [first.reporter.leader, second.reporter.leader].count(True) == 1
    # Zero-filled states, per provider and label, as dashboards expect.
    assert last_value(statsd, "nodepool.nodes.hold") == 0
    assert last_value(statsd, "nodepool.provider.fake-cloud.nodes.ready") == 1
    assert last_value(statsd, "nodepool.label.small.nodes.building") == 0
    assert last_value(statsd, "nodepool.provider.fake-cloud.max_servers") == 5
    assert last_value(statsd, "nodepool.tenant_limits.acme_org.cores") == 8
    zuul.submit(["nothing-here"])
    zuul.submit(["small"])
    wait_until(lambda: last_value(
        statsd, "nodepool.provider.fake-cloud.pool.main.addressable_requests") is not None,
        timeout=10, message="addressable requests")
    assert any(k.startswith("nodepool.launcher.") and k.endswith(
        ".zk.client.connection_queue") for k in statsd.keys())
    # The leader goes; the other launcher takes over the global gauges.
    leader, other = (first, second) if first.reporter.leader else (second, first)
    leader.stop()
    wait_until(lambda: other.reporter.leader, timeout=20, message="re-elected")
