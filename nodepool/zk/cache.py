"""Watch-driven caches of nodes, requests, image data and components, each a
:class:`~nodepool.zk.treecache.TreeCache` of one subtree with typed views.

A change is visible to readers within a round trip. Corrupt records are
logged and left out of the typed views; empty node znodes (left by a lock
attempt racing a node deletion) are remembered so the launcher can remove
them.
"""

from __future__ import annotations

import logging
from typing import Iterable

from nodepool.zk import paths
from nodepool.zk.client import ZooKeeperClient
from nodepool.zk.image_records import ImageBuild, ImageFlags, ImageUpload
from nodepool.zk.records import (
    Component, CorruptRecord, Node, NodeRequest, PoolComponent, UploadState,
)
from nodepool.zk.treecache import TreeCache

log = logging.getLogger("nodepool.zk.cache")


class NodeCache(TreeCache):
    """All node records, plus the contenders of each node's lock."""

    def __init__(self, client: ZooKeeperClient):
        super().__init__(client, paths.NODES, "node")
        self._nodes: dict[str, Node] = {}
        self._contenders: dict[str, set[str]] = {}
        self.empty_ids: set[str] = set()
        self.corrupt_ids: set[str] = set()

    def wants_data(self, path: str) -> bool:
        return len(paths.split(path)) == 2

    def wants_children(self, path: str) -> bool:
        parts = paths.split(path)
        return len(parts) == 2 or (len(parts) == 3 and parts[2] == paths.LOCK_DIR)

    def on_data(self, path, data, stat):
        node_id = paths.split(path)[1]
        try:
            node = Node.from_json(node_id, data, stat.version)
        except CorruptRecord as exc:
            log.warning("Skipping corrupt node record %s: %s", node_id, exc)
            self.corrupt_ids.add(node_id)
            self._forget(node_id)
            return
        self.corrupt_ids.discard(node_id)
        if node is None:
            self.empty_ids.add(node_id)
            self._forget(node_id)
            return
        self.empty_ids.discard(node_id)
        self._nodes[node_id] = node
        self.notify("changed", node_id, node)

    def known_version(self, path: str) -> int | None:
        node = self._nodes.get(paths.split(path)[1])
        return None if node is None else node.version

    def _forget(self, node_id: str) -> None:
        old = self._nodes.pop(node_id, None)
        if old is not None:
            self.notify("deleted", node_id, old)

    def on_created(self, path):
        parts = paths.split(path)
        if len(parts) == 4 and paths.is_lock_contender(parts[3]):
            self._contenders.setdefault(parts[1], set()).add(parts[3])
            node = self._nodes.get(parts[1])
            if node is not None:
                self.notify("locked", parts[1], node)

    def on_deleted(self, path):
        parts = paths.split(path)
        if len(parts) == 2:
            self.empty_ids.discard(parts[1])
            self.corrupt_ids.discard(parts[1])
            self._contenders.pop(parts[1], None)
            self._forget(parts[1])
        elif len(parts) == 4:
            contenders = self._contenders.get(parts[1])
            if contenders is not None:
                contenders.discard(parts[3])
                if not contenders:
                    del self._contenders[parts[1]]
                node = self._nodes.get(parts[1])
                if node is not None:
                    self.notify("unlocked", parts[1], node)

    # -- readers -----------------------------------------------------------

    def get(self, node_id: str) -> Node | None:
        with self._lock:
            return self._nodes.get(node_id)

    def nodes(self) -> list[Node]:
        with self._lock:
            return list(self._nodes.values())

    def ids(self) -> list[str]:
        with self._lock:
            return sorted(self._nodes)

    def lock_contenders(self, node_id: str) -> set[str]:
        with self._lock:
            return set(self._contenders.get(node_id, ()))

    def is_locked(self, node_id: str) -> bool:
        """Whether the node looks locked (a hint, never a guarantee)."""
        with self._lock:
            return bool(self._contenders.get(node_id))

    def locked_among(self, node_ids: Iterable[str]) -> set[str]:
        """Which of these nodes look locked (one lock round for all)."""
        with self._lock:
            contenders = self._contenders
            return {i for i in node_ids if contenders.get(i)}

    def __len__(self) -> int:
        return len(self._nodes)


