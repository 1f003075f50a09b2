"""Watch-driven caches of nodes, requests and image data.

Each cache mirrors one subtree with a single persistent recursive watch. The
watch events and the replies to the reads they trigger are applied by one
worker thread in the order the server sent them, so the mirror converges on
the server's state without ever listing the tree again - except after a
reconnection, when events may have been missed and the subtree is re-read once
(pipelined). A change is visible to readers within a round trip.

Corrupt records are logged and left out of the typed views; empty node znodes
(left by a lock attempt racing a node deletion) are remembered so the launcher
can remove them.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable, Iterable

from kazoo.exceptions import NoNodeError
from kazoo.protocol.states import EventType

from nodepool.zk import paths
from nodepool.zk.client import RESYNC, ZooKeeperClient
from nodepool.zk.records import (
    Component, CorruptRecord, ImageBuild, ImageFlags, ImageUpload, Node,
    NodeRequest, PoolComponent, UploadState, short_repr,
)

log = logging.getLogger("nodepool.zk.cache")

_STOP = object()


class _BarrierWaiter:
    """A caller of :meth:`TreeCache.barrier` waiting for the cache thread."""

    __slots__ = ("event", "ok")

    def __init__(self):
        self.event = threading.Event()
        self.ok = False

    def finish(self, ok: bool) -> None:
        self.ok = ok
        self.event.set()

    def wait(self, timeout: float) -> bool:
        return self.event.wait(timeout) and self.ok

# Listener signature: (kind, key, record) where kind is "changed" or "deleted".
Listener = Callable[[str, object, object], None]


class TreeCache:
    """Mirror of the znodes below ``root``; subclasses keep typed views."""

    def __init__(self, client: ZooKeeperClient, root: str, name: str):
        self.client = client
        self.root = root
        self.name = name
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._listeners: list[Listener] = []
        # Paths known to exist below root, and each path's known children
        # (data is kept only by subclasses, in typed form).
        self._present: set[str] = set()
        self._children: dict[str, set[str]] = {}
        self._resync_pending = 0
        self._resync_generation = 0
        # Barriers whose read came back during a resynchronisation.
        self._after_resync: list[_BarrierWaiter] = []
        self._resync_incomplete = False
        self.synced = threading.Event()
        self.events_applied = 0

    # -- what to read; subclasses refine -----------------------------------

    def wants_data(self, path: str) -> bool:
        return paths.LOCK_DIR not in path[len(self.root):].split("/")

    def wants_children(self, path: str) -> bool:
        return True

    def on_data(self, path: str, data: bytes, stat) -> None:
        """A znode's data arrived (created or changed)."""

    def on_created(self, path: str) -> None:
        """A znode whose data we do not read was created."""

    def on_deleted(self, path: str) -> None:
        """A znode was deleted."""

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> "TreeCache":
        self.client.kazoo.ensure_path(self.root)
        self._thread = threading.Thread(target=self._run, name=f"{self.name}-cache",
                                        daemon=True)
        self._thread.start()
        self.client.add_persistent_watch(self.root, self._queue.put)
        self._queue.put(("event", RESYNC))
        return self

    def stop(self) -> None:
        self.client.remove_persistent_watch(self.root)
        self._queue.put(_STOP)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def wait_synced(self, timeout: float = 30.0) -> bool:
        return self.synced.wait(timeout)

    def barrier(self, timeout: float = 10.0) -> bool:
        """Wait until the cache reflects every change committed before now.

        1. ``sync`` makes our server catch up with the leader; the watch
           events of every change committed before it reach our queue before
           its reply (the server sends them in order, and kazoo's connection
           thread queues them before it wakes us).
        2. A marker queued now is therefore behind all those events; the cache
           thread, having sent the reads for them, sends one more read when it
           reaches the marker.
        3. Replies come in the order the reads were sent, so when that read's
           reply is applied, every earlier read's reply has been applied too
           (and a resynchronisation in progress has finished).

        False if ZooKeeper could not be reached or ``timeout`` passed.
        """
        try:
            self.client.kazoo.sync(self.root)
        except Exception as exc:
            log.debug("%s cache barrier: sync failed: %s", self.name, exc)
            return False
        waiter = _BarrierWaiter()
        self._queue.put(("barrier", waiter))
        return waiter.wait(timeout)

    @property
    def queue_size(self) -> int:
        return self._queue.qsize()

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def notify(self, kind: str, key, record) -> None:
        for listener in list(self._listeners):
            try:
                listener(kind, key, record)
            except Exception:
                log.exception("%s cache listener failed", self.name)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Block until ``predicate()`` holds (checked after every change)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
        return True

    # -- the worker --------------------------------------------------------

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            try:
                with self._lock:
                    self._apply(item)
                    self.events_applied += 1
                    self._changed.notify_all()
            except Exception:
                log.exception("%s cache failed to apply %s", self.name,
                              short_repr(item))

    def _send(self, tag, request: str, path: str) -> None:
        try:
            self.client.send_ordered(self._queue.put, tag, request, path)
        except Exception as exc:
            # Not connected: the resync after reconnection will catch up.
            log.debug("%s cache cannot read %s now: %s", self.name, path, exc)
            if tag[0] == "resync":
                self._resync_incomplete = True
                self._resync_done()
            elif tag[0] == "barrier":
                tag[1].finish(False)

    def _apply(self, item) -> None:
        if item[0] == "barrier":
            # Every event queued before the marker has had its read sent.
            self._send(("barrier", item[1]), "get", self.root)
            return
        if item[0] == "event":
            event = item[1]
            if event is RESYNC:
                self._start_resync()
                return
            path = event.path
            if event.type == EventType.DELETED:
                self._delete(path)
            elif event.type == EventType.CREATED:
                if self.wants_data(path):
                    self._send(("get", path), "get", path)
                elif path not in self._present:
                    self._add_present(path)
                    self.on_created(path)
            elif event.type == EventType.CHANGED:
                if self.wants_data(path):
                    self._send(("get", path), "get", path)
            return
        _, tag, value, exc = item
        kind = tag[0]
        if kind == "addwatch":
            if exc is not None:
                log.error("%s cache: addWatch on %s failed: %r (ZooKeeper >= 3.6 "
                          "is required)", self.name, tag[1], exc)
            return
        if kind == "barrier":
            if exc is not None and not isinstance(exc, NoNodeError):
                tag[1].finish(False)
            elif self._resync_pending > 0:
                self._after_resync.append(tag[1])
            else:
                tag[1].finish(True)
        elif kind == "get":
            self._got_data(tag[1], value, exc)
        elif kind == "resync":
            _, what, path, generation = tag
            if generation == self._resync_generation:
                if what == "get":
                    self._got_data(path, value, exc)
                else:
                    self._got_children(path, value, exc, generation)
                self._resync_done()

    def _got_data(self, path: str, value, exc) -> None:
        if exc is not None:
            if isinstance(exc, NoNodeError):
                self._delete(path)
            else:
                log.debug("%s cache: read of %s failed: %r", self.name, path, exc)
            return
        data, stat = value
        self._add_present(path)
        self.on_data(path, data, stat)

    def _add_present(self, path: str) -> None:
        if path in self._present:
            return
        self._present.add(path)
        self._children.setdefault(path.rsplit("/", 1)[0], set()).add(path)

    def _delete(self, path: str) -> None:
        # Children first, as ZooKeeper itself deletes them.
        for child in list(self._children.get(path, ())):
            self._delete(child)
        self._children.pop(path, None)
        if path in self._present:
            self._present.discard(path)
            siblings = self._children.get(path.rsplit("/", 1)[0])
            if siblings is not None:
                siblings.discard(path)
            self.on_deleted(path)

    # -- resynchronisation -------------------------------------------------

    def _start_resync(self) -> None:
        self._resync_incomplete = False
        self.synced.clear()
        self._resync_generation += 1
        self._resync_pending = 0
        self._resync_request("children", self.root)

    def _resync_request(self, what: str, path: str) -> None:
        self._resync_pending += 1
        self._send(("resync", what, path, self._resync_generation), what, path)

    def _resync_done(self) -> None:
        self._resync_pending -= 1
        if self._resync_pending <= 0:
            self._resync_pending = 0
            self.synced.set()
            waiting, self._after_resync = self._after_resync, []
            for waiter in waiting:
                waiter.finish(not self._resync_incomplete)

    def _got_children(self, path: str, children, exc, generation) -> None:
        if exc is not None:
            if not isinstance(exc, NoNodeError):
                log.debug("%s cache: listing %s failed: %r", self.name, path, exc)
                return
            children = []
        listed = {f"{path}/{c}" for c in children}
        # Anything we knew below this level that the listing lacks is gone.
        for stale in [p for p in self._children.get(path, ()) if p not in listed]:
            self._delete(stale)
        for child in sorted(listed):
            if self.wants_data(child):
                self._resync_request("get", child)
            elif child not in self._present:
                self._add_present(child)
                self.on_created(child)
            if self.wants_children(child):
                self._resync_request("children", child)


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

    def __len__(self) -> int:
        return len(self._nodes)


