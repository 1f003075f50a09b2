"""memcloud's configuration: a provider of pools of labels, nothing else."""

from __future__ import annotations

import voluptuous as v

from nodepool.config import schema as s
from nodepool.config.model import Pool, PoolLabel, Provider


class MemCloudConfig:
    name = "memcloud"

    def schema(self) -> v.Schema:
        label = {v.Required("name"): s.NonEmptyStr}
        pool = dict(s.pool_common)
        pool["labels"] = s.ListOf(label)
        keys = dict(s.provider_common)
        keys.update({"pools": s.ListOf(pool), "max-instances": s.Int})
        return v.Schema(keys)

    def build(self, raw: dict, ctx: s.BuildContext) -> Provider:
        provider = Provider(name=raw["name"], driver=self.name,
                            max_concurrency=raw.get("max-concurrency", -1),
                            priority=raw.get("priority"))
        for p_index, pool_raw in enumerate(raw.get("pools", [])):
            pool = Pool(name=pool_raw["name"], max_servers=pool_raw.get("max-servers"),
                        priority=pool_raw.get("priority"),
                        node_attributes=pool_raw.get("node-attributes"))
            for l_index, label_raw in enumerate(pool_raw.get("labels", [])):
                if label_raw["name"] not in ctx.labels:
                    ctx.problem(("pools", p_index, "labels", l_index, "name"),
                                f"label {label_raw['name']!r} is not defined")
                pool.labels[label_raw["name"]] = PoolLabel(name=label_raw["name"])
            provider.pools[pool.name] = pool
        return provider