class RequestCache(TreeCache):
    """All node requests."""

    def __init__(self, client: ZooKeeperClient):
        super().__init__(client, paths.REQUESTS, "request")
        self._requests: dict[str, NodeRequest] = {}
        # The ones in state "requested": what schedulers scan on every pass;
        # the generation changes with every change to it, so a reader can
        # keep what it derived from the last one (an order, say).
        self._open: dict[str, NodeRequest] = {}
        self.open_generation = 0
        self.corrupt_ids: set[str] = set()

    def wants_data(self, path: str) -> bool:
        return len(paths.split(path)) == 2

    def wants_children(self, path: str) -> bool:
        return False

    def known_version(self, path: str) -> int | None:
        request = self._requests.get(paths.split(path)[1])
        return None if request is None else request.version

    def on_data(self, path, data, stat):
        request_id = paths.split(path)[1]
        try:
            request = NodeRequest.from_json(request_id, data, stat.version)
        except CorruptRecord as exc:
            log.warning("Skipping corrupt node request %s: %s", request_id, exc)
            self.corrupt_ids.add(request_id)
            request = None
        else:
            self.corrupt_ids.discard(request_id)
        if request is None:
            old = self._requests.pop(request_id, None)
            self._close(request_id)
            if old is not None:
                self.notify("deleted", request_id, old)
            return
        self._requests[request_id] = request
        if request.state == "requested":
            self._open[request_id] = request
            self.open_generation += 1
        else:
            self._close(request_id)
        self.notify("changed", request_id, request)

    def _close(self, request_id: str) -> None:
        if self._open.pop(request_id, None) is not None:
            self.open_generation += 1

    def on_deleted(self, path):
        parts = paths.split(path)
        if len(parts) == 2:
            self.corrupt_ids.discard(parts[1])
            old = self._requests.pop(parts[1], None)
            self._close(parts[1])
            if old is not None:
                self.notify("deleted", parts[1], old)

    def current_open(self, request_id: str) -> NodeRequest | None:
        """The request as last seen, if it is still open."""
        return self._open.get(request_id)

    def open_snapshot(self) -> tuple[int, list[NodeRequest]]:
        """The open requests and the generation they belong to."""
        with self._lock:
            return self.open_generation, list(self._open.values())

    def get(self, request_id: str) -> NodeRequest | None:
        with self._lock:
            return self._requests.get(request_id)

    def requests(self) -> list[NodeRequest]:
        with self._lock:
            return list(self._requests.values())

    def sorted_requests(self) -> list[NodeRequest]:
        return sorted(self.requests(), key=NodeRequest.sort_key)

    def __len__(self) -> int:
        return len(self._requests)