class RequestCache(TreeCache):
    """All node requests."""

    def __init__(self, client: ZooKeeperClient):
        super().__init__(client, paths.REQUESTS, "request")
        self._requests: dict[str, NodeRequest] = {}
        # The ones in state "requested": what schedulers scan on every pass.
        self._open: dict[str, NodeRequest] = {}
        self.corrupt_ids: set[str] = set()

    def wants_data(self, path: str) -> bool:
        return len(paths.split(path)) == 2

    def wants_children(self, path: str) -> bool:
        return False

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
            self._open.pop(request_id, None)
            if old is not None:
                self.notify("deleted", request_id, old)
            return
        self._requests[request_id] = request
        if request.state == "requested":
            self._open[request_id] = request
        else:
            self._open.pop(request_id, None)
        self.notify("changed", request_id, request)

    def on_deleted(self, path):
        parts = paths.split(path)
        if len(parts) == 2:
            self.corrupt_ids.discard(parts[1])
            old = self._requests.pop(parts[1], None)
            self._open.pop(parts[1], None)
            if old is not None:
                self.notify("deleted", parts[1], old)

    def open_requests(self) -> list[NodeRequest]:
        """Requests in state ``requested`` (kept as an index, not filtered)."""
        with self._lock:
            return list(self._open.values())

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
        try:
            if kind == "build":
                build = ImageBuild.from_json(parts[1], parts[3], data, stat.version)
                key = (parts[1], parts[3])
                if build is None:
                    self._builds.pop(key, None)
                else:
                    self._builds[key] = build
                self.notify("changed", key, build)
            elif kind == "upload":
                upload = ImageUpload.from_json(parts[1], parts[3], parts[5],
                                               parts[7], data, stat.version)
                key = (parts[1], parts[3], parts[5], parts[7])
                if upload is None:
                    self._uploads.pop(key, None)
                else:
                    self._uploads[key] = upload
                self.notify("changed", key, upload)
            elif kind == "request-build":
                flags = self._flags.setdefault(parts[1], ImageFlags(parts[1]))
                flags.build_requested_at = stat.ctime / 1000.0
                self.notify("changed", parts[1], flags)
        except CorruptRecord as exc:
            log.warning("Skipping corrupt image record %s: %s", path, exc)

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

    def wants_data(self, path: str) -> bool:
        return len(paths.split(path)) == 3

    def wants_children(self, path: str) -> bool:
        return len(paths.split(path)) < 3

    def on_data(self, path, data, stat):
        parts = paths.split(path)
        key = (parts[1], parts[2])
        try:
            component = Component.from_json(parts[2], data, stat.version)
        except CorruptRecord as exc:
            log.warning("Skipping corrupt component record %s: %s", path, exc)
            component = None
        if component is None:
            self._components.pop(key, None)
        else:
            self._components[key] = component
        self.notify("changed", key, component)

    def on_deleted(self, path):
        parts = paths.split(path)
        if len(parts) == 3:
            old = self._components.pop((parts[1], parts[2]), None)
            if old is not None:
                self.notify("deleted", (parts[1], parts[2]), old)

    def pools(self) -> list[PoolComponent]:
        with self._lock:
            return [c for (kind, _), c in self._components.items()
                    if kind == "pool" and isinstance(c, PoolComponent)]

    def of_kind(self, kind: str) -> list[Component]:
        with self._lock:
            return [c for (k, _), c in self._components.items() if k == kind]
