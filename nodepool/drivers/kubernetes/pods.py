"""What a label becomes in the cluster: the Kubernetes labels every object
of a node carries, the pod it runs, and the quota one node uses."""

from __future__ import annotations

from nodepool.drivers.base import META_IMAGE
from nodepool.drivers.kubernetes.config import KubernetesLabel
from nodepool.resources import Resources

# Upstream's label naming the nodepool label of a pod or namespace.
META_LABEL = "nodepool_node_label"
# A container that stays up for the job to exec into.
KEEP_ALIVE = {"command": ["/bin/sh", "-c"], "args": ["while true; do sleep 30; done;"]}


def object_labels(metadata: dict[str, str], label: KubernetesLabel) -> dict[str, str]:
    """The launcher's instance metadata (the label's ``labels``, the rendered
    ``dynamic-labels`` and the ``nodepool_*`` tags) as Kubernetes labels.
    The ``groups`` list is left out: commas are not allowed in label values."""
    labels = {k: v for k, v in metadata.items() if k not in ("groups", META_IMAGE)}
    labels[META_LABEL] = label.name
    return labels


def label_need(label: KubernetesLabel) -> Resources:
    """Quota of one node: cores, RAM (MiB), ephemeral storage (MB), the GPU
    resource, the label's extra resources, one instance."""
    need: dict[str, float] = {"instances": 1}
    if label.cpu:
        need["cores"] = label.cpu
    if label.memory:
        need["ram"] = label.memory
    if label.storage:
        need["ephemeral-storage"] = label.storage
    if label.gpu and label.gpu_resource:
        need[label.gpu_resource] = label.gpu
    need.update(label.extra_resources)
    return Resources(need)


def _resources(label: KubernetesLabel) -> dict:
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    for target, cpu, memory, storage in (
            (requests, label.cpu, label.memory, label.storage),
            (limits, label.cpu_limit, label.memory_limit, label.storage_limit)):
        if cpu:
            target["cpu"] = str(int(cpu))
        if memory:
            target["memory"] = f"{int(memory)}Mi"
        if storage:
            target["ephemeral-storage"] = f"{int(storage)}M"
    if label.gpu and label.gpu_resource:
        requests[label.gpu_resource] = limits[label.gpu_resource] = f"{label.gpu:.2f}"
    found = {}
    if requests:
        found["requests"] = requests
    if limits:
        found["limits"] = limits
    return found


def pod_spec(label: KubernetesLabel) -> dict:
    """The label's own ``spec``, or the one built from its keys: one
    container named after the label that sleeps until deleted."""
    if label.spec is not None:
        return label.spec
    container: dict = {"name": label.name, "image": label.image,
                       "imagePullPolicy": label.image_pull, **KEEP_ALIVE,
                       "env": [dict(e) for e in label.env]}
    resources = _resources(label)
    if resources:
        container["resources"] = resources
    if label.volume_mounts:
        container["volumeMounts"] = label.volume_mounts
    if label.privileged is not None:
        container["securityContext"] = {"privileged": label.privileged}
    spec: dict = {"containers": [container], "restartPolicy": "Never"}
    if label.image_pull_secrets:
        spec["imagePullSecrets"] = label.image_pull_secrets
    if label.node_selector:
        spec["nodeSelector"] = {str(k): str(v) for k, v in label.node_selector.items()}
    if label.scheduler_name:
        spec["schedulerName"] = label.scheduler_name
    if label.volumes:
        spec["volumes"] = label.volumes
    return spec


def pod_body(name: str, label: KubernetesLabel, labels: dict[str, str]) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": labels,
                         "annotations": {str(k): str(v)
                                         for k, v in label.annotations.items()}},
            "spec": pod_spec(label)}
