"""Every status page with a full ZooKeeper: 1000 nodes in every state (sparse
records, held, locked, a redacted port, a bare-string label), 100+ node
requests as Zuul and launchers write them, 100 builds and their uploads, 20
pool registrations. Each page answers 200, as a table and as JSON, with one
row per record, in the order the CLI prints."""

import json
import os
import subprocess
import sys

import pytest

from conftest import wait_until
from test_webapp import fetch

from nodepool import status
from nodepool.testing.status_fill import fill
from nodepool.zk.records import NodeRequest, NodeState

BIN = os.path.dirname(sys.executable)

NODES, REQUESTS, BUILDS = 1000, 120, 100


@pytest.fixture
def loaded(env, store):
    """A launcher with no providers of its own (so it leaves the records as
    written), its web server, and what was written."""
    filled = fill(store, nodes=NODES, requests=REQUESTS, builds=BUILDS)
    launcher = env.start(env.config("labels: []\nproviders: []\n"), webapp=True,
                         webapp_port=0)
    wait_until(lambda: len(launcher.nodes.nodes()) == NODES
               and len(launcher.requests.requests()) == REQUESTS
               and len(launcher.images.uploads()) == len(filled.uploads)
               and len(launcher.images.builds()) == BUILDS
               and all(launcher.nodes.is_locked(n) for n in filled.locked_node_ids)
               and len(launcher.components.pools()) == 20,
               timeout=60, message="caches loaded")
    yield launcher, filled
    filled.release()


def get_json(launcher, path):
    code, headers, body = fetch(launcher, path)
    assert code == 200, (path, body)
    assert headers["Content-Type"] == "application/json"
    return json.loads(body)


def table_rows(launcher, path, columns):
    """The rows of a text page, checked to be a well-formed table."""
    code, headers, body = fetch(launcher, path)
    assert code == 200, (path, body)
    assert headers["Content-Type"] == "text/plain; charset=UTF-8"
    lines = body.splitlines()
    width = len(lines[0])
    assert all(len(line) == width for line in lines), "ragged table"
    assert lines[0] == lines[2] == lines[-1] and set(lines[0]) == {"+", "-"}
    assert [h.strip() for h in lines[1].strip("|").split("|")] == [h for _, h in columns]
    return [[c.strip() for c in line[1:-1].split(" | ")] for line in lines[3:-1]]


def test_every_page_answers_every_row(loaded):
    launcher, filled = loaded
    expected = {
        "/node-list": (status.NODE_COLUMNS, NODES),
        "/request-list": (status.REQUEST_COLUMNS, REQUESTS),
        "/label-list": (status.LABEL_COLUMNS, len(filled.labels)),
        "/image-list": (status.IMAGE_COLUMNS, len(filled.uploads)),
        "/dib-image-list": (status.DIB_IMAGE_COLUMNS, BUILDS),
        "/image-status": (status.IMAGE_STATUS_COLUMNS, len(filled.images)),
    }
    assert set(expected) == set(launcher.webapp.routes)
    for path, (columns, count) in expected.items():
        rows = get_json(launcher, path + ".json")
        assert len(rows) == count, path
        assert all(list(row) == [key for key, _ in columns] for row in rows), path
        # The same through the Accept header, and as a table.
        code, headers, body = fetch(launcher, path, accept="application/json")
        assert code == 200 and json.loads(body) == rows, path
        assert len(table_rows(launcher, path, columns)) == count, path


def test_node_list_shows_sparse_held_and_locked_nodes(loaded):
    launcher, filled = loaded
    rows = get_json(launcher, "/node-list.json")
    assert [r["id"] for r in rows] == sorted(filled.node_ids)
    locked = {r["id"] for r in rows if r["locked"] == "locked"}
    assert locked == set(filled.locked_node_ids)
    assert {r["state"] for r in rows} == set(NodeState.ALL)
    held = [r for r in rows if r["state"] == NodeState.HOLD]
    assert held and all(r["hold_job"] for r in held)
    sparse = [r for r in rows if r["launcher"] is None]
    assert len(sparse) == NODES // 4
    assert all(r["server_id"] is None and r["pool"] is None for r in sparse)
    assert sum(r["connection_port"] == "redacted" for r in rows) == NODES // 50
    assert all(isinstance(r["label"], list) and len(r["label"]) == 1 for r in rows)
    # The table shows empty fields empty, never "None".
    table = table_rows(launcher, "/node-list", status.NODE_COLUMNS)
    assert len(table) == NODES and not any("None" in cell for row in table
                                           for cell in row)
    # Filters: one node, and chosen columns.
    node_id = filled.locked_node_ids[0]
    assert [r["id"] for r in get_json(launcher, f"/node-list.json?node_id={node_id}")] \
        == [node_id]
    columns = [c for c in status.NODE_COLUMNS if c[0] in ("id", "state", "locked")]
    table = table_rows(launcher, "/node-list?fields=id,state,locked", columns)
    assert len(table) == NODES and table[0][0] == min(filled.node_ids)


def test_request_list_in_launcher_order(loaded, store):
    launcher, filled = loaded
    rows = get_json(launcher, "/request-list.json")
    fresh = [store.get_request(i) for i in filled.request_ids]
    assert [r["id"] for r in rows] == \
        [r.id for r in sorted(fresh, key=NodeRequest.sort_key)]
    assert {r["id"][:3] for r in rows} == {"100", "200", "300", "900"}
    assert any(r["requestor"] is None for r in rows)
    assert any(r["event_id"] is None for r in rows)
    table = table_rows(launcher, "/request-list", status.REQUEST_COLUMNS)
    assert [row[0] for row in table] == [r["id"] for r in rows]


def test_image_pages(loaded):
    launcher, filled = loaded
    builds = get_json(launcher, "/dib-image-list.json")
    assert sorted(b["id"] for b in builds) == sorted(b.dib_id for b in filled.builds)
    paused = {b["image"] for b in builds if b["state"] == "paused"}
    assert paused == set(filled.paused_images)
    uploads = get_json(launcher, "/image-list.json")
    assert sorted(u["upload_id"] + u["id"] + u["provider"] for u in uploads) == \
        sorted(u.id + u.build_id + u.provider_name for u in filled.uploads)
    assert any(u["external_id"] is None for u in uploads)
    images = get_json(launcher, "/image-status.json")
    assert [i["image"] for i in images] == sorted(filled.images)
    assert {i["image"] for i in images if i["build_request"] == "pending"} == \
        set(filled.requested_images)
    labels = get_json(launcher, "/label-list.json")
    assert [label["label"] for label in labels] == sorted(filled.labels)


def test_cli_prints_the_same_requests(loaded, env):
    """``nodepool request-list`` shares the view: the same rows in the same
    order, from a fresh read of ZooKeeper."""
    launcher, filled = loaded
    config = env.config("labels: []\nproviders: []\n", name="cli.yaml")
    done = subprocess.run([os.path.join(BIN, "nodepool"), "-c", config,
                           "request-list", "--json"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    web = get_json(launcher, "/request-list.json")
    assert [r["id"] for r in json.loads(done.stdout)] == [r["id"] for r in web]
