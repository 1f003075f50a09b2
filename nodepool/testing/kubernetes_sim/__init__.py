"""A Kubernetes (and OpenShift project) API simulator on loopback, for the
kubernetes, openshift and openshiftpods drivers' tests.

Speaks enough of the core API (namespaces, service accounts, secrets with
the legacy token controller, TokenRequest, pods, resource quotas), RBAC
(roles, role bindings, checked for service-account tokens) and OpenShift's
``project.openshift.io/v1`` (projects, project requests) over real HTTP for
the official ``kubernetes`` client to drive it unmodified. Pods go Pending
-> Running, namespaces Active -> Terminating -> gone, token secrets are
filled in, each after a configurable delay. Faults can be injected (see
:class:`Faults`).

Runs in a test process (``KubernetesSimulator().start()``, then
``write_kubeconfig``) or on its own: ``python -m nodepool.testing.kubernetes_sim``.
"""

from __future__ import annotations

import base64
import itertools
import secrets
import threading
import time
import uuid
from collections import defaultdict

import yaml

from nodepool.testing.kubernetes_sim.http import Handler
from nodepool.testing.kubernetes_sim.model import (  # noqa: F401  (public names)
    ADMIN_TOKEN, FAKE_CA_PEM, ApiError, Faults, check_labels, check_name, pod_usage, quota_excess,
)
from nodepool.testing.loopback import LoopbackService

NODE_NAME = "sim-worker-1"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def now_rfc3339(offset: float = 0.0) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + offset))


