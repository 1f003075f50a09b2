"""Record encoding: Zuul's JSON shapes in, the complete wire shape out."""

import json

import pytest

from nodepool.zk import paths
from nodepool.zk.image_records import ImageBuild, ImageUpload
from nodepool.zk.records import (
    Component, CorruptRecord, Node, NodeRequest, NodeState, PoolComponent, RequestState,
)

# Spec 2.1 example A: a request exactly as Zuul creates it.
ZUUL_REQUEST = {
    "requestor_data": {
        "build_set_uuid": "a1c4e0f7d2b94c1e8e3f5a6b7c8d9e0f", "tenant_name": "acme",
        "pipeline_name": "check", "job_uuid": "7d9e2b44c0a14f6e9b8a7c6d5e4f3a2b",
        "job_name": "unit-tests-py312", "span_info": None},
    "node_types": ["debian-bookworm", "debian-bookworm"],
    "requestor": "3e5a9c0b1d2f4e6a8b7c9d0e1f2a3b4c",
    "created_time": 1726601234.5521,
    "provider": None,
    "state": "requested",
    "state_time": 1726601234.5534,
    "relative_priority": 3,
    "event_id": "e5b1d07a2c9f43d8a61f0b2c3d4e5f60",
    "tenant_name": "acme",
}

# Keys Zuul's NodeRequest.fromDict indexes directly (spec 2.1), plus the rest
# of the launcher's complete field set.
REQUEST_KEYS = {"state", "state_time", "declined_by", "node_types", "nodes", "reuse",
                "requestor", "requestor_data", "provider", "relative_priority",
                "event_id", "created_time", "tenant_name"}

# Spec 2.2 example F: a node being built.
NODE_F = {
    "state": "building", "state_time": 1726601235.2240,
    "cloud": None, "provider": "cloud-a", "pool": "main",
    "type": ["debian-bookworm"], "allocated_to": "200-0000012345",
    "az": None, "region": None, "public_ipv4": None, "private_ipv4": None,
    "public_ipv6": None, "host_id": None, "interface_ip": None,
    "connection_port": 22, "ssh_port": 22,
    "image_id": "/nodepool/images/debian-bookworm/builds/"
                "5b2f0d0e4c1a4f7a9c3e2b1d0a9f8e7d/providers/cloud-a/images/0000000003",
    "launcher": "np-l1.example.org-PoolWorker.cloud-a-main-3f0a9c7e1b2d4c5e8f9a0b1c2d3e4f50",
    "created_time": 1726601235.2101,
    "external_id": "c8a3b7e2-6f1d-4e0a-9b3c-2d1e0f9a8b7c",
    "hostname": None, "comment": None, "user_data": None, "hold_job": None,
    "host_keys": [], "username": "zuul", "connection_type": "ssh",
    "shell_type": None, "hold_expiration": None,
    "resources": {"cores": 8, "instances": 1, "ram": 16384},
    "slot": None, "attributes": {"executor-zone": "dc1"},
    "python_path": "auto", "tenant_name": "acme", "driver_data": None,
    "requestor": "3e5a9c0b1d2f4e6a8b7c9d0e1f2a3b4c",
}


def test_zuul_request_loads_with_launcher_defaults():
    request = NodeRequest.from_json("200-0000012345", json.dumps(ZUUL_REQUEST))
    assert request.state == RequestState.REQUESTED
    assert request.node_types == ["debian-bookworm", "debian-bookworm"]
    assert request.declined_by == [] and request.nodes == []
    assert request.reuse is True
    assert request.relative_priority == 3
    assert request.tenant_name == "acme"
    assert request.requestor_data["job_name"] == "unit-tests-py312"
    assert request.priority == "200" and request.sequence == "0000012345"


def test_request_written_back_carries_every_key_and_preserves_requestor_data():
    request = NodeRequest.from_json("200-0000012345", json.dumps(ZUUL_REQUEST))
    request.set_state(RequestState.PENDING)
    out = json.loads(request.to_json())
    assert REQUEST_KEYS <= set(out)
    assert out["requestor_data"] == ZUUL_REQUEST["requestor_data"]
    assert out["state"] == "pending"
    assert out["state_time"] > ZUUL_REQUEST["state_time"]
    assert "id" not in out


def test_min_ready_request_writes_nulls_for_absent_values():
    # Spec example E: Zuul parses every request, so all keys must be present.
    request = NodeRequest(node_types=["debian-bookworm"], reuse=False,
                          requestor="NodePool:min-ready")
    out = json.loads(request.to_json())
    assert REQUEST_KEYS <= set(out)
    assert out["requestor_data"] is None and out["created_time"] is None
    assert out["reuse"] is False
    assert request.is_min_ready


