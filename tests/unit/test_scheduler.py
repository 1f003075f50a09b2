"""Scheduling decisions and quota arithmetic, without ZooKeeper."""

import math

from nodepool.config.model import Pool, PoolLabel, Provider, TenantLimits
from nodepool.launcher import scheduler
from nodepool.launcher.quota import UsageIndex, pool_limits, tenant_limits
from nodepool.resources import Resources
from nodepool.zk.records import Node, NodeRequest, PoolComponent


def req(rid, requestor="zuul", rel=0, labels=("a",), declined=(), provider=None):
    return NodeRequest(id=rid, requestor=requestor, relative_priority=rel,
                       node_types=list(labels), declined_by=list(declined),
                       provider=provider)


def test_order_keeps_upstream_order_for_one_requestor():
    requests = [req("200-0000000003"), req("100-0000000009"), req("200-0000000001", rel=1),
                req("200-0000000002")]
    assert [r.id for r in scheduler.order_requests(requests)] == [
        "100-0000000009", "200-0000000002", "200-0000000003", "200-0000000001"]


def test_order_interleaves_requestors_so_a_burst_cannot_starve_others():
    burst = [req(f"200-{i:010d}", requestor="busy") for i in range(5)]
    late = req("200-0000000099", requestor="quiet")
    ordered = [r.id for r in scheduler.order_requests(burst + [late])]
    assert ordered.index(late.id) == 1  # second, not sixth
    # Precedence still wins over fairness.
    urgent = req("100-0000000100", requestor="busy")
    assert scheduler.order_requests(burst + [late, urgent])[0] is urgent


def component(cid, labels, priority=100, paused=False, provider="p"):
    return PoolComponent(id=cid, supported_labels=list(labels), priority=priority,
                         paused=paused, provider_name=provider)


def test_candidates_and_skip_reasons():
    me = component("me", ["a", "b"])
    better = component("better", ["a"], priority=50)
    other_provider = component("op", ["a"], provider="q")
    request = req("200-0000000001", labels=["a"])
    candidates = scheduler.candidate_pools(request, [me, better, other_provider])
    assert {c.id for c in candidates} == {"me", "better", "op"}
    assert "higher-priority" in scheduler.skip_reason(request, me, {"a", "b"}, candidates)
    better.paused = True  # a paused pool is not waited for
    assert scheduler.skip_reason(request, me, {"a", "b"}, candidates) is None
    preferring = req("200-0000000002", provider="q")
    assert "prefers provider" in scheduler.skip_reason(
        preferring, me, {"a", "b"}, scheduler.candidate_pools(preferring, [me, other_provider]))
    declined = req("200-0000000003", declined=["me"])
    assert me not in scheduler.candidate_pools(declined, [me])


def test_decline_reasons():
    pool = Pool(name="main", max_servers=2, max_cores=8,
                labels={"a": PoolLabel(name="a"), "b": PoolLabel(name="b")})
    provider = Provider(name="p", driver="fake", pools={"main": pool})
    quota = {"a": Resources({"cores": 4, "instances": 1}),
             "b": Resources({"cores": 4, "instances": 1})}

    def reason(labels, images=True, cloud=None):
        return scheduler.decline_reason(req("200-0000000001", labels=labels), provider,
                                        pool, lambda label: images, quota.get, cloud)
    assert reason(["a", "b"]) is None
    assert "not available" in reason(["c"])
    assert "images" in reason(["a"], images=False)
    assert "pool's quota" in reason(["a", "a", "b"])  # 12 cores > 8, 3 > 2 servers
    assert "cloud's quota" in reason(["a"], cloud=Resources({"cores": 2}))
    pool.max_servers = 0
    assert "disabled" in reason(["a"])


def test_all_declined_rule():
    pools = [component("x", ["a"]), component("y", ["a"])]
    assert not scheduler.all_declined(req("200-0000000001", declined=["x"]), pools)
    assert scheduler.all_declined(req("200-0000000001", declined=["x", "y", "z"]), pools)


def test_quota_arithmetic():
    limit = pool_limits(Pool(name="p", max_servers=3, max_ram=1000))
    assert limit.get_amount("cores") == math.inf
    room = limit.copy().subtract({"instances": 2, "ram": 600, "cores": 50})
    assert room.fits({"instances": 1, "ram": 400})
    assert not room.fits({"instances": 1, "ram": 401})
    assert room.exceeded({"instances": 2, "ram": 10}) == ["instances"]
    tenant = tenant_limits(TenantLimits("acme", {"instances": 1, "cores": 4}))
    assert not tenant.copy().subtract({"instances": 1}).fits({"instances": 1})


def test_usage_index_follows_node_changes():
    index = UsageIndex()
    node = Node(id="1", provider="p", pool="main", tenant_name="acme", state="ready",
                resources={"cores": 4, "instances": 1})
    index.update(node, "1")
    assert index.pool_usage("p", "main") == {"cores": 4, "instances": 1}
    assert [n.id for n in index.idle_nodes("p", "main")] == ["1"]
    node.allocated_to = "200-0000000001"
    index.update(node, "1")
    assert index.idle_nodes("p", "main") == []
    assert index.tenant_usage()["acme"]["cores"] == 4
    index.update(None, "1")
    assert index.provider_usage("p") == {"cores": 0, "instances": 0}


def test_the_label_index_finds_exactly_the_pools_offering_every_label():
    import random
    rng = random.Random(7)
    labels = [f"l{i}" for i in range(30)]
    components = [PoolComponent(id=f"pool-{i}", provider_name=f"p{i % 4}",
                                supported_labels=rng.sample(labels, rng.randint(0, 8)))
                  for i in range(40)]
    directory = scheduler.PoolDirectory(components)
    for _ in range(300):
        wanted = rng.sample(labels, rng.randint(0, 3))
        declined = [c.id for c in rng.sample(components, rng.randint(0, 5))]
        request = NodeRequest(state="requested", node_types=wanted, declined_by=declined)
        expected = [c for c in components
                    if c.id not in declined and set(wanted) <= set(c.supported_labels)]
        assert directory.candidates(request) == expected, (wanted, declined)


def test_remembered_candidates_follow_each_requests_declines(monkeypatch):
    monkeypatch.setattr(scheduler, "MEMO_LIMIT", 3)
    components = [PoolComponent(id=f"pool-{i}", provider_name="p",
                                supported_labels=["a", "b"]) for i in range(3)]
    directory = scheduler.PoolDirectory(components)
    fresh = NodeRequest(state="requested", node_types=["a"])
    declined = NodeRequest(state="requested", node_types=["a"], declined_by=["pool-1"])
    for _ in range(2):
        assert [c.id for c in directory.candidates(fresh)] == ["pool-0", "pool-1", "pool-2"]
        assert [c.id for c in directory.candidates(declined)] == ["pool-0", "pool-2"]
    # A decline added to the same request object counts at once.
    fresh.declined_by.append("pool-0")
    assert [c.id for c in directory.candidates(fresh)] == ["pool-1", "pool-2"]
    # Past the limit the memory starts over, still right.
    for label_set in (["b"], ["a", "b"], ["b", "a"]):
        request = NodeRequest(state="requested", node_types=label_set)
        assert len(directory.candidates(request)) == 3
    assert [c.id for c in directory.candidates(declined)] == ["pool-0", "pool-2"]
