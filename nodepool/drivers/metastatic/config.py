"""The ``metastatic`` driver's configuration: upstream's keys, typed."""

from __future__ import annotations

from dataclasses import dataclass

import voluptuous as v

from nodepool.config import schema as s
from nodepool.config.model import Pool, PoolLabel, Provider


@dataclass
class MetastaticLabel(PoolLabel):
    backing_label: str = ""
    # Jobs one backing node takes at once (its slots).
    max_parallel_jobs: int = 1
    # Seconds an idle backing node is kept for new jobs before it goes.
    grace_time: int = 60
    # Seconds a backing node is kept at least, counted from its launch.
    min_retention_time: int = 0
    # Seconds after its launch when a backing node takes no new jobs (it
    # goes once its last job is done); None: no limit.
    max_age: int | None = None


@dataclass
class MetastaticProvider(Provider):
    rate: float = 1.0


class MetastaticConfig:
    """Schema and typed config of a metastatic provider."""

    name = "metastatic"

    def schema(self) -> v.Schema:
        label = {
            v.Required("name"): s.NonEmptyStr,
            v.Required("backing-label"): s.NonEmptyStr,
            "max-parallel-jobs": s.Int,
            "grace-time": s.Int,
            "min-retention-time": s.Int,
            "max-age": s.Int,
            "host-key-checking": s.Bool,
        }
        pool = dict(s.pool_common)
        pool.update({
            v.Required("labels"): s.ListOf(label),
            "host-key-checking": s.Bool,
        })
        keys = dict(s.provider_common)
        keys.update({
            v.Required("pools"): s.ListOf(pool),
            "rate": s.FloatLike,
            "boot-timeout": s.IntTimeout,
            "launch-timeout": s.IntTimeout,
            "launch-retries": s.Int,
        })
        return v.Schema(keys)

    def build(self, raw: dict, ctx: s.BuildContext) -> Provider:
        provider = MetastaticProvider(
            name=raw["name"], driver=self.name,
            max_concurrency=raw.get("max-concurrency", -1),
            priority=raw.get("priority"),
            boot_timeout=raw.get("boot-timeout", 60),
            launch_timeout=raw.get("launch-timeout", 3600),
            launch_retries=raw.get("launch-retries", 3),
            rate=s.FloatLike(raw.get("rate", 1.0)))
        # Upstream: every label on one backing label must say the same.
        by_backing: dict[str, tuple[tuple, MetastaticLabel]] = {}
        for p_index, pool_raw in enumerate(raw.get("pools", [])):
            # Unlike the other drivers', off by default: the backing node
            # was checked when it was launched.
            pool_checking = pool_raw.get("host-key-checking", False)
            pool = Pool(name=pool_raw["name"], max_servers=pool_raw.get("max-servers"),
                        priority=pool_raw.get("priority"),
                        node_attributes=pool_raw.get("node-attributes"),
                        host_key_checking=pool_checking)
            if pool.name in provider.pools:
                ctx.warn(("pools", p_index, "name"), f"duplicate pool name "
                         f"{pool.name!r}: this later entry replaces the earlier one")
            for l_index, label_raw in enumerate(pool_raw["labels"]):
                where = ("pools", p_index, "labels", l_index)
                label = self._build_label(label_raw, pool_checking)
                self._check_label(label, where, ctx)
                earlier = by_backing.get(label.backing_label)
                if earlier is not None and _sharing(earlier[1]) != _sharing(label):
                    ctx.problem(where, f"labels on backing label {label.backing_label!r} "
                                "must all have the same max-parallel-jobs, grace-time, "
                                "min-retention-time and max-age (see "
                                f"{s.render_path(ctx.path + earlier[0])})")
                by_backing.setdefault(label.backing_label, (where, label))
                pool.labels[label.name] = label
            provider.pools[pool.name] = pool
        return provider

    @staticmethod
    def _build_label(raw: dict, pool_checking: bool) -> MetastaticLabel:
        return MetastaticLabel(
            name=raw["name"], backing_label=raw["backing-label"],
            max_parallel_jobs=raw.get("max-parallel-jobs", 1),
            grace_time=raw.get("grace-time", 60),
            min_retention_time=raw.get("min-retention-time", 0),
            max_age=raw.get("max-age"),
            host_key_checking=raw.get("host-key-checking", pool_checking))

    @staticmethod
    def _check_label(label: MetastaticLabel, where: tuple, ctx: s.BuildContext) -> None:
        if label.name not in ctx.labels:
            ctx.problem(where + ("name",), f"label {label.name!r} is not defined in "
                        "the top-level labels")
        if label.backing_label not in ctx.labels:
            ctx.problem(where + ("backing-label",), f"label {label.backing_label!r} "
                        "is not defined in the top-level labels")
        if label.backing_label == label.name:
            ctx.problem(where + ("backing-label",), "a label cannot back itself")
        if label.max_parallel_jobs < 1:
            ctx.problem(where + ("max-parallel-jobs",), "must be at least 1")
        for key, value in (("grace-time", label.grace_time),
                           ("min-retention-time", label.min_retention_time),
                           ("max-age", label.max_age)):
            if value is not None and value < 0:
                ctx.problem(where + (key,), f"must not be negative, got {value}")


def _sharing(label: MetastaticLabel) -> tuple:
    """What decides how a backing node is shared and kept."""
    return (label.max_parallel_jobs, label.grace_time, label.min_retention_time,
            label.max_age)
