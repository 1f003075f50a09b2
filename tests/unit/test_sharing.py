"""Rendezvous ownership of work among launchers sharing a provider pool,
the records' additions that carry it, and the capacity-error policy."""

import json

from nodepool.launcher import capacity
from nodepool.launcher.sharing import Membership, owner, split_candidates
from nodepool.zk.capacity import CapacityEntry
from nodepool.zk.records import Node, NodeRequest, PoolComponent, Progress


def pool(launcher, provider="cloud", name="main", pool_id=None):
    component = PoolComponent(id=pool_id or f"{launcher}-{provider}-{name}",
                              provider_name=provider, name=name,
                              supported_labels=["small"])
    if launcher is not None:
        component.extra["launcher"] = launcher
    return component


def test_owner_is_the_same_everywhere_and_moves_little_on_join_and_leave():
    keys = [f"200-{i:010d}" for i in range(3000)]
    three = ["l1", "l2", "l3"]
    before = {k: owner(k, three) for k in keys}
    # Independent of the members' order (each launcher lists them its way).
    assert all(owner(k, list(reversed(three))) == before[k] for k in keys)
    shares = {m: sum(1 for o in before.values() if o == m) for m in three}
    assert all(800 < count < 1200 for count in shares.values()), shares
    # A fourth launcher takes about a quarter; the rest stays where it was.
    after = {k: owner(k, three + ["l4"]) for k in keys}
    moved = [k for k in keys if after[k] != before[k]]
    assert all(after[k] == "l4" for k in moved)
    assert 600 < len(moved) < 900
    # One leaving gives up only its own.
    two = {k: owner(k, ["l1", "l3"]) for k in keys}
    assert all(two[k] == before[k] for k in keys if before[k] != "l2")
    assert owner("x", []) is None


def test_one_pool_of_a_shared_provider_pool_owns_each_request():
    members = [pool("l1"), pool("l2"), pool("l3")]
    other = pool("l1", name="other")
    upstream = pool(None, pool_id="upstream-pool")
    for index in range(50):
        split = split_candidates(f"100-{index:010d}", members + [other, upstream])
        owned = {c.id for c, mine in split if mine}
        assert len(owned & {m.id for m in members}) == 1
        # Another pool, and an upstream launcher's pool, are not shared.
        assert {other.id, upstream.id} <= owned


def test_membership_lists_the_launchers_serving_each_pool():
    membership = Membership([pool("l1"), pool("l2"), pool("l2", name="b"),
                             pool(None, pool_id="up")])
    assert membership.serving("cloud", "main") == ["l1", "l2"]
    assert membership.serving("cloud") == ["l1", "l2"]
    assert membership.serving(None) == ["l1", "l2"]
    assert membership.serving("elsewhere", "main") == []
    assert membership.is_live("l1") and not membership.is_live("l9")
    assert membership.owns("l1", "k", "elsewhere")  # nobody else serves it
    owners = [m for m in ("l1", "l2") if membership.owns(m, "k", "cloud", "main")]
    assert len(owners) == 1


def test_progress_and_failed_providers_are_written_only_when_set():
    node = Node(id="0000000001", state="building", provider="cloud")
    plain = json.loads(node.to_json())
    assert "progress" not in plain and "failed_providers" not in plain
    progress = Progress(launcher="host-1234", step="machine", attempt=2,
                        started=1700000000.5, machine={"state": "building",
                                                       "external_id": "srv-1"})
    node.set_progress(progress)
    node.set_failed_providers(["cloud-a"])
    stored = json.loads(node.to_json())
    assert stored["progress"]["machine"] == {"state": "building",
                                             "external_id": "srv-1"}
    assert stored["failed_providers"] == ["cloud-a"]
    again = Node.from_json("0000000001", node.to_json())
    assert again.progress == progress and again.failed_providers == ["cloud-a"]
    node.set_progress(None)
    assert "progress" not in json.loads(node.to_json())


def test_a_malformed_progress_reads_as_none():
    for value in ("x", {"launcher": 5, "operation": "launch", "started": 1.0},
                  {"launcher": "l", "operation": "fly", "started": 1.0},
                  {"launcher": "l", "operation": "launch", "started": "soon"}):
        node = Node.from_json("1", json.dumps({"state": "building",
                                               "progress": value}))
        assert node.progress is None


def test_a_request_records_the_providers_that_failed_it():
    request = NodeRequest(id="200-0000000001", node_types=["a"])
    assert request.failed_providers == []
    request.add_failed_provider("cloud-a")
    request.add_failed_provider("cloud-a")
    assert json.loads(request.to_json())["failed_providers"] == ["cloud-a"]


def test_pool_components_name_their_launcher_beside_upstream_keys():
    component = pool("host-1")
    out = json.loads(component.to_json())
    assert out["launcher"] == "host-1" and out["provider_name"] == "cloud"
    assert pool(None).launcher is None


def test_a_flavor_is_avoided_after_repeated_capacity_errors():
    entry = CapacityEntry(provider="cloud", key="m1.large")
    for index in range(capacity.CAPACITY_ERRORS - 1):
        capacity.count_error(entry, "large", "l1", "No valid host", 100.0 + index)
        assert not entry.avoided(101.0 + index)
    capacity.count_error(entry, "large", "l1", "No valid host", 110.0)
    assert entry.avoided(111.0)
    assert entry.avoid_until == 110.0 + capacity.AVOID_SECONDS
    assert not entry.avoided(110.0 + capacity.AVOID_SECONDS + 1)
    assert not capacity.expired(entry, 111.0)
    late = 110.0 + capacity.AVOID_SECONDS + capacity.ERROR_WINDOW + 1
    assert capacity.expired(entry, late)
    # Errors far apart never add up.
    sparse = CapacityEntry(provider="cloud", key="m1.large")
    for index in range(5):
        capacity.count_error(sparse, "large", "l1", "quota",
                             index * (capacity.ERROR_WINDOW + 1))
    assert sparse.errors == 1 and sparse.avoid_until is None
    round_trip = CapacityEntry.from_json("cloud", "m1.large", entry.to_json(), 3)
    assert round_trip.errors == entry.errors and round_trip.labels == ["large"]