class ImageCache(TreeCache):
    """Builds, uploads, pause and build-request markers of every image."""

    def __init__(self, client: ZooKeeperClient):
        super().__init__(client, paths.IMAGES, "image")
        self._builds: dict[tuple[str, str], ImageBuild] = {}
        self._uploads: dict[tuple[str, str, str, str], ImageUpload] = {}
        self._flags: dict[str, ImageFlags] = {}
        self._build_lock_contenders: dict[str, set[str]] = {}

    @staticmethod
    def _kind(parts: list[str]) -> str | None:
        n = len(parts)
        if n == 2:
            return "image"
        if n == 3 and parts[2] in ("pause", "request-build"):
            return parts[2]
        if n == 5 and parts[2] == "builds" and parts[3] == paths.LOCK_DIR:
            return "build-lock-contender"
        if n == 4 and parts[2] == "builds" and parts[3] != paths.LOCK_DIR:
            return "build"
        if (n == 8 and parts[4] == "providers" and parts[6] == "images"
                and parts[7] != paths.LOCK_DIR):
            return "upload"
        return None

    def wants_data(self, path: str) -> bool:
        return self._kind(paths.split(path)) in ("build", "upload", "request-build")

    def wants_children(self, path: str) -> bool:
        parts = paths.split(path)
        if parts and parts[-1] == paths.LOCK_DIR:
            # Only the image build lock's contenders are of interest.
            return len(parts) == 4 and parts[2] == "builds"
        return len(parts) < 8

    def on_data(self, path, data, stat):
        parts = paths.split(path)
        kind = self._kind(parts)
        if kind == "build":
            self.keep(self._builds, (parts[1], parts[3]), self.decode(
                path, lambda: ImageBuild.from_json(parts[1], parts[3], data,
                                                   stat.version)))
        elif kind == "upload":
            self.keep(self._uploads, (parts[1], parts[3], parts[5], parts[7]),
                      self.decode(path, lambda: ImageUpload.from_json(
                          parts[1], parts[3], parts[5], parts[7], data,
                          stat.version)))
        elif kind == "request-build":
            flags = self._flags.setdefault(parts[1], ImageFlags(parts[1]))
            flags.build_requested_at = stat.ctime / 1000.0
            self.notify("changed", parts[1], flags)

    def on_created(self, path):
        parts = paths.split(path)
        kind = self._kind(parts)
        if kind == "image":
            self._flags.setdefault(parts[1], ImageFlags(parts[1]))
        elif kind == "pause":
            flags = self._flags.setdefault(parts[1], ImageFlags(parts[1]))
            flags.paused = True
            self.notify("changed", parts[1], flags)
        elif kind == "build-lock-contender":
            self._build_lock_contenders.setdefault(parts[1], set()).add(parts[4])

    def on_deleted(self, path):
        parts = paths.split(path)
        kind = self._kind(parts)
        if kind == "image":
            self._flags.pop(parts[1], None)
        elif kind == "pause":
            if parts[1] in self._flags:
                self._flags[parts[1]].paused = False
                self.notify("changed", parts[1], self._flags[parts[1]])
        elif kind == "request-build":
            if parts[1] in self._flags:
                self._flags[parts[1]].build_requested_at = None
                self.notify("changed", parts[1], self._flags[parts[1]])
        elif kind == "build-lock-contender":
            self._build_lock_contenders.get(parts[1], set()).discard(parts[4])
        elif kind == "build":
            old = self._builds.pop((parts[1], parts[3]), None)
            if old is not None:
                self.notify("deleted", (parts[1], parts[3]), old)
        elif kind == "upload":
            key = (parts[1], parts[3], parts[5], parts[7])
            old = self._uploads.pop(key, None)
            if old is not None:
                self.notify("deleted", key, old)

    # -- readers -----------------------------------------------------------

    def image_names(self) -> list[str]:
        with self._lock:
            return sorted(self._flags)

    def flags(self, image_name: str) -> ImageFlags:
        with self._lock:
            flags = self._flags.get(image_name)
            if flags is None:
                return ImageFlags(image_name)
            return ImageFlags(flags.image_name, flags.paused, flags.build_requested_at)

    def is_building(self, image_name: str) -> bool:
        with self._lock:
            return bool(self._build_lock_contenders.get(image_name))

    def builds(self, image_name: str | None = None) -> list[ImageBuild]:
        """Builds, newest state_time first."""
        with self._lock:
            found = [b for (img, _), b in self._builds.items()
                     if image_name is None or img == image_name]
        return sorted(found, key=lambda b: b.state_time, reverse=True)

    def uploads(self, image_name: str | None = None, provider: str | None = None,
                states: Iterable[str] | None = None) -> list[ImageUpload]:
        """Uploads, newest state_time first."""
        wanted = set(states) if states is not None else None
        with self._lock:
            found = [u for (img, _, prov, _), u in self._uploads.items()
                     if (image_name is None or img == image_name)
                     and (provider is None or prov == provider)
                     and (wanted is None or u.state in wanted)]
        return sorted(found, key=lambda u: u.state_time, reverse=True)

    def latest_ready_upload(self, image_name: str, provider: str) -> ImageUpload | None:
        """The upload the launcher boots: newest ``ready`` one across builds."""
        ready = self.uploads(image_name, provider, states=[UploadState.READY])
        return ready[0] if ready else None


class ComponentCache(TreeCache):
    """Registered launchers, pool workers and builders."""

    def __init__(self, client: ZooKeeperClient):
        super().__init__(client, paths.COMPONENTS, "component")
        self._components: dict[tuple[str, str], Component] = {}
        # Changes with every change, so readers can keep what they derive.
        self.generation = 0

    def wants_data(self, path: str) -> bool:
        return len(paths.split(path)) == 3

    def wants_children(self, path: str) -> bool:
        return len(paths.split(path)) < 3

    def on_data(self, path, data, stat):
        parts = paths.split(path)
        key = (parts[1], parts[2])
        component = self.decode(path, lambda: Component.from_json(
            parts[2], data, stat.version))
        self.generation += 1
        self.keep(self._components, key, component)

    def on_deleted(self, path):
        parts = paths.split(path)
        if len(parts) == 3:
            old = self._components.pop((parts[1], parts[2]), None)
            if old is not None:
                self.generation += 1
                self.notify("deleted", (parts[1], parts[2]), old)

    def pools(self) -> list[PoolComponent]:
        return self.pools_snapshot()[1]

    def pools_snapshot(self) -> tuple[int, list[PoolComponent]]:
        """The registered pools and the generation they belong to."""
        with self._lock:
            return self.generation, [
                c for (kind, _), c in self._components.items()
                if kind == "pool" and isinstance(c, PoolComponent)]

    def of_kind(self, kind: str) -> list[Component]:
        with self._lock:
            return [c for (k, _), c in self._components.items() if k == kind]