def test_request_sort_order_is_precedence_relative_priority_sequence():
    def req(rid, rel):
        return NodeRequest(id=rid, relative_priority=rel)
    requests = [req("200-0000000001", 5), req("100-0000000009", 9),
                req("200-0000000002", 0), req("099-0000000010", 0),
                req("200-0000000000", 5)]
    ordered = [r.id for r in sorted(requests, key=NodeRequest.sort_key)]
    assert ordered == ["099-0000000010", "100-0000000009", "200-0000000002",
                       "200-0000000000", "200-0000000001"]


def test_zuul_node_shapes_load_and_round_trip():
    node = Node.from_json("0000000107", json.dumps(NODE_F))
    assert node.state == NodeState.BUILDING
    assert node.type == ["debian-bookworm"]
    assert node.resources == {"cores": 8, "instances": 1, "ram": 16384}
    assert node.attributes == {"executor-zone": "dc1"}
    # Example H: Zuul writes the node back with "id" and user_data.
    written_by_zuul = dict(NODE_F, id="0000000107", state="in-use",
                           user_data={"zuul_system": "x", "project_name": "p"})
    node = Node.from_json("0000000107", json.dumps(written_by_zuul))
    assert node.state == NodeState.IN_USE
    assert node.user_data == {"zuul_system": "x", "project_name": "p"}
    out = json.loads(node.to_json())
    assert "id" not in out
    assert set(NODE_F) <= set(out)
    assert out["ssh_port"] == out["connection_port"] == 22
    assert {k: out[k] for k in NODE_F if k not in ("state", "user_data")} == \
        {k: v for k, v in NODE_F.items() if k not in ("state", "user_data")}


def test_node_keys_zuul_requires_on_fulfilment():
    node = Node(provider="p", pool="main", type=["label"], interface_ip="198.51.100.7")
    out = json.loads(node.to_json())
    for key in ("state", "state_time", "type", "provider", "interface_ip",
                "connection_port", "connection_type", "username", "host_keys",
                "python_path", "attributes", "resources", "tenant_name", "requestor",
                "az", "cloud", "region", "host_id", "external_id"):
        assert key in out, key


def test_node_read_defaults_and_coercions():
    # A bare label string (static nodes from upstream) becomes a list;
    # ssh_port is the fallback for connection_port; hold_expiration is coerced.
    node = Node.from_json("0000000001", json.dumps(
        {"state": "hold", "type": "static-label", "ssh_port": 2222,
         "hold_expiration": "3600"}))
    assert node.type == ["static-label"]
    assert node.connection_port == 2222
    assert node.hold_expiration == 3600
    assert node.username == "zuul"
    node = Node.from_json("0000000001", json.dumps(
        {"state": "hold", "hold_expiration": "soon"}))
    assert node.hold_expiration == 0
    assert node.connection_port == 22


def test_unknown_keys_survive_an_update():
    data = dict(NODE_F, future_zuul_field={"x": 1})
    node = Node.from_json("0000000001", json.dumps(data))
    node.set_state(NodeState.READY)
    assert json.loads(node.to_json())["future_zuul_field"] == {"x": 1}


@pytest.mark.parametrize("raw, reason", [
    (b"{not json", "not JSON"),
    (b"[1, 2]", "expected a JSON object"),
    (b'{"state_time": 1.0}', "missing required field 'state'"),
    (b'{"state": "ready", "type": [1, 2]}', "field 'type'"),
    (b'{"state": "ready", "state_time": "yesterday"}', "field 'state_time'"),
    (b"\xff\xfe", "not UTF-8"),
])
def test_corrupt_node_data_is_rejected_with_a_reason(raw, reason):
    with pytest.raises(CorruptRecord, match=reason):
        Node.from_json("0000000001", raw)


@pytest.mark.parametrize("raw", [b"", b"  ", None])
def test_empty_data_means_absent(raw):
    assert Node.from_json("0000000001", raw) is None
    assert NodeRequest.from_json("100-0000000001", raw) is None


def test_build_formats_are_a_sorted_comma_joined_string():
    build = ImageBuild(image_name="debian", state="ready", formats=["raw", "qcow2"],
                       builder="nb01", builder_id="id-1", username="zuul",
                       python_path="auto")
    out = json.loads(build.to_json())
    assert out["formats"] == "qcow2,raw"
    loaded = ImageBuild.from_json("debian", "abc", build.to_json())
    assert loaded.formats == ["qcow2", "raw"]
    assert loaded.dib_id == "debian-abc"
    # Empty formats and unknown builder are omitted, as upstream writes them.
    out = json.loads(ImageBuild(image_name="x").to_json())
    assert "formats" not in out and "builder" not in out and "builder_id" not in out


