"""The scale bench's population (status_fill.fill_population) stays as
written under a launcher that serves its pool: the nodes a launcher would
reclaim are locked by the filler's session, the others are in states it
leaves alone, and the open requests wait on a pool at max-servers."""

from launcher_fixtures import FAKE_PROVIDER

from conftest import wait_until
from nodepool.testing.status_fill import Member, fill_open_requests, fill_population
from nodepool.zk.records import NodeState, RequestState

# States a launcher leaves alone in an unlocked node.
UNLOCKED = {NodeState.READY, NodeState.HOLD, NodeState.TESTING}


def test_population_stays_as_written(env, store):
    # The ready node is of a label nobody asks for, as the bench's are.
    members = [Member(state, "fake-cloud", "main",
                      "other" if state == NodeState.READY else "small",
                      locked=state not in UNLOCKED) for state in NodeState.ALL]
    ids = fill_population(store, members, {"instances": 1})
    # Eleven nodes in a pool of max-servers 5: the requests must wait.
    request_ids = fill_open_requests(store, ["small"], 3)
    launcher = env.start(env.config("labels:\n  - name: small\nproviders:" +
                                    FAKE_PROVIDER))
    wait_until(lambda: len(launcher.nodes.nodes()) == len(ids), timeout=30,
               message="nodes cached")
    # What the periodic sweeps would do, now rather than on their timers.
    for node in launcher.nodes.nodes():
        launcher.delete_worker.consider(node)
    launcher.cleanup.run_once()
    env.settle()

    nodes = {node.id: node for node in store.get_nodes(ids)}
    assert [nodes[i].state for i in ids] == [m.state for m in members]
    assert [launcher.nodes.is_locked(i) for i in ids] == [m.locked for m in members]
    ready = nodes[ids[list(NodeState.ALL).index(NodeState.READY)]]
    assert ready.allocated_to is None and ready.resources == {"instances": 1}
    assert ready.pool == "main" and ready.type == ["other"]
    assert [store.get_request(r).state for r in request_ids] == \
        [RequestState.REQUESTED] * 3
