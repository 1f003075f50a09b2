"""What a job gets to reach its namespace: a service account, its token,
a role bound to it, and the connection data written into the node record.

Zuul's executor reads the node's ``connection_port`` mapping to write the
job's kubeconfig: ``host`` (API server URL), ``skiptls``, ``ca_crt``
(base64 PEM, when TLS is verified), ``namespace``, ``user`` and ``token``,
and for a pod node ``pod`` (its name). The token is a non-expiring legacy
service-account token, as upstream hands out; a cluster whose token
controller does not fill such secrets in gets a TokenRequest token instead.
"""

from __future__ import annotations

import base64

from nodepool.drivers.kubernetes.client import Cluster, call

SERVICE_ACCOUNT = "zuul-worker"
# A TokenRequest token's lifetime (the API server may shorten it).
TOKEN_SECONDS = 7 * 24 * 3600
ALL_VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]


def create_service_account(cluster: Cluster, namespace: str, labels: dict) -> None:
    call(f"{namespace}: service account", cluster.core.create_namespaced_service_account,
         namespace, {"apiVersion": "v1", "kind": "ServiceAccount",
                     "metadata": {"name": SERVICE_ACCOUNT, "labels": labels}})
    call(f"{namespace}: token secret", cluster.core.create_namespaced_secret, namespace,
         {"apiVersion": "v1", "kind": "Secret",
          "type": "kubernetes.io/service-account-token",
          "metadata": {"name": SERVICE_ACCOUNT, "labels": labels, "annotations": {
              "kubernetes.io/service-account.name": SERVICE_ACCOUNT}}})


def legacy_token(cluster: Cluster, namespace: str) -> tuple[str, str | None] | None:
    """(token, base64 CA) once the token controller filled the secret in."""
    secret = call(f"{namespace}: token secret", cluster.core.read_namespaced_secret,
                  SERVICE_ACCOUNT, namespace)
    data = secret.data or {}
    if not data.get("token"):
        return None
    return base64.b64decode(data["token"]).decode(), data.get("ca.crt")


def requested_token(cluster: Cluster, namespace: str) -> str:
    answer = call(f"{namespace}: token request",
                  cluster.core.create_namespaced_service_account_token,
                  SERVICE_ACCOUNT, namespace,
                  {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                   "spec": {"audiences": [], "expirationSeconds": TOKEN_SECONDS}})
    return answer.status.token


def role_body(restricted: bool) -> dict:
    """Pod nodes may only exec into, port-forward to and read their pod;
    namespace nodes may manage the usual workload objects of their namespace."""
    if restricted:
        rules = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
                 {"apiGroups": [""], "resources": ["pods/exec", "pods/log",
                                                   "pods/portforward"],
                  "verbs": ALL_VERBS}]
        return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": {"name": "zuul-restricted"}, "rules": rules}
    rules = [{"apiGroups": [""],
              "resources": ["pods", "pods/exec", "pods/log", "pods/portforward",
                            "services", "endpoints", "configmaps", "secrets",
                            "persistentvolumeclaims", "serviceaccounts"],
              "verbs": ALL_VERBS},
             {"apiGroups": ["apps", "batch"],
              "resources": ["deployments", "replicasets", "statefulsets",
                            "daemonsets", "jobs", "cronjobs"],
              "verbs": ALL_VERBS}]
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "zuul"}, "rules": rules}


def grant(cluster: Cluster, namespace: str, role: dict | None,
          cluster_role: str | None = None) -> None:
    """Bind the service account to ``role`` (created here) or to a built-in
    cluster role of that name (e.g. OpenShift's ``admin``)."""
    if role is not None:
        call(f"{namespace}: role", cluster.rbac.create_namespaced_role, namespace, role)
        ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
               "name": role["metadata"]["name"]}
    else:
        ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
               "name": cluster_role}
    call(f"{namespace}: role binding", cluster.rbac.create_namespaced_role_binding,
         namespace, {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                     "metadata": {"name": "zuul-role"}, "roleRef": ref,
                     "subjects": [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT,
                                   "namespace": namespace}]})


def connection_data(cluster: Cluster, namespace: str, token: str | None,
                    ca_crt: str | None, pod: str | None = None) -> dict:
    """The node's ``connection_port`` as upstream writes it."""
    data = {"name": namespace, "namespace": namespace, "host": cluster.host,
            "skiptls": not cluster.verify_ssl, "token": token, "user": SERVICE_ACCOUNT}
    if not data["skiptls"]:
        data["ca_crt"] = ca_crt or cluster.ca_crt
    if pod is not None:
        data["pod"] = pod
    return data
