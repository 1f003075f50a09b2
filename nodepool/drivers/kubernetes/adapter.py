"""The ``kubernetes`` driver's adapter: a node is a namespace named
``<pool>-<node id>`` with a service account whose token the job gets; a pod
node also runs a pod named after the label in it, and its service account
may only reach that pod. The openshift drivers subclass this and change
how the namespace is made or where the pod runs.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

from nodepool.drivers.base import (
    META_NODE_ID, META_POOL, META_PROVIDER, Adapter, Instance, NotFound, Resource,
    StateMachine,
)
from nodepool.drivers.kubernetes import access
from nodepool.drivers.kubernetes.client import call, connect, gone
from nodepool.drivers.kubernetes.config import KubernetesLabel, KubernetesProvider
from nodepool.drivers.kubernetes.machines import (
    WAIT, NodeCreate, NodePlan, Stage, deletion, wait_for_pod,
)
from nodepool.drivers.kubernetes.pods import label_need, object_labels, pod_body
from nodepool.resources import Resources

log = logging.getLogger("nodepool.drivers.kubernetes")

# Executor threads (and HTTP connections) per provider.
POOL_SIZE = 10
# How long a new token secret may stay empty before a TokenRequest token is
# asked for instead (a token controller fills it in within a second).
TOKEN_WAIT = 10.0


@dataclass
class LeakedNode(Resource):
    """A namespace, project or pod of a node no record accounts for."""

    @property
    def plural_metric_name(self) -> str:
        return "nodes"  # upstream's leak counter for these drivers


class KubernetesAdapter(Adapter):
    provider: KubernetesProvider
    # The label type (and node connection_type) of a node without a pod.
    namespace_type = "namespace"

    def __init__(self, provider: KubernetesProvider):
        super().__init__(provider)
        from nodepool.drivers import DriverUnavailable
        try:
            self.cluster = connect(provider.context, POOL_SIZE)
        except ValueError as exc:
            raise DriverUnavailable(f"provider {provider.name}: {exc}") from None
        self.executor = ThreadPoolExecutor(max_workers=POOL_SIZE,
                                           thread_name_prefix=f"k8s-{provider.name}")
        self.token_wait = TOKEN_WAIT

    def stop(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    # -- what a node is made of -------------------------------------------------------

    def plan(self, label: KubernetesLabel, metadata: dict[str, str]) -> NodePlan:
        node_id, pool = metadata[META_NODE_ID], metadata[META_POOL]
        namespace = f"{pool}-{node_id}"
        return NodePlan(node_id=node_id, pool=pool, label=label,
                        labels=object_labels(metadata, label), namespace=namespace,
                        pod=label.name if label.type == "pod" else None,
                        external_id=namespace)

    def create_stages(self, plan: NodePlan) -> list[Stage]:
        stages = [Stage("namespace", partial(self.make_namespace, plan)),
                  Stage("access", partial(self.make_access, plan)),
                  Stage("token", self.token_stage(plan))]
        if plan.pod is not None:
            stages += self.pod_stages(plan)
        return stages

    def pod_stages(self, plan: NodePlan) -> list[Stage]:
        core = self.cluster.core
        where = f"node {plan.node_id}: pod {plan.namespace}/{plan.pod}"
        return [Stage("pod", partial(call, where, core.create_namespaced_pod,
                                     plan.namespace,
                                     pod_body(plan.pod, plan.label, plan.labels))),
                Stage("starting", wait_for_pod(
                    partial(call, where, core.read_namespaced_pod, plan.pod,
                            plan.namespace), plan))]

    # -- blocking steps (on the executor) ------------------------------------------------

    def make_namespace(self, plan: NodePlan) -> None:
        log.debug("Node %s: creating namespace %s", plan.node_id, plan.namespace)
        call(f"node {plan.node_id}: namespace {plan.namespace}",
             self.cluster.core.create_namespace,
             {"apiVersion": "v1", "kind": "Namespace",
              "metadata": {"name": plan.namespace, "labels": plan.labels}})

    def make_access(self, plan: NodePlan) -> None:
        access.create_service_account(self.cluster, plan.namespace, plan.labels)
        access.grant(self.cluster, plan.namespace,
                     access.role_body(restricted=plan.pod is not None))

    def token_stage(self, plan: NodePlan):
        deadline: list[float] = []

        def run():
            if not deadline:
                deadline.append(time.monotonic() + self.token_wait)
            found = access.legacy_token(self.cluster, plan.namespace)
            if found is not None:
                plan.token, plan.ca_crt = found
                return None
            if time.monotonic() < deadline[0]:
                return WAIT
            log.info("Node %s: the token secret of %s is still empty after %ss; "
                     "using a TokenRequest token", plan.node_id, plan.namespace,
                     self.token_wait)
            plan.token = access.requested_token(self.cluster, plan.namespace)
            return None
        return run

    def instance(self, plan: NodePlan) -> Instance:
        label = plan.label
        pod = plan.pod is not None
        log.info("Node %s: %s %s is ready", plan.node_id,
                 "pod" if pod else self.namespace_type, plan.external_id)
        return Instance(
            external_id=plan.external_id, interface_ip=plan.pod,
            host_id=plan.facts.get("host_id"), cloud=self.cluster.context,
            metadata=dict(plan.labels), resources=dict(label_need(label)),
            python_path=label.python_path, shell_type=label.shell_type,
            connection_type="kubectl" if pod else self.namespace_type,
            connection_port=access.connection_data(
                self.cluster, plan.namespace, plan.token, plan.ca_crt, plan.pod),
            host_keys=[])

    # -- namespaces (the openshift driver makes projects instead) ---------------------

    def delete_namespace(self, name: str) -> None:
        call(f"namespace {name}", self.cluster.core.delete_namespace, name,
             propagation_policy="Background")

    def namespace_gone(self, name: str) -> bool:
        return gone(f"namespace {name}", self.cluster.core.read_namespace, name)

    def namespaces(self) -> list[tuple[str, dict[str, str]]]:
        """(name, labels) of the namespaces nodepool made (any provider's)."""
        found = call("namespaces", self.cluster.core.list_namespace,
                     label_selector=META_PROVIDER)
        return [(n.metadata.name, dict(n.metadata.labels or {})) for n in found.items]

    # -- the contract -----------------------------------------------------------------------

    def create_state_machine(self, hostname, label, image_external_id, metadata,
                             request, az) -> StateMachine:
        plan = self.plan(label, metadata)
        return NodeCreate(self.executor, plan, self.create_stages(plan),
                          partial(self.instance, plan))

    def delete_state_machine(self, external_id) -> StateMachine:
        return deletion(self.executor, f"{self.namespace_type} {external_id}",
                        partial(self.delete_namespace, external_id),
                        partial(self.namespace_gone, external_id))

    def list_instances(self) -> list[Instance]:
        return [Instance(external_id=name, metadata=labels, cloud=self.cluster.context)
                for name, labels in self.namespaces()]

    def list_resources(self) -> list[Resource]:
        mine = self.provider.name
        namespaces = [(name, labels) for name, labels in self.namespaces()
                      if labels.get(META_PROVIDER) == mine]
        found: list[Resource] = [LeakedNode(self.namespace_type, name, labels)
                                 for name, labels in namespaces]
        return found + self.stray_pods({name for name, _ in namespaces})

    def stray_pods(self, ours: set[str]) -> list[Resource]:
        """Pods labelled as this provider's outside its namespaces (a pod in
        one of them goes with its namespace)."""
        pods = call("pods", self.cluster.core.list_pod_for_all_namespaces,
                    label_selector=f"{META_PROVIDER}={self.provider.name}")
        return [LeakedNode("pod", f"{p.metadata.namespace}/{p.metadata.name}",
                           dict(p.metadata.labels or {}))
                for p in pods.items if p.metadata.namespace not in ours]

    def delete_resource(self, resource: Resource) -> None:
        try:
            if resource.type == "pod":
                namespace, _, name = str(resource.id).partition("/")
                call(f"pod {resource.id}", self.cluster.core.delete_namespaced_pod,
                     name, namespace)
            else:
                self.delete_namespace(resource.id)
        except NotFound:
            pass

    def quota_for_label(self, label: KubernetesLabel) -> Resources:
        return label_need(label)
