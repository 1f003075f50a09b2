"""The status views the CLI and the web both print (nodepool.status)."""

import json

from nodepool import status
from nodepool.zk.image_records import ImageBuild, ImageFlags, ImageUpload
from nodepool.zk.records import Node, PoolComponent


class Images:
    """An ImageSource from lists, as the cache or the CLI's reads give them."""

    def __init__(self, builds, uploads, flags=(), building=()):
        self._builds = sorted(builds, key=lambda b: b.state_time, reverse=True)
        self._uploads = uploads
        self._flags = {f.image_name: f for f in flags}
        self._building = set(building)

    def image_names(self):
        return sorted({b.image_name for b in self._builds} | set(self._flags))

    def flags(self, image_name):
        return self._flags.get(image_name, ImageFlags(image_name))

    def is_building(self, image_name):
        return image_name in self._building

    def builds(self, image_name=None):
        return [b for b in self._builds if image_name in (None, b.image_name)]

    def uploads(self, image_name=None):
        return [u for u in self._uploads if image_name in (None, u.image_name)]


def build(image, build_id, when, state="ready"):
    return ImageBuild(image_name=image, id=build_id, state=state, state_time=when)


def upload(image, build_id, provider, upload_id):
    return ImageUpload(image_name=image, build_id=build_id, provider_name=provider,
                       id=upload_id, state="ready", state_time=50.0)


def test_images_by_name_then_build_age_not_build_id():
    builds = [build("ubuntu", "ffff", 10.0), build("ubuntu", "0000", 20.0),
              build("debian", "aaaa", 30.0)]
    uploads = [upload("ubuntu", "0000", "b-cloud", "0000000002"),
               upload("ubuntu", "0000", "a-cloud", "0000000003"),
               upload("ubuntu", "ffff", "a-cloud", "0000000001"),
               upload("debian", "aaaa", "a-cloud", "0000000001")]
    images = Images(builds, uploads, flags=[ImageFlags("ubuntu", paused=True)])
    assert [(r["image"], r["id"], r["provider"], r["upload_id"])
            for r in status.image_rows(images)] == [
        ("debian", "aaaa", "a-cloud", "0000000001"),
        ("ubuntu", "ffff", "a-cloud", "0000000001"),
        ("ubuntu", "0000", "a-cloud", "0000000003"),
        ("ubuntu", "0000", "b-cloud", "0000000002")]
    assert [(r["id"], r["state"]) for r in status.dib_image_rows(images)] == [
        ("debian-aaaa", "ready"), ("ubuntu-ffff", "paused"), ("ubuntu-0000", "paused")]


def test_build_request_states():
    builds = [build("ubuntu", "1", 100.0, state="building")]
    flags = [ImageFlags("ubuntu", build_requested_at=90.0),
             ImageFlags("debian", build_requested_at=None),
             ImageFlags("centos", build_requested_at=95.0)]
    images = Images(builds, [], flags=flags, building={"ubuntu", "centos"})
    rows = {r["image"]: r for r in status.image_status_rows(images)}
    assert rows["ubuntu"]["build_request"] == "building"
    assert rows["ubuntu"]["build_request_age"] == 90
    assert rows["debian"]["build_request"] is None
    # Locked, but no build started after the request: still pending.
    assert rows["centos"]["build_request"] == "pending"
    # A build older than the request does not count.
    assert status.build_request(images, "ubuntu", 150.0) == "pending"


def test_nodes_requests_and_labels():
    nodes = [(Node(id="0000000002", provider="p"), False),
             (Node(id="0000000001", provider="p"), True)]
    assert [r["id"] for r in status.node_rows(nodes)] == ["0000000001", "0000000002"]
    [row] = status.node_rows(nodes, node_id="0000000001")
    assert row["locked"] == "locked"
    pools = [PoolComponent(supported_labels=["small", "large"]),
             PoolComponent(supported_labels=["small"])]
    assert status.label_rows(pools) == [{"label": "large"}, {"label": "small"}]
    assert status.request_rows([]) == []


def test_views_order_records_with_empty_or_odd_fields():
    """Records built in-process (not decoded) may carry None or a type the
    wire would not: every view still sorts them, the same way each time."""
    from nodepool.zk.records import NodeRequest
    requests = [NodeRequest(id="200-0000000003", relative_priority=None),
                NodeRequest(id="100-0000000009", relative_priority=2),
                NodeRequest(id=None, relative_priority=1),
                NodeRequest(id="100-0000000004", relative_priority=2),
                NodeRequest(id="100-0000000005", relative_priority=0)]
    assert [r["id"] for r in status.request_rows(requests)] == [
        None, "100-0000000005", "100-0000000004", "100-0000000009", "200-0000000003"]
    # Well-typed records keep the launchers' order exactly.
    typed = [r for r in requests if r.id and r.relative_priority is not None]
    assert [r["id"] for r in status.request_rows(typed)] == \
        [r.id for r in sorted(typed, key=NodeRequest.sort_key)]
    nodes = [(Node(id="0000000002"), False), (Node(id=None), False)]
    assert [r["id"] for r in status.node_rows(nodes)] == [None, "0000000002"]
    pools = [PoolComponent(supported_labels=["b", None, "a"]), PoolComponent()]
    assert status.label_rows(pools) == [{"label": "a"}, {"label": "b"}]
    builds = [ImageBuild(image_name="u", id=None, state="ready", state_time=None),
              build("u", "b1", 10.0)]
    images = Images([], [])
    images._builds = builds  # (the helper's own sort would trip on None)
    assert [(r["id"], r["age"]) for r in status.dib_image_rows(images)] == \
        [("u-None", 0), ("u-b1", 10)]
    uploads = [ImageUpload(image_name="u", build_id="b1", provider_name="p", id=None,
                           state="uploading", state_time=None),
               upload("u", "b1", "p", "0000000001")]
    assert [r["upload_id"] for r in status.image_rows(Images(builds[1:], uploads))] \
        == [None, "0000000001"]
    # Values the wire would not give still print and serialise.
    node = Node(id="0000000003", driver_data={1: "a", "b": 2}, external_id=object())
    [row] = status.node_rows([(node, False)])
    assert status.render_table(status.NODE_COLUMNS, [row]).count("\n") == 4
    assert json.loads(status.render_json([row]))[0]["driver_data"] == {"1": "a", "b": 2}
