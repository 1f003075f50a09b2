"""The launcher's status web server, fetched over HTTP on loopback."""

import email.utils
import json
import urllib.error
import urllib.request

from conftest import wait_until
from launcher_fixtures import FAKE_PROVIDER, add_upload

from nodepool.web.server import wants_json


def fetch(launcher, path, accept=None, headers=None):
    request = urllib.request.Request(f"http://127.0.0.1:{launcher.webapp.port}{path}",
                                     headers=dict(headers or {}))
    if accept:
        request.add_header("Accept", accept)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read().decode()


def start(env):
    path = env.config("labels:\n  - name: small\nproviders:" + FAKE_PROVIDER)
    return env.start(path, webapp=True, webapp_port=0)


def test_node_and_request_lists(env, zuul):
    launcher = start(env)
    request_id = zuul.submit(["small"])
    node_id = zuul.wait_for_request(request_id)["nodes"][0]
    zuul.lock_node(node_id)
    wait_until(lambda: launcher.nodes.is_locked(node_id), message="lock seen")
    code, headers, body = fetch(launcher, "/node-list.json")
    assert code == 200 and headers["Content-Type"] == "application/json"
    [row] = json.loads(body)
    assert row["id"] == node_id and row["locked"] == "locked"
    assert row["label"] == ["small"] and row["allocated_to"] == request_id
    # Every column of upstream's JSON, and ours: who drives the node now.
    assert len(row) == 22 and row["driven_by"] is None
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert headers["Cache-Control"] == "public, max-age=1"
    modified = email.utils.parsedate_to_datetime(headers["Last-Modified"])
    expires = email.utils.parsedate_to_datetime(headers["Expires"])
    assert (expires - modified).total_seconds() == 1
    # Content negotiation and the node_id filter.
    code, headers, body = fetch(launcher, f"/node-list?node_id={node_id}",
                                accept="application/json")
    assert json.loads(body)[0]["id"] == node_id
    assert json.loads(fetch(launcher, "/node-list?node_id=0000099999",
                            accept="application/json")[2]) == []
    code, headers, table = fetch(launcher, "/node-list?fields=id,state")
    assert headers["Content-Type"] == "text/plain; charset=UTF-8"
    assert table.splitlines()[1].split("|")[1:3] == [" ID         ", " State "]
    assert node_id in table
    # A conditional GET inside the cache second is answered 304.
    code, _, _ = fetch(launcher, "/node-list?fields=id,state",
                       headers={"If-Modified-Since": headers["Last-Modified"]})
    assert code == 304
    requests = json.loads(fetch(launcher, "/request-list.json")[2])
    assert [r["id"] for r in requests] == [request_id]
    assert requests[0]["state"] == "fulfilled"


def test_label_image_lists_and_ready(env, store):
    launcher = start(env)
    code, _, body = fetch(launcher, "/ready")
    assert (code, body) == (200, "OK\n")
    wait_until(lambda: json.loads(fetch(launcher, "/label-list.json")[2]) ==
               [{"label": "small"}], message="label listed")
    upload = add_upload(store, "ubuntu", "fake-cloud")
    store.pause_image("ubuntu")
    store.request_build("ubuntu")
    wait_until(lambda: launcher.images.uploads("ubuntu"), message="upload cached")
    wait_until(lambda: launcher.images.flags("ubuntu").build_requested_at,
               message="request cached")
    [image] = json.loads(fetch(launcher, "/image-list.json")[2])
    assert (image["id"], image["upload_id"], image["provider"], image["external_id"],
            image["state"]) == (upload.build_id, upload.id, "fake-cloud",
                                upload.external_id, "ready")
    assert isinstance(image["age"], int)
    [build] = json.loads(fetch(launcher, "/dib-image-list.json")[2])
    assert build["id"] == f"ubuntu-{upload.build_id}" and build["state"] == "paused"
    [status] = json.loads(fetch(launcher, "/image-status.json")[2])
    assert status["paused"] is True and status["build_request"] == "pending"
    table = fetch(launcher, "/dib-image-list")[2]
    assert "| ID " in table and f"ubuntu-{upload.build_id}" in table
    assert fetch(launcher, "/nothing-here")[0] == 404


def test_ready_is_503_until_the_launcher_runs(env):
    launcher = start(env)
    launcher.ready.clear()
    code, _, body = fetch(launcher, "/ready")
    assert code == 503
    launcher.ready.set()
    assert fetch(launcher, "/ready")[0] == 200


def test_content_negotiation():
    assert not wants_json(None) and not wants_json("*/*")
    assert wants_json("application/json")
    assert not wants_json("text/html,application/json;q=0.9")
    assert wants_json("text/plain;q=0.5, application/json")
    assert not wants_json("text/plain, application/json")  # tie: table
