"""Tables and JSON of nodes, requests, labels and images, shared by the CLI
and the web.

The views (``*_rows``) turn records into rows in the order both show them;
the CLI feeds them what it reads from ZooKeeper, the web server what the
launcher's caches hold. Column keys and headers follow upstream's output
(spec section 6), so scripts that parse either keep working.
"""

from __future__ import annotations

import json
import time
from typing import Any, Iterable, Protocol

from nodepool.zk.image_records import ImageBuild, ImageFlags, ImageUpload
from nodepool.zk.records import (
    BuildState, Component, Node, NodeRequest, request_priority, request_sequence,
)

# (key, header); the first NODE_COLUMNS_SHORT are shown without --detail.
NODE_COLUMNS = [
    ("id", "ID"), ("provider", "Provider"), ("label", "Label"),
    ("server_id", "Server ID"), ("public_ipv4", "Public IPv4"), ("ipv6", "IPv6"),
    ("state", "State"), ("age", "Age"), ("locked", "Locked"),
    ("pool", "Pool"), ("hostname", "Hostname"), ("private_ipv4", "Private IPv4"),
    ("AZ", "AZ"), ("username", "Username"), ("connection_port", "Port"),
    ("launcher", "Launcher"), ("allocated_to", "Allocated To"),
    ("hold_job", "Hold Job"), ("comment", "Comment"), ("user_data", "User Data"),
    ("driver_data", "Driver Data"),
    # Ours: the launcher driving the node's launch or delete now.
    ("driven_by", "Driven By"),
]
NODE_COLUMNS_SHORT = 9

REQUEST_COLUMNS = [
    ("id", "Request ID"), ("relative_priority", "Priority"), ("state", "State"),
    ("requestor", "Requestor"), ("node_types", "Node Types"), ("nodes", "Nodes"),
    ("declined_by", "Declined By"), ("event_id", "Event ID"),
]

LABEL_COLUMNS = [("label", "Label")]

# ``nodepool info``: a provider's uploads and nodes.
INFO_IMAGE_COLUMNS = [("image", "Image Name"), ("build", "Build ID"),
                      ("uploads", "Upload IDs")]
INFO_NODE_COLUMNS = [("id", "ID"), ("server_id", "Server ID")]
# Ours: the provider's capacity errors per flavor (nodepool.launcher.capacity).
INFO_CAPACITY_COLUMNS = [("flavor", "Flavor"), ("errors", "Errors"),
                         ("labels", "Labels"), ("last_error", "Last Error"),
                         ("avoided_until", "Avoided Until")]
ALIEN_IMAGE_COLUMNS = [("provider", "Provider"), ("name", "Name"), ("id", "Image ID")]


def format_age(timestamp: float | None, now: float | None = None) -> str:
    """Elapsed time since ``timestamp`` as DD:HH:MM:SS."""
    if timestamp is None:
        return ""
    seconds = max(0, int((now or time.time()) - timestamp))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{days:02d}:{hours:02d}:{minutes:02d}:{seconds:02d}"


def node_row(node: Node, locked: bool, now: float | None = None) -> dict[str, Any]:
    port = node.connection_port
    return {
        "id": node.id, "provider": node.provider, "label": list(node.type),
        "server_id": node.external_id, "public_ipv4": node.public_ipv4,
        "ipv6": node.public_ipv6, "state": node.state,
        "age": format_age(node.state_time, now),
        "locked": "locked" if locked else "unlocked", "pool": node.pool,
        "hostname": node.hostname, "private_ipv4": node.private_ipv4, "AZ": node.az,
        "username": node.username,
        # Kubernetes-style drivers keep credentials here: never print them.
        "connection_port": port if isinstance(port, int) else "redacted",
        "launcher": node.launcher, "allocated_to": node.allocated_to,
        "hold_job": node.hold_job, "comment": node.comment,
        "user_data": node.user_data, "driver_data": node.driver_data,
        "driven_by": driven_by(node),
    }


