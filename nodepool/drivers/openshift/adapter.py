"""The ``openshift`` driver's adapter: the kubernetes one, with projects.

A project is asked for with a ProjectRequest (what a self-provisioner may
do) and deleted through the project API. OpenShift's default project
template does not keep the request's labels, so a project is recognised as
a node's by its name, ``<pool>-<node id>`` of one of this provider's pools,
as upstream does; the service account and pod inside carry the labels.
The service account gets OpenShift's ``admin`` cluster role in its project.
"""

from __future__ import annotations

import re

from nodepool.drivers.base import META_NODE_ID, META_POOL, META_PROVIDER
from nodepool.drivers.kubernetes import access
from nodepool.drivers.kubernetes.adapter import KubernetesAdapter
from nodepool.drivers.kubernetes.client import call, gone
from nodepool.drivers.kubernetes.machines import NodePlan

GROUP, VERSION = "project.openshift.io", "v1"
NODE_ID = re.compile(r"\d{10,}")


class OpenShiftAdapter(KubernetesAdapter):
    namespace_type = "project"

    def make_namespace(self, plan: NodePlan) -> None:
        call(f"node {plan.node_id}: project {plan.namespace}",
             self.cluster.custom.create_cluster_custom_object,
             GROUP, VERSION, "projectrequests",
             {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ProjectRequest",
              "metadata": {"name": plan.namespace, "labels": plan.labels},
              "description": f"nodepool node {plan.node_id} of provider "
                             f"{self.provider.name}"})

    def make_access(self, plan: NodePlan) -> None:
        access.create_service_account(self.cluster, plan.namespace, plan.labels)
        access.grant(self.cluster, plan.namespace, None, cluster_role="admin")

    def delete_namespace(self, name: str) -> None:
        call(f"project {name}", self.cluster.custom.delete_cluster_custom_object,
             GROUP, VERSION, "projects", name)

    def namespace_gone(self, name: str) -> bool:
        return gone(f"project {name}", self.cluster.custom.get_cluster_custom_object,
                    GROUP, VERSION, "projects", name)

    def namespaces(self) -> list[tuple[str, dict[str, str]]]:
        """Every project the credentials see; one named after a pool of this
        provider and a node id is taken as ours."""
        found = call("projects", self.cluster.custom.list_cluster_custom_object,
                     GROUP, VERSION, "projects")
        projects = []
        for item in found.get("items") or []:
            meta = item.get("metadata") or {}
            name = meta.get("name") or ""
            labels = dict(meta.get("labels") or {})
            if META_PROVIDER not in labels:
                labels.update(self._named_as_node(name))
            projects.append((name, labels))
        return projects

    def stray_pods(self, ours: set[str]) -> list:
        # A project's pods go with it; listing pods cluster-wide needs more
        # than a self-provisioner has.
        return []

    def _named_as_node(self, name: str) -> dict[str, str]:
        for pool in self.provider.pools:
            prefix = f"{pool}-"
            if name.startswith(prefix) and NODE_ID.fullmatch(name[len(prefix):]):
                return {META_PROVIDER: self.provider.name, META_POOL: pool,
                        META_NODE_ID: name[len(prefix):]}
        return {}
