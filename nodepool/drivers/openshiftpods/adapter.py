"""The ``openshiftpods`` driver's adapter: a node is a pod named
``<label>-<node id>`` in the project named like its pool. The job gets the
context's own token (no service account is made), and the node's external
id is ``<project>-<pod>``, as upstream writes it.
"""

from __future__ import annotations

import logging
from functools import partial

from nodepool.drivers.base import (
    META_NODE_ID, META_POOL, META_PROVIDER, Instance, NotFound, Resource, StateMachine,
)
from nodepool.drivers.kubernetes.adapter import KubernetesAdapter, LeakedNode
from nodepool.drivers.kubernetes.client import call, gone
from nodepool.drivers.kubernetes.config import KubernetesLabel
from nodepool.drivers.kubernetes.machines import NodePlan, Stage, Staged, deletion
from nodepool.drivers.kubernetes.pods import object_labels

log = logging.getLogger("nodepool.drivers.openshiftpods")


class OpenShiftPodsAdapter(KubernetesAdapter):
    def plan(self, label: KubernetesLabel, metadata: dict[str, str]) -> NodePlan:
        node_id, pool = metadata[META_NODE_ID], metadata[META_POOL]
        pod = f"{label.name}-{node_id}"
        plan = NodePlan(node_id=node_id, pool=pool, label=label,
                        labels=object_labels(metadata, label), namespace=pool, pod=pod,
                        external_id=f"{pool}-{pod}")
        plan.token, plan.ca_crt = self.cluster.token, self.cluster.ca_crt
        return plan

    def create_stages(self, plan: NodePlan) -> list[Stage]:
        return self.pod_stages(plan)

    def split(self, external_id: str) -> tuple[str, str] | None:
        """(project, pod) of an external id, by the longest pool name that
        starts it."""
        for pool in sorted(self.provider.pools, key=len, reverse=True):
            if external_id.startswith(f"{pool}-"):
                return pool, external_id[len(pool) + 1:]
        return None

    def delete_state_machine(self, external_id) -> StateMachine:
        where = self.split(str(external_id))
        if where is None:
            def unknown():
                log.warning("Pod %s is in no project of provider %s's pools; "
                            "not deleting it", external_id, self.provider.name)
                raise NotFound(external_id)
            return Staged(self.executor, [Stage("deleting", unknown)], lambda: None,
                          f"pod {external_id}")
        project, pod = where
        core = self.cluster.core
        return deletion(self.executor, f"pod {project}/{pod}",
                        partial(call, f"pod {project}/{pod}",
                                core.delete_namespaced_pod, pod, project),
                        partial(gone, f"pod {project}/{pod}",
                                core.read_namespaced_pod, pod, project))

    def pods(self, selector: str | None = None) -> list[tuple[str, dict]]:
        """(external id, labels) of the pods in the pools' projects."""
        found = []
        for project in self.provider.pools:
            listing = call(f"pods of {project}", self.cluster.core.list_namespaced_pod,
                           project, label_selector=selector)
            found += [(f"{project}-{p.metadata.name}", dict(p.metadata.labels or {}))
                      for p in listing.items]
        return found

    def list_instances(self) -> list[Instance]:
        return [Instance(external_id=external_id, metadata=labels,
                         cloud=self.cluster.context)
                for external_id, labels in self.pods()]

    def list_resources(self) -> list[Resource]:
        return [LeakedNode("pod", external_id, labels) for external_id, labels in
                self.pods(f"{META_PROVIDER}={self.provider.name}")]

    def delete_resource(self, resource: Resource) -> None:
        where = self.split(str(resource.id))
        if where is None:
            return
        project, pod = where
        try:
            call(f"pod {project}/{pod}", self.cluster.core.delete_namespaced_pod,
                 pod, project)
        except NotFound:
            pass
