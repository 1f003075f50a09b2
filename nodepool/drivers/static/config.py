"""The ``static`` driver: configuration schema, typed config, capabilities."""

from __future__ import annotations

from dataclasses import dataclass, field

import voluptuous as v

from nodepool.config import schema as s
from nodepool.config.model import Pool, PoolLabel, Provider
from nodepool.drivers.base import Host


@dataclass
class StaticNode(Host):
    """A pre-existing host of a static pool (``slots`` is its
    max-parallel-jobs)."""

    timeout: int = 5
    host_key_checking: bool = True
    host_keys: list[str] = field(default_factory=list)
    shell_type: str | None = None
    python_path: str = "auto"


@dataclass
class StaticPool(Pool):
    nodes: list[StaticNode] = field(default_factory=list)


class StaticConfig:
    """Schema and typed config of a static provider."""

    name = "static"

    def schema(self) -> v.Schema:
        node = {
            v.Required("name"): s.NonEmptyStr,
            v.Required("labels"): s.StrOrStrList,
            "username": s.Str,
            "timeout": s.IntTimeout,
            "host-key-checking": s.Bool,
            "host-key": s.StrOrStrList,
            "connection-type": s.Str,
            "connection-port": s.Port,
            "ssh-port": s.Port,
            "shell-type": s.Str,
            "python-path": s.Str,
            "max-parallel-jobs": s.Int,
        }
        pool = dict(s.pool_common)
        pool["nodes"] = s.ListOf(node)
        keys = dict(s.provider_common)
        keys["pools"] = s.ListOf(pool)
        return v.Schema(keys)

    def build(self, raw: dict, ctx: s.BuildContext) -> Provider:
        provider = Provider(name=raw["name"], driver=self.name,
                            max_concurrency=raw.get("max-concurrency", -1),
                            priority=raw.get("priority"))
        seen: dict[tuple, tuple] = {}
        for p_index, pool_raw in enumerate(raw.get("pools", [])):
            pool = StaticPool(name=pool_raw["name"], max_servers=pool_raw.get("max-servers"),
                        priority=pool_raw.get("priority"),
                        node_attributes=pool_raw.get("node-attributes"))
            if pool.name in provider.pools:
                # Upstream keeps the later one; so do we, loudly.
                ctx.warn(("pools", p_index, "name"), f"duplicate pool name "
                         f"{pool.name!r}: this later entry replaces the earlier one")
                del provider.pools[pool.name]
            for n_index, node_raw in enumerate(pool_raw.get("nodes", [])):
                where = ("pools", p_index, "nodes", n_index)
                node = self._build_node(node_raw)
                if node.slots < 1:
                    ctx.problem(where + ("max-parallel-jobs",), "must be at least 1")
                for label in node.labels:
                    if label not in ctx.labels:
                        ctx.problem(where + ("labels",), f"label {label!r} is not "
                                    "defined in the top-level labels")
                    pool.labels.setdefault(label, PoolLabel(
                        name=label, host_key_checking=node.host_key_checking))
                if node.identity in seen:
                    ctx.problem(where + ("name",),
                                f"host {node.name!r} with user {node.username!r} "
                                f"and port {node.connection_port} is already "
                                f"defined at {s.render_path(ctx.path + seen[node.identity])}")
                seen[node.identity] = where
                pool.nodes.append(node)
            provider.pools[pool.name] = pool
        return provider

    @staticmethod
    def _build_node(raw: dict) -> StaticNode:
        labels = raw["labels"]
        if isinstance(labels, str):
            labels = labels.split()
        host_keys = raw.get("host-key", [])
        if isinstance(host_keys, str):
            host_keys = [host_keys]
        return StaticNode(
            name=raw["name"], labels=list(labels),
            username=raw.get("username", "zuul"), timeout=raw.get("timeout", 5),
            host_key_checking=raw.get("host-key-checking", True),
            host_keys=list(host_keys),
            connection_type=raw.get("connection-type", "ssh"),
            connection_port=raw.get("connection-port", raw.get("ssh-port", 22)),
            shell_type=raw.get("shell-type"),
            python_path=raw.get("python-path", "auto"),
            slots=raw.get("max-parallel-jobs", 1))