class KubernetesSimulator(LoopbackService):
    def __init__(self, host: str = "127.0.0.1", port: int = 0,
                 pod_start_delay: float = 0.05, token_delay: float = 0.05,
                 namespace_delete_delay: float = 0.05, pod_delete_delay: float = 0.0,
                 openshift: bool = False, tls: bool = False):
        self.host = host
        self.port = port
        self.pod_start_delay = pod_start_delay
        self.token_delay = token_delay
        self.namespace_delete_delay = namespace_delete_delay
        self.pod_delete_delay = pod_delete_delay
        # Serve OpenShift's project API too.
        self.openshift = openshift
        # HTTPS with a CA of its own (then ``ca_pem`` verifies the server).
        self.tls = tls
        self.ca_pem = FAKE_CA_PEM
        self._tls_context = None
        if tls:
            from nodepool.testing.kubernetes_sim.tls import make_certificates, server_context
            self.ca_pem, cert, key = make_certificates(host)
            self._tls_context = server_context(cert, key)
        self.faults = Faults()
        self.lock = threading.RLock()
        # plural -> (namespace or "", name) -> object as served
        self.objects: dict[str, dict[tuple[str, str], dict]] = defaultdict(dict)
        # (plural, namespace, name) -> (when, what happens then)
        self._due: dict[tuple[str, str, str], tuple[float, str]] = {}
        # bearer token -> (namespace, service account); the admin is absent
        self.tokens: dict[str, tuple[str, str]] = {}
        self.requests: list[tuple[str, str]] = []
        self._version = itertools.count(1)

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> "KubernetesSimulator":
        simulator = self

        class BoundHandler(Handler):
            sim = simulator

        self._serve(BoundHandler, "kubernetes-sim", wrap=self._tls_context)
        return self

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def kubeconfig(self, context: str = "sim-admin", token: str = ADMIN_TOKEN,
                   namespace: str | None = None) -> dict:
        """A kubeconfig whose ``context`` reaches this cluster as ``token``."""
        ctx = {"cluster": "sim", "user": "sim-user"}
        if namespace:
            ctx["namespace"] = namespace
        return {"apiVersion": "v1", "kind": "Config", "preferences": {},
                "clusters": [{"name": "sim", "cluster": {
                    "server": self.url, "certificate-authority-data": b64(self.ca_pem)}}],
                "users": [{"name": "sim-user", "user": {"token": token}}],
                "contexts": [{"name": context, "context": ctx}],
                "current-context": context}

    def write_kubeconfig(self, path, **kwargs) -> str:
        with open(path, "w") as handle:
            yaml.safe_dump(self.kubeconfig(**kwargs), handle)
        return str(path)

    # -- time-driven controllers ---------------------------------------------------

    def tick(self) -> None:
        """Apply every transition that is due (callers hold the lock)."""
        now = time.monotonic()
        for key, (when, what) in list(self._due.items()):
            if when > now:
                continue
            del self._due[key]
            plural, namespace, name = key
            obj = self.objects[plural].get((namespace, name))
            if obj is None:
                continue
            if what == "gone":
                self._remove(plural, namespace, name)
            elif what == "fill-token":
                self._fill_token(obj)
            elif what in ("Running", "Failed"):
                obj["status"].update(phase=what, startTime=now_rfc3339())
                obj["spec"]["nodeName"] = NODE_NAME
                obj["status"]["hostIP"] = "192.0.2.10"
                obj["status"]["podIP"] = f"10.244.0.{next(self._version) % 250 + 2}"

    def schedule(self, plural: str, namespace: str, name: str, delay: float,
                 what: str) -> None:
        self._due[(plural, namespace, name)] = (time.monotonic() + delay, what)
        if delay <= 0:
            self.tick()

    def _remove(self, plural: str, namespace: str, name: str) -> None:
        self.objects[plural].pop((namespace, name), None)
        if plural == "namespaces":
            for kind, items in self.objects.items():
                for key in [k for k in items if k[0] == name and kind != "namespaces"]:
                    del items[key]
            self.tokens = {t: who for t, who in self.tokens.items() if who[0] != name}
        elif plural == "serviceaccounts":
            self.tokens = {t: who for t, who in self.tokens.items()
                           if who != (namespace, name)}

    def _fill_token(self, secret: dict) -> None:
        namespace = secret["metadata"]["namespace"]
        account = (secret["metadata"].get("annotations") or {}).get(
            "kubernetes.io/service-account.name")
        if (namespace, account) not in self.objects["serviceaccounts"]:
            # The token controller removes token secrets of unknown accounts.
            self._remove("secrets", namespace, secret["metadata"]["name"])
            return
        token = self.issue_token(namespace, account)
        secret["data"] = {"token": b64(token), "ca.crt": b64(self.ca_pem),
                          "namespace": b64(namespace)}

    def issue_token(self, namespace: str, account: str) -> str:
        token = f"sim-sa-{secrets.token_hex(12)}"
        self.tokens[token] = (namespace, account)
        return token

    # -- objects ----------------------------------------------------------------------

    def stamp(self, obj: dict, namespace: str | None) -> dict:
        meta = obj.setdefault("metadata", {})
        if namespace is not None:
            meta["namespace"] = namespace
        meta.update(uid=str(uuid.uuid4()), resourceVersion=str(next(self._version)),
                    creationTimestamp=now_rfc3339())
        return obj

    def add_namespace(self, name: str, labels: dict | None = None,
                      annotations: dict | None = None) -> dict:
        """A namespace as an operator (or another tool) would have made it."""
        with self.lock:
            check_name("namespaces", name, dns_label=True)
            check_labels("Namespace", name, labels)
            if ("", name) in self.objects["namespaces"]:
                raise ApiError(409, f'namespaces "{name}" already exists')
            namespace = self.stamp({"apiVersion": "v1", "kind": "Namespace",
                                    "metadata": {"name": name, "labels": dict(labels or {}),
                                                 "annotations": dict(annotations or {})},
                                    "spec": {"finalizers": ["kubernetes"]},
                                    "status": {"phase": "Active"}}, None)
            self.objects["namespaces"][("", name)] = namespace
            # The service account controller gives every namespace its default.
            self.objects["serviceaccounts"][(name, "default")] = self.stamp(
                {"apiVersion": "v1", "kind": "ServiceAccount",
                 "metadata": {"name": "default"}}, name)
            return namespace

    def add_pod(self, namespace: str, name: str, labels: dict | None = None,
                image: str = "registry.example.org/other:latest") -> dict:
        """A pod somebody else runs (not created through the API's checks)."""
        with self.lock:
            pod = self.stamp({"apiVersion": "v1", "kind": "Pod",
                              "metadata": {"name": name, "labels": dict(labels or {})},
                              "spec": {"containers": [{"name": "main", "image": image}]},
                              "status": {"phase": "Pending"}}, namespace)
            self.objects["pods"][(namespace, name)] = pod
            self.schedule("pods", namespace, name, 0, "Running")
            return pod

    def add_resource_quota(self, namespace: str, hard: dict, name: str = "quota") -> dict:
        with self.lock:
            quota = self.stamp({"apiVersion": "v1", "kind": "ResourceQuota",
                                "metadata": {"name": name}, "spec": {"hard": dict(hard)}},
                               namespace)
            self.objects["resourcequotas"][(namespace, name)] = quota
            return quota

    def namespace_usage(self, namespace: str) -> dict[str, float]:
        used: dict[str, float] = {}
        for (ns, _), pod in self.objects["pods"].items():
            if ns != namespace or pod["status"].get("phase") in ("Succeeded", "Failed"):
                continue
            for key, value in pod_usage(pod).items():
                used[key] = used.get(key, 0.0) + value
        return used

    def check_quota(self, namespace: str, pod: dict) -> None:
        need = pod_usage(pod)
        used = self.namespace_usage(namespace)
        for (ns, name), quota in self.objects["resourcequotas"].items():
            if ns != namespace:
                continue
            over = quota_excess(quota, used, need)
            if over:
                hard = quota["spec"]["hard"]
                requested = ",".join(f"{k}={need.get(k, 0):g}" for k in over)
                in_use = ",".join(f"{k}={used.get(k, 0):g}" for k in over)
                limited = ",".join(f"{k}={hard[k]}" for k in over)
                raise ApiError(403, f'pods "{pod["metadata"]["name"]}" is forbidden: '
                               f"exceeded quota: {name}, requested: {requested}, "
                               f"used: {in_use}, limited: {limited}")

    # -- what tests look at -------------------------------------------------------------

    def names(self, plural: str, namespace: str | None = None) -> set[str]:
        with self.lock:
            self.tick()
            return {name for (ns, name) in self.objects[plural]
                    if namespace is None or ns == namespace}

    def get(self, plural: str, name: str, namespace: str = "") -> dict | None:
        with self.lock:
            self.tick()
            return self.objects[plural].get((namespace, name))

    def count(self, method: str, prefix: str) -> int:
        with self.lock:
            return sum(1 for m, p in self.requests if m == method and p.startswith(prefix))