def test_build_and_upload_read_defaults():
    build = ImageBuild.from_json("img", "0000000001", b'{"state": "ready"}')
    assert build.formats == []
    assert build.username == "zuul" and build.python_path == "/usr/bin/python2"
    upload = ImageUpload.from_json("img", "b1", "cloud-a", "0000000003",
                                   b'{"state": "ready", "external_id": "abc"}')
    assert upload.external_id == "abc"
    assert upload.python_path == "/usr/bin/python2"
    assert upload.path == ("/nodepool/images/img/builds/b1/providers/cloud-a/"
                           "images/0000000003")
    assert paths.parse_upload_path(upload.path) == ("img", "b1", "cloud-a",
                                                    "0000000003")


def test_pool_component_matches_upstream_shape():
    component = PoolComponent(hostname="np-l1", id="np-l1-PoolWorker.cloud-a-main-x",
                              name="main", provider_name="cloud-a",
                              supported_labels=["b", "a"], priority=100,
                              version="0.1.0", state="running")
    raw = component.to_json()
    out = json.loads(raw)
    assert list(out) == sorted(out), "component records are written with sorted keys"
    assert out == {"hostname": "np-l1", "id": "np-l1-PoolWorker.cloud-a-main-x",
                   "kind": "pool", "model_api": 0, "name": "main", "paused": False,
                   "priority": 100, "provider_name": "cloud-a", "state": "running",
                   "supported_labels": ["b", "a"], "version": "0.1.0"}
    loaded = Component.from_json("np-l10000000004", raw)
    assert isinstance(loaded, PoolComponent)
    assert loaded.supported_labels == ["b", "a"]
    launcher = Component.from_json("x", b'{"hostname": "h", "kind": "launcher", '
                                        b'"model_api": 0, "state": "running", '
                                        b'"version": "11.0.1"}')
    assert type(launcher) is Component and launcher.state == "running"


def test_request_prefix_must_be_three_characters():
    assert paths.request_prefix("200") == "/nodepool/requests/200-"
    with pytest.raises(ValueError):
        paths.request_prefix("50")


DEEP = b'{"state": "ready", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
# Stored data that Python's json module would accept, or crash on, but that
# no writer of records produces: each must be a CorruptRecord, nothing else.
HOSTILE = [
    pytest.param(b'{"state": "ready", "state_time": NaN}', id="nan"),
    pytest.param(b'{"state": "ready", "state_time": Infinity}', id="infinity"),
    pytest.param(b'{"state": "ready", "state_time": -Infinity}', id="-infinity"),
    pytest.param(b'{"state": "ready", "state_time": 1e999}', id="float-overflow"),
    pytest.param(b'{"state": "ready", "state_time": 1' + b"0" * 400 + b"}",
                 id="int-too-big-for-a-float"),
    pytest.param(b'{"state": "ready", "x": 1' + b"0" * 5000 + b"}",
                 id="int-too-many-digits"),
    pytest.param(DEEP, id="nested-100000-deep"),
]


@pytest.mark.parametrize("raw", HOSTILE)
def test_hostile_data_is_corrupt_for_every_record_kind(raw):
    readers = [
        lambda: Node.from_json("0000000001", raw),
        lambda: NodeRequest.from_json("100-0000000001", raw),
        lambda: ImageBuild.from_json("image", "b1", raw),
        lambda: ImageUpload.from_json("image", "b1", "p", "0000000001", raw),
    ]
    if b"state_time" not in raw:  # (components have no state_time field)
        readers.append(lambda: Component.from_json(
            "host0000000001", raw.replace(b'"state"', b'"kind": "pool", "state"', 1)))
    for read in readers:
        with pytest.raises(CorruptRecord) as caught:
            read()
        # The reason is short: never the payload itself.
        assert len(str(caught.value)) < 400


def test_hold_expiration_of_an_absurd_number_is_corrupt_not_a_crash():
    raw = json.dumps(dict(NODE_F, hold_expiration=1e300)).encode()
    node = Node.from_json("0000000001", raw)
    assert node.hold_expiration == int(1e300)
    with pytest.raises(CorruptRecord):
        Node.from_json("0000000001", raw.replace(b"1e+300", b"1e999"))


def test_a_decoded_node_is_what_its_constructor_would_make():
    import dataclasses
    data = dict(NODE_F, future_zuul_field=1)
    data.pop("comment", None)
    decoded = Node.from_json("0000000001", json.dumps(data), 7)
    kwargs = {f.name: getattr(decoded, f.name) for f in dataclasses.fields(Node)}
    built = Node(**kwargs)
    assert vars(decoded) == vars(built)
    assert decoded.comment is None and decoded.node_properties == {}
    assert decoded.extra == {"future_zuul_field": 1} and decoded.version == 7
    # Defaults made by a factory are not shared between records.
    other = Node.from_json("0000000002", json.dumps(data))
    other.node_properties["x"] = 1
    assert decoded.node_properties == {}
