"""Capacity errors in ZooKeeper (ours; upstream neither reads nor writes
them): ``/nodepool/capacity/<provider>/<flavor>`` says how often the
provider answered a create with a capacity (quota) error for that flavor,
and until when launchers avoid it. Shared by every launcher (and read by
``nodepool info``), so all of them avoid a provider that keeps refusing.

The policy (how many errors, for how long) is the launcher's
(:mod:`nodepool.launcher.capacity`); this module stores, reads and caches.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError

from nodepool.zk import paths
from nodepool.zk.client import ZooKeeperClient
from nodepool.zk.decoding import decoder, load_object
from nodepool.zk.records import Record, string_list
from nodepool.zk.treecache import TreeCache

log = logging.getLogger("nodepool.zk.capacity")


@dataclass(eq=False)
class CapacityEntry(Record):
    """One provider's capacity errors for one flavor."""

    FIELDS = (
        ("errors", "errors", "int", 0),
        ("first_error", "first_error", "float", 0.0),
        ("last_error", "last_error", "float", 0.0),
        ("avoid_until", "avoid_until", "float?", None),
        ("labels", "labels", "strlist", list),
        ("launcher", "launcher", "str?", None),
        ("message", "message", "str?", None),
    )

    provider: str = ""
    key: str = ""
    errors: int = 0
    first_error: float = 0.0
    last_error: float = 0.0
    # Epoch seconds: launchers avoid the flavor in the provider until then.
    avoid_until: float | None = None
    labels: list[str] = field(default_factory=list)
    launcher: str | None = None
    message: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    version: int = -1

    @classmethod
    @decoder
    def from_json(cls, provider: str, key: str, raw: bytes | None,
                  version: int = -1) -> "CapacityEntry | None":
        data = load_object(raw)
        if data is None:
            return None
        entry = cls(provider=provider, key=key, **cls._decode_fields(data))
        entry.labels = string_list(entry.labels)
        entry.version = version
        return entry

    def avoided(self, now: float | None = None) -> bool:
        return self.avoid_until is not None and \
            (time.time() if now is None else now) < self.avoid_until


class CapacityStore:
    """Reads and versioned read-modify-writes of capacity entries."""

    def __init__(self, client: ZooKeeperClient):
        self.client = client

    def get(self, provider: str, key: str) -> CapacityEntry | None:
        return self.client.read_record(
            paths.capacity(provider, key),
            lambda data, version: CapacityEntry.from_json(provider, key, data, version),
            "capacity entry")

    def change(self, provider: str, key: str,
               change: Callable[[CapacityEntry], None]) -> CapacityEntry:
        """Apply ``change`` to the entry (a new one if there is none) and
        store it, again on a concurrent write, until it applies."""
        path = paths.capacity(provider, key)
        kazoo = self.client.kazoo
        for _ in range(100):
            entry = self.get(provider, key)
            if entry is None:
                entry = CapacityEntry(provider=provider, key=key)
            change(entry)
            try:
                if entry.version < 0:
                    kazoo.create(path, entry.to_json(), makepath=True)
                else:
                    kazoo.set(path, entry.to_json(), version=entry.version)
                return entry
            except (NodeExistsError, BadVersionError):
                continue
        raise RuntimeError(f"capacity entry {path}: too many concurrent writes")

    def delete(self, entry: CapacityEntry) -> bool:
        """Remove the entry unless it changed since it was read."""
        try:
            self.client.kazoo.delete(paths.capacity(entry.provider, entry.key),
                                     version=entry.version)
            return True
        except (NoNodeError, BadVersionError):
            return False

    def entries(self, provider: str | None = None) -> list[CapacityEntry]:
        """Fresh reads (for the CLI)."""
        kazoo = self.client.kazoo
        try:
            providers = [provider] if provider is not None else \
                kazoo.get_children(paths.CAPACITY)
        except NoNodeError:
            return []
        found = []
        for name in providers:
            try:
                keys = kazoo.get_children(paths.capacity_provider(name))
            except NoNodeError:
                continue
            for quoted in keys:
                entry = self.get(name, paths.capacity_key(quoted))
                if entry is not None:
                    found.append(entry)
        return sorted(found, key=lambda e: (e.provider, e.key))


class CapacityCache(TreeCache):
    """Every capacity entry, kept current by watches."""

    def __init__(self, client: ZooKeeperClient):
        super().__init__(client, paths.CAPACITY, "capacity")
        self._entries: dict[tuple[str, str], CapacityEntry] = {}

    def wants_data(self, path: str) -> bool:
        return len(paths.split(path)) == 3

    def wants_children(self, path: str) -> bool:
        return len(paths.split(path)) < 3

    def on_data(self, path, data, stat):
        _, provider, quoted = paths.split(path)
        key = (provider, paths.capacity_key(quoted))
        self.keep(self._entries, key, self.decode(path, lambda: CapacityEntry.from_json(
            key[0], key[1], data, stat.version)))

    def on_deleted(self, path):
        parts = paths.split(path)
        if len(parts) == 3:
            key = (parts[1], paths.capacity_key(parts[2]))
            old = self._entries.pop(key, None)
            if old is not None:
                self.notify("deleted", key, old)

    def get(self, provider: str, key: str) -> CapacityEntry | None:
        with self._lock:
            return self._entries.get((provider, key))

    def entries(self) -> list[CapacityEntry]:
        with self._lock:
            return list(self._entries.values())
