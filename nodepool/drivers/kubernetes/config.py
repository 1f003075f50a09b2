"""The ``kubernetes`` driver's configuration: schema and typed config, with
the knobs the ``openshift`` and ``openshiftpods`` drivers turn to reuse it
(label types, the provider's alias of max-servers, whether labels have a
type at all).

A label is either built by nodepool from keys (image, cpu, env, ...) or
given as a whole pod ``spec``; the two key sets are checked apart so an
error names the key that is wrong, not "no alternative matched".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import voluptuous as v

from nodepool.config import schema as s
from nodepool.config.model import Pool, PoolLabel, Provider

# A pod's name and a namespace's name must be DNS names (RFC 1123).
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
# A namespace named "<pool>-<10-digit node id>" has at most 63 characters.
MAX_POOL_NAME = 63 - 11
# Pods must run within this long (upstream polls 300 times a second apart).
LAUNCH_TIMEOUT = 360


@dataclass
class KubernetesLabel(PoolLabel):
    # "pod", or the driver's namespace kind ("namespace"; openshift: "project").
    type: str = "pod"
    image: str | None = None
    image_pull: str = "IfNotPresent"
    image_pull_secrets: list[dict] = field(default_factory=list)
    python_path: str = "auto"
    shell_type: str | None = None
    cpu: int | None = None
    memory: int | None = None       # MiB
    storage: int | None = None      # MB of ephemeral storage
    cpu_limit: int | None = None
    memory_limit: int | None = None
    storage_limit: int | None = None
    gpu: float | None = None
    gpu_resource: str | None = None
    env: list[dict] = field(default_factory=list)
    node_selector: dict[str, Any] | None = None
    scheduler_name: str | None = None
    privileged: bool | None = None
    volumes: list[dict] | None = None
    volume_mounts: list[dict] | None = None
    annotations: dict[str, Any] = field(default_factory=dict)
    extra_resources: dict[str, int] = field(default_factory=dict)
    # A whole pod spec given by the operator (then the keys above that shape
    # the container are not used).
    spec: dict[str, Any] | None = None
    # The label's ``labels`` and ``dynamic-labels`` are kept in the base
    # class's instance_properties / dynamic_instance_properties: the launcher
    # renders them into the metadata every instance carries.


@dataclass
class KubernetesPool(Pool):
    # openshiftpods: the project (namespace) the pool's pods run in.
    namespace: str | None = None


@dataclass
class KubernetesProvider(Provider):
    context: str | None = None


def _env_var(value: Any) -> dict:
    return v.Schema({v.Required("name"): s.Str, v.Required("value"): s.Str})(value)


class KubernetesConfig:
    """Schema and typed config of a kubernetes provider; the openshift
    drivers subclass it and change the class attributes."""

    name = "kubernetes"
    # Label types: the first makes a namespace-like node, "pod" a pod.
    namespace_type: str | None = "namespace"
    # The provider-level alias of max-servers.
    count_alias = "max-pods"
    context_required = False
    # openshiftpods: labels have no type key and a pod always needs an image.
    typed_labels = True

    # -- schema ---------------------------------------------------------------

    def label_keys(self) -> tuple[dict, dict]:
        """(keys of a label nodepool builds, keys of a label with a spec)."""
        common = {
            v.Required("name"): s.NonEmptyStr,
            "labels": s.Map,
            "dynamic-labels": s.Map,
            "annotations": s.Map,
            "python-path": s.Str,
            "shell-type": s.Str,
        }
        if self.typed_labels:
            types = [t for t in (self.namespace_type, "pod") if t]
            common[v.Required("type")] = v.In(
                types, msg=f"must be one of {', '.join(types)}")
        built = dict(common)
        built.update({
            v.Required("image") if not self.typed_labels else "image": s.Str,
            "image-pull": s.Str,
            "image-pull-secrets": s.ListOf(s.Map),
            "cpu": s.Int,
            "memory": s.Int,
            "storage": s.Int,
            "cpu-limit": s.Int,
            "memory-limit": s.Int,
            "storage-limit": s.Int,
            "gpu": s.Number,
            "gpu-resource": s.Str,
            "env": s.ListOf(_env_var),
            "node-selector": s.Map,
            "privileged": s.Bool,
            "scheduler-name": s.Str,
            "volumes": s.ListOf(s.Map),
            "volume-mounts": s.ListOf(s.Map),
            "extra-resources": {v.Extra: s.Int},
        })
        from_spec = dict(common)
        from_spec[v.Required("spec")] = s.Map
        return built, from_spec

    def label_schema(self):
        built, from_spec = (v.Schema(keys) for keys in self.label_keys())

        def validate(value):
            if isinstance(value, dict) and "spec" in value:
                return from_spec(value)
            return built(value)
        return validate

    def provider_keys(self) -> dict:
        pool = dict(s.pool_common)
        pool.update({
            "labels": s.ListOf(self.label_schema()),
            "max-pods": s.Int,
            "max-cores": s.Int,
            "max-ram": s.Int,
            "max-resources": {v.Extra: s.Int},
            "default-label-cpu": s.Int,
            "default-label-memory": s.Int,
            "default-label-storage": s.Int,
            "default-label-cpu-limit": s.Int,
            "default-label-memory-limit": s.Int,
            "default-label-storage-limit": s.Int,
            "default-label-extra-resources": {v.Extra: s.Int},
        })
        keys = dict(s.provider_common)
        keys.update({
            v.Required("pools"): s.ListOf(pool),
            v.Required("context") if self.context_required else "context": s.Str,
            "launch-retries": s.Int,
            self.count_alias: s.Int,
            "max-servers": s.Int,
            "max-cores": s.Int,
            "max-ram": s.Int,
            "max-resources": {v.Extra: s.Int},
        })
        return keys

    def schema(self) -> v.Schema:
        return v.Schema(self.provider_keys())

    # -- typed config ------------------------------------------------------------

    def build(self, raw: dict, ctx: s.BuildContext) -> KubernetesProvider:
        provider = KubernetesProvider(
            name=raw["name"], driver=self.name,
            max_concurrency=raw.get("max-concurrency", -1),
            priority=raw.get("priority"), context=raw.get("context"),
            launch_retries=raw.get("launch-retries", 3),
            launch_timeout=LAUNCH_TIMEOUT)
        defaults = {
            "max-servers": self._count(raw, self.count_alias, ctx, ()),
            "max-cores": raw.get("max-cores"),
            "max-ram": raw.get("max-ram"),
            "max-resources": dict(raw.get("max-resources", {})),
        }
        for index, pool_raw in enumerate(raw["pools"]):
            ctx.add_pool(provider.pools,
                         self._build_pool(pool_raw, defaults, ctx, ("pools", index)),
                         index)
        return provider

    @staticmethod
    def _count(raw: dict, alias: str, ctx: s.BuildContext, where: tuple) -> int | None:
        """max-servers or its alias (not both, as upstream)."""
        if alias in raw and "max-servers" in raw:
            ctx.problem(where + (alias,), f"'{alias}' is an alias of 'max-servers'; "
                        "give only one of them")
        return raw.get(alias, raw.get("max-servers"))

    def pool_name_problem(self, name: str) -> str | None:
        """Why nodes of this pool cannot be named after it, if they cannot."""
        if len(name) > MAX_POOL_NAME or not DNS_LABEL.fullmatch(name):
            return (f"pool name {name!r} cannot start a namespace name (lower case "
                    f"letters, digits and '-', at most {MAX_POOL_NAME} characters)")
        return None

    def _build_pool(self, raw: dict, defaults: dict, ctx: s.BuildContext,
                    where: tuple) -> KubernetesPool:
        max_resources = dict(defaults["max-resources"])
        max_resources.update(raw.get("max-resources", {}))
        count = self._count(raw, "max-pods", ctx, where)
        pool = KubernetesPool(
            name=raw["name"], priority=raw.get("priority"),
            max_servers=count if count is not None else defaults["max-servers"],
            node_attributes=raw.get("node-attributes"),
            max_cores=raw.get("max-cores", defaults["max-cores"]),
            max_ram=raw.get("max-ram", defaults["max-ram"]),
            max_resources=max_resources, host_key_checking=False)
        unusable = self.pool_name_problem(pool.name)
        if unusable:
            # Upstream accepts it and fails every launch; we load the file but
            # offer none of the pool's labels.
            ctx.warn(where + ("name",), f"{unusable}: the pool's labels are not "
                     "offered")
            return pool
        ctx.add_labels(pool, raw.get("labels", []),
                       lambda item, here: self._build_label(item, raw, ctx, here), where)
        return pool

    def pod_name_problem(self, label_name: str) -> str | None:
        """Why a pod cannot be named after this label, if it cannot (the
        kubernetes and openshift drivers name the pod as the label)."""
        if len(label_name) > 253 or not DNS_SUBDOMAIN.fullmatch(label_name):
            return (f"label name {label_name!r} is not a valid pod name (lower case "
                    "letters, digits, '-' and '.')")
        return None

    def _build_label(self, raw: dict, pool_raw: dict, ctx: s.BuildContext,
                     where: tuple) -> KubernetesLabel | None:
        name = raw["name"]
        if name not in ctx.labels:
            ctx.problem(where + ("name",), f"label {name!r} is not defined in the "
                        "top-level labels")
        kind = raw.get("type", "pod")
        if kind == "pod":
            unusable = self.pod_name_problem(name)
            if unusable is None and not raw.get("image") and "spec" not in raw:
                unusable = "a pod label needs 'image' or 'spec'"
            if unusable:
                ctx.warn(where, f"{unusable}: label {name!r} is not offered here")
                return None

        def default(key: str):
            return raw.get(key, pool_raw.get(f"default-label-{key}"))
        cpu, memory, storage = default("cpu"), default("memory"), default("storage")
        extra = dict(pool_raw.get("default-label-extra-resources", {}))
        extra.update(raw.get("extra-resources", {}))
        # A limit is the label's, else the pool's default limit, else the request.
        return KubernetesLabel(
            name=name, type=kind, host_key_checking=False,
            instance_properties=dict(raw.get("labels", {})),
            dynamic_instance_properties=dict(raw.get("dynamic-labels", {})),
            image=raw.get("image"), image_pull=raw.get("image-pull", "IfNotPresent"),
            image_pull_secrets=list(raw.get("image-pull-secrets", [])),
            python_path=raw.get("python-path", "auto"), shell_type=raw.get("shell-type"),
            cpu=cpu, memory=memory, storage=storage,
            cpu_limit=raw.get("cpu-limit", pool_raw.get("default-label-cpu-limit", cpu)),
            memory_limit=raw.get("memory-limit",
                                 pool_raw.get("default-label-memory-limit", memory)),
            storage_limit=raw.get("storage-limit",
                                  pool_raw.get("default-label-storage-limit", storage)),
            gpu=raw.get("gpu"), gpu_resource=raw.get("gpu-resource"),
            env=list(raw.get("env", [])), node_selector=raw.get("node-selector"),
            scheduler_name=raw.get("scheduler-name"), privileged=raw.get("privileged"),
            volumes=raw.get("volumes"), volume_mounts=raw.get("volume-mounts"),
            annotations=dict(raw.get("annotations", {})),
            extra_resources=extra, spec=raw.get("spec"))
