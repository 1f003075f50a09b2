"""A pool's assignment decisions, without ZooKeeper or a cloud."""

from nodepool.launcher.assign import AssignmentPass, Room, Verdict
from nodepool.resources import UNLIMITED, Resources, limits
from nodepool.zk.records import MIN_READY_REQUESTOR, Node, NodeRequest

NEEDS = {"a": Resources({"instances": 1, "cores": 2}),
         "b": Resources({"instances": 1, "cores": 4})}


def request(rid, *labels, tenant=None, requestor="zuul", reuse=True):
    return NodeRequest(id=rid, node_types=list(labels), tenant_name=tenant,
                       requestor=requestor, reuse=reuse)


def ready(nid, label, age):
    return Node(id=nid, type=[label], state="ready", state_time=1000.0 - age)


def make_pass(instances=10, cloud=None, reusable=None, **room):
    pool = limits({"instances": instances, "cores": None})
    return AssignmentPass(
        Room(pool=pool, cloud=cloud, **room), reusable or {},
        lambda label: NEEDS[label].copy())


def test_ready_nodes_are_claimed_oldest_first_and_only_the_rest_is_launched():
    old, new = ready("1", "a", age=100), ready("2", "a", age=1)
    assignment = make_pass(reusable={"a": [new, old]})  # oldest last, as the pool sorts
    decision = assignment.offer(request("r1", "a", "a", "b"), None)
    assert decision.verdict == Verdict.ACCEPT
    assert decision.claims == [old, new, None]
    assert decision.need == NEEDS["b"]
    assert assignment.room.pool.get_amount("instances") == 9
    assert assignment.room.launches == 1


def test_a_deferred_request_keeps_its_claim_so_smaller_ones_cannot_overtake():
    assignment = make_pass(instances=2)
    assert assignment.offer(request("r1", "a", "a", "a"), None).verdict == Verdict.DEFER
    # One instance would fit in an empty pool, but the first request claimed
    # the pool's room: the second waits behind it.
    assert assignment.offer(request("r2", "a"), None).verdict == Verdict.DEFER
    assert assignment.deferred == 2 and assignment.short_of_quota


def test_a_deferred_request_gives_its_ready_nodes_back():
    node = ready("1", "a", age=5)
    assignment = make_pass(instances=0, reusable={"a": [node]})
    assert assignment.offer(request("r1", "a", "b"), None).verdict == Verdict.DEFER
    decision = assignment.offer(request("r2", "a"), None)
    assert decision.verdict == Verdict.ACCEPT and decision.claims == [node]


def test_a_request_that_does_not_reuse_never_gets_ready_nodes():
    assignment = make_pass(reusable={"a": [ready("1", "a", age=5)]})
    decision = assignment.offer(request("r1", "a", reuse=False), None)
    assert decision.claims == [None] and len(assignment.reusable["a"]) == 1


def test_decline_reasons_pass_through_and_take_nothing():
    assignment = make_pass(instances=1)
    decision = assignment.offer(request("r1", "a"), "images are not available")
    assert decision.verdict == Verdict.DECLINE
    assert decision.reason == "images are not available"
    assert assignment.room.pool.get_amount("instances") == 1


def test_until_the_cloud_answers_only_ready_nodes_serve():
    node = ready("1", "a", age=5)
    assignment = make_pass(reusable={"a": [node]})
    # Not every label has a ready node: deferred, and nothing stays claimed.
    assert assignment.offer(request("r1", "a", "a"), None,
                            cloud_unanswered=True).verdict == Verdict.DEFER
    assert assignment.reusable["a"] == [node]
    decision = assignment.offer(request("r2", "a"), None, cloud_unanswered=True)
    assert decision.verdict == Verdict.ACCEPT and decision.claims == [node]
    assert decision.need == Resources()


def test_unknown_cloud_limits_block_launches_but_not_ready_nodes_nor_room_making():
    node = ready("1", "a", age=5)
    assignment = make_pass(limits_known=False, reusable={"a": [node]})
    assert assignment.offer(request("r1", "b"), None).verdict == Verdict.DEFER
    assert assignment.offer(request("r2", "a"), None).claims == [node]
    assert not assignment.short_of_quota


def test_cloud_room_counts_as_well_as_the_pool():
    assignment = make_pass(cloud=Resources({"cores": 5}, default=UNLIMITED))
    assert assignment.offer(request("r1", "b"), None).verdict == Verdict.ACCEPT
    assert assignment.offer(request("r2", "a"), None).verdict == Verdict.DEFER


def test_a_driver_without_launches_defers_without_claiming_quota():
    assignment = make_pass(instances=1, can_launch=False)
    assert assignment.offer(request("r1", "a"), None).verdict == Verdict.DEFER
    assert assignment.room.pool.get_amount("instances") == 1
    assert not assignment.short_of_quota


def test_max_concurrency_counts_launches_in_progress():
    assignment = make_pass(launches=2, max_concurrency=3)
    assert assignment.offer(request("r1", "a"), None).verdict == Verdict.ACCEPT
    assert assignment.offer(request("r2", "a"), None).verdict == Verdict.DEFER


def test_tenant_limits_count_what_this_pass_accepted():
    assignment = make_pass(tenant_limits={"t": limits({"instances": 1})})
    assert assignment.offer(request("r1", "a", tenant="t"), None).verdict == Verdict.ACCEPT
    assert assignment.offer(request("r2", "a", tenant="t"), None).verdict == Verdict.DEFER
    assert assignment.offer(request("r3", "a", tenant="u"), None).verdict == Verdict.ACCEPT


def test_min_ready_never_asks_for_room_to_be_made():
    assignment = make_pass(instances=0)
    decision = assignment.offer(request("r1", "a", requestor=MIN_READY_REQUESTOR), None)
    assert decision.verdict == Verdict.DEFER and not assignment.short_of_quota


def test_relaunch_takes_quota_when_it_fits_and_claims_it_when_it_does_not():
    assignment = make_pass(instances=1)
    assert assignment.relaunch(["a"]) == NEEDS["a"]
    assert assignment.room.launches == 1
    assert assignment.relaunch(["a"]) is None
    assert assignment.short_of_quota and assignment.deferred == 1
    assert assignment.room.pool.get_amount("instances") == -1