def driven_by(node: Node) -> str | None:
    """The launcher driving the node's launch or delete (None: neither runs)."""
    progress = node.progress
    if progress is None:
        return None
    return f"{progress.launcher} ({progress.operation})"


def capacity_row(entry, now: float | None = None) -> dict[str, Any]:
    """One capacity entry (nodepool.zk.capacity.CapacityEntry)."""
    now = time.time() if now is None else now

    def when(epoch):
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch)) \
            if epoch else None
    return {"flavor": entry.key, "errors": entry.errors, "labels": list(entry.labels),
            "last_error": when(entry.last_error),
            "avoided_until": when(entry.avoid_until) if entry.avoided(now) else None}


def request_row(request: NodeRequest) -> dict[str, Any]:
    return {
        "id": request.id, "relative_priority": request.relative_priority,
        "state": request.state, "requestor": request.requestor,
        "node_types": list(request.node_types), "nodes": list(request.nodes),
        "declined_by": list(request.declined_by), "event_id": request.event_id,
    }


# Sort keys here are total: a record with a field left empty (None) or of
# an unexpected type must sort somewhere, never fail the whole page.

def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _number(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    return 0


def node_rows(nodes: Iterable[tuple[Node, bool]], node_id: str | None = None,
              now: float | None = None) -> list[dict[str, Any]]:
    """``list`` and ``/node-list``: (node, locked) pairs, by node id;
    ``node_id`` keeps only that node."""
    now = time.time() if now is None else now
    return [node_row(node, locked, now)
            for node, locked in sorted(nodes, key=lambda pair: _text(pair[0].id))
            if node_id is None or node.id == node_id]


def request_order(request: NodeRequest) -> tuple[str, float, str, str]:
    """The order launchers consider requests in (precedence, relative
    priority, sequence: NodeRequest.sort_key), total over any record."""
    return (request_priority(request.id), _number(request.relative_priority),
            request_sequence(request.id), _text(request.id))


def request_rows(requests: Iterable[NodeRequest]) -> list[dict[str, Any]]:
    """``request-list``: in the order launchers consider them."""
    return [request_row(r) for r in sorted(requests, key=request_order)]


def label_rows(pools: Iterable[Component]) -> list[dict[str, Any]]:
    """``label-list``: every label a registered pool supports, sorted."""
    labels: set[str] = set()
    for pool in pools:
        labels.update(_text(label) for label in
                      getattr(pool, "supported_labels", None) or [])
    labels.discard("")
    return [{"label": label} for label in sorted(labels)]


def _cell(key: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        try:
            return json.dumps(value, sort_keys=True, default=str)
        except TypeError:  # keys of mixed types cannot be sorted
            return json.dumps(value, default=str)
    if (key == "age" or key.endswith("_age")) and isinstance(value, (int, float)) \
            and not isinstance(value, bool):
        return format_age(value)
    return str(value)


def render_table(columns: list[tuple[str, str]], rows: Iterable[dict[str, Any]],
                 fields: list[str] | None = None) -> str:
    """A left-aligned ASCII table in PrettyTable's style."""
    if fields:
        wanted = set(fields)
        columns = [c for c in columns if c[0] in wanted]
    rows = list(rows)
    # Column by column: most cells are already strings.
    cells = [[value if value.__class__ is str else _cell(key, value)
              for value in (row.get(key) for row in rows)]
             for key, _ in columns]
    widths = [max(len(header), max(map(len, column), default=0))
              for (_, header), column in zip(columns, cells)]
    border = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    line = "| " + " | ".join(f"{{:<{w}}}" for w in widths) + " |"
    out = [border, line.format(*(h for _, h in columns)), border]
    out += map(line.format, *cells)
    out.append(border)
    return "\n".join(out)


def render_json(rows: list[dict[str, Any]]) -> str:
    return json.dumps(rows, indent=2, sort_keys=False, default=str)


# -- images ---------------------------------------------------------------------

DIB_IMAGE_COLUMNS = [
    ("id", "ID"), ("image", "Image"), ("builder", "Builder"), ("formats", "Formats"),
    ("state", "State"), ("age", "Age"),
]
IMAGE_COLUMNS = [
    ("id", "Build ID"), ("upload_id", "Upload ID"), ("provider", "Provider"),
    ("image", "Image"), ("external_name", "Provider Image Name"),
    ("external_id", "Provider Image ID"), ("state", "State"), ("age", "Age"),
]
IMAGE_STATUS_COLUMNS = [
    ("image", "Image"), ("paused", "Paused"), ("build_request", "Build Request"),
    ("build_request_age", "Build Request Age"),
]


def build_row(build, paused: bool) -> dict[str, Any]:
    return {"id": f"{build.image_name}-{build.id}", "image": build.image_name,
            "builder": build.builder, "formats": list(build.formats),
            "state": "paused" if paused else build.state,
            # An epoch, as upstream's web app gives; tables show it elapsed.
            "age": int(_number(build.state_time))}


def upload_row(upload) -> dict[str, Any]:
    return {"id": upload.build_id, "upload_id": upload.id,
            "provider": upload.provider_name, "image": upload.image_name,
            "external_name": upload.external_name, "external_id": upload.external_id,
            "state": upload.state, "age": int(_number(upload.state_time))}


def image_status_row(image: str, paused: bool, request: str | None,
                     requested_at: float | None) -> dict[str, Any]:
    return {"image": image, "paused": paused, "build_request": request,
            "build_request_age": int(requested_at) if request and requested_at
            else None}


class ImageSource(Protocol):
    """What the image views read: the launcher's ImageCache, or the CLI's
    direct reads of ZooKeeper. Builds and uploads come newest first."""

    def image_names(self) -> list[str]: ...

    def flags(self, image_name: str) -> ImageFlags: ...

    def is_building(self, image_name: str) -> bool: ...

    def builds(self, image_name: str | None = None) -> list[ImageBuild]: ...

    def uploads(self, image_name: str | None = None) -> list[ImageUpload]: ...


def dib_image_rows(images: ImageSource) -> list[dict[str, Any]]:
    """``dib-image-list``: builds by image, oldest first."""
    builds = sorted(images.builds(), key=lambda b: (_text(b.image_name),
                                                    _number(b.state_time), _text(b.id)))
    return [build_row(b, images.flags(b.image_name).paused) for b in builds]


def image_rows(images: ImageSource) -> list[dict[str, Any]]:
    """``image-list``: uploads by image, build (oldest first), provider and
    upload number. An upload whose build is unknown sorts first."""
    built_at = {(b.image_name, b.id): b.state_time for b in images.builds()}

    def order(upload: ImageUpload) -> tuple:
        return (_text(upload.image_name),
                _number(built_at.get((upload.image_name, upload.build_id))),
                _text(upload.build_id), _text(upload.provider_name), _text(upload.id))
    return [upload_row(u) for u in sorted(images.uploads(), key=order)]


def build_request(images: ImageSource, image: str,
                  requested_at: float | None) -> str | None:
    """None without a ``request-build`` flag; ``building`` while a build
    started after the request holds the image build lock; else ``pending``."""
    if requested_at is None:
        return None
    if images.is_building(image) and any(
            b.state == BuildState.BUILDING and b.state_time >= requested_at
            for b in images.builds(image)):
        return "building"
    return "pending"


def image_status_rows(images: ImageSource) -> list[dict[str, Any]]:
    """``image-status``: every image with its pause flag and build request."""
    rows = []
    for image in images.image_names():
        flags = images.flags(image)
        rows.append(image_status_row(
            image, flags.paused, build_request(images, image, flags.build_requested_at),
            flags.build_requested_at))
    return rows
