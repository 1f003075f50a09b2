"""The simulator's HTTP handler: authentication, RBAC for service-account
tokens, path parsing, and each kind's create/read/list/delete rules."""

from __future__ import annotations

import copy
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from nodepool.testing.loopback import QuietJSONHandler
from nodepool.testing.kubernetes_sim.model import (
    ADMIN_TOKEN, CLUSTER_ROLES, ApiError, check_labels, check_name, role_rules, rule_allows,
    selector_matches,
)

if TYPE_CHECKING:  # pragma: no cover
    from nodepool.testing.kubernetes_sim import KubernetesSimulator

# (group, plural) -> (namespaced, kind) of what the simulator stores.
KINDS = {
    ("", "namespaces"): (False, "Namespace"),
    ("", "pods"): (True, "Pod"),
    ("", "serviceaccounts"): (True, "ServiceAccount"),
    ("", "secrets"): (True, "Secret"),
    ("", "resourcequotas"): (True, "ResourceQuota"),
    ("rbac.authorization.k8s.io", "roles"): (True, "Role"),
    ("rbac.authorization.k8s.io", "rolebindings"): (True, "RoleBinding"),
}
PROJECT_GROUP = "project.openshift.io"
VERBS = {"POST": "create", "DELETE": "delete", "PUT": "update", "PATCH": "patch"}


class Request:
    """One API path, parsed: /api/v1/... or /apis/<group>/<version>/..."""

    def __init__(self, method: str, path: str):
        self.method = method
        parts = [p for p in path.split("/") if p]
        if parts[:2] == ["api", "v1"]:
            self.group, self.version, rest = "", "v1", parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            self.group, self.version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, f"the server could not find the requested resource "
                           f"({method} {path})")
        self.namespace = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            self.namespace, rest = rest[1], rest[2:]
        if not rest:
            raise ApiError(404, f"no resource in {path}")
        self.plural = rest[0]
        self.name = rest[1] if len(rest) > 1 else None
        self.sub = rest[2] if len(rest) > 2 else None

    @property
    def verb(self) -> str:
        if self.method == "GET":
            return "get" if self.name else "list"
        return VERBS.get(self.method, self.method.lower())

    @property
    def resource(self) -> str:
        return f"{self.plural}/{self.sub}" if self.sub else self.plural


class Handler(QuietJSONHandler):
    sim: "KubernetesSimulator"
    # One buffered write per response (flushed when the request is done):
    # headers and body in separate small packets meet the client's delayed
    # ACK and cost 40 ms a request.
    wbufsize = 1 << 16
    disable_nagle_algorithm = True

    # -- plumbing --------------------------------------------------------------------

    def _body(self) -> dict:
        try:
            body = self.read_json()
        except ValueError:
            raise ApiError(400, "the request body is not JSON") from None
        if body is None:
            return {}
        if not isinstance(body, dict):
            raise ApiError(400, "the request body is not an object")
        return body

    def _send(self, status: int, body: Any) -> None:
        self.send_json(status, body, {"Audit-Id": str(id(body))})

    def _dispatch(self) -> None:
        sim = self.sim
        split = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        try:
            body = self._body() if self.command in ("POST", "PUT", "PATCH") else {}
            with sim.lock:
                sim.requests.append((self.command, split.path))
                sim.tick()
                if sim.faults.http_500 > 0:
                    sim.faults.http_500 -= 1
                    raise ApiError(500, "simulated failure")
                if split.path == "/version":
                    self._send(200, {"major": "1", "minor": "30",
                                     "gitVersion": "v1.30.0-sim"})
                    return
                request = Request(self.command, split.path)
                self._authorize(request)
                status, answer = self._route(request, body, query)
        except ApiError as exc:
            self._send(exc.code, exc.status())
            return
        self._send(status, answer)

    # -- who may do what ---------------------------------------------------------------

    def _authorize(self, request: Request) -> None:
        auth = self.headers.get("Authorization") or ""
        token = auth[7:] if auth.startswith("Bearer ") else ""
        if token == ADMIN_TOKEN:
            return
        who = self.sim.tokens.get(token)
        if who is None:
            raise ApiError(401, "Unauthorized")
        namespace, account = who
        user = f"system:serviceaccount:{namespace}:{account}"
        if request.namespace == namespace and self._bound(request, namespace, account):
            return
        where = f' in the namespace "{request.namespace}"' if request.namespace \
            else " at the cluster scope"
        raise ApiError(403, f'{request.resource} is forbidden: User "{user}" cannot '
                       f'{request.verb} resource "{request.resource}" in API group '
                       f'"{request.group}"{where}')

    def _bound(self, request: Request, namespace: str, account: str) -> bool:
        objects = self.sim.objects
        for (ns, _), binding in objects["rolebindings"].items():
            if ns != namespace or not any(
                    s.get("kind") == "ServiceAccount" and s.get("name") == account
                    and s.get("namespace", ns) == namespace
                    for s in binding.get("subjects") or []):
                continue
            ref = binding.get("roleRef") or {}
            if ref.get("kind") == "ClusterRole":
                rules = CLUSTER_ROLES.get(ref.get("name"), [])
            else:
                rules = role_rules(objects["roles"].get((ns, ref.get("name"))))
            if any(rule_allows(r, request.group, request.resource, request.verb)
                   for r in rules):
                return True
        return False

    # -- routes -------------------------------------------------------------------------

    def _route(self, request: Request, body: dict, query: dict) -> tuple[int, Any]:
        if request.group == PROJECT_GROUP:
            if not self.sim.openshift:
                raise ApiError(404, "the server could not find the requested resource")
            return self._projects(request, body, query)
        if request.plural == "serviceaccounts" and request.sub == "token":
            return self._token_request(request, body)
        if request.sub is not None:
            raise ApiError(404, f"no subresource {request.sub}")
        kind = KINDS.get((request.group, request.plural))
        if kind is None:
            raise ApiError(404, f"the server could not find the requested resource "
                           f"({request.group or 'core'}/{request.plural})")
        namespaced, _ = kind
        if namespaced and request.namespace is None and not (
                request.method == "GET" and request.name is None):
            raise ApiError(404, f"{request.plural} are namespaced")
        if request.method == "GET" and request.name is None:
            return 200, self._list(request, query)
        if request.method == "GET":
            return 200, self._read(request)
        if request.method == "POST" and request.name is None:
            return 201, self._create(request, body)
        if request.method == "DELETE" and request.name is not None:
            return 200, self._delete(request.plural, request.namespace or "", request.name)
        raise ApiError(405, f"{request.method} is not supported on {request.resource}")

    def _lookup(self, plural: str, namespace: str, name: str) -> dict:
        obj = self.sim.objects[plural].get((namespace, name))
        if obj is None:
            raise ApiError(404, f'{plural} "{name}" not found')
        return obj

    def _read(self, request: Request) -> dict:
        obj = self._lookup(request.plural, request.namespace or "", request.name)
        if request.plural == "resourcequotas":
            obj = copy.deepcopy(obj)
            used = self.sim.namespace_usage(request.namespace)
            hard = obj["spec"].get("hard") or {}
            obj["status"] = {"hard": hard, "used": {k: f"{used.get(k, 0):g}"
                                                    for k in hard}}
        return obj

    def _list(self, request: Request, query: dict) -> dict:
        selector = query.get("labelSelector")
        items = [obj for (ns, _), obj in sorted(self.sim.objects[request.plural].items())
                 if (request.namespace is None or ns == request.namespace)
                 and selector_matches(selector, obj["metadata"].get("labels"))]
        kind = KINDS[(request.group, request.plural)][1]
        return {"apiVersion": f"{request.group}/v1" if request.group else "v1",
                "kind": f"{kind}List", "items": items,
                "metadata": {"resourceVersion": str(next(self.sim._version))}}

    def _create(self, request: Request, body: dict) -> dict:
        sim = self.sim
        plural, namespace = request.plural, request.namespace
        meta = body.get("metadata") or {}
        name = meta.get("name")
        if plural == "namespaces":
            return sim.add_namespace(name, meta.get("labels"), meta.get("annotations"))
        ns = sim.objects["namespaces"].get(("", namespace))
        if ns is None:
            raise ApiError(404, f'namespaces "{namespace}" not found')
        if ns["status"]["phase"] == "Terminating":
            raise ApiError(403, f'{plural} "{name}" is forbidden: unable to create new '
                           f"content in namespace {namespace} because it is being "
                           "terminated")
        kind = KINDS[(request.group, plural)][1]
        check_name(kind, name, dns_label=False)
        check_labels(kind, name, meta.get("labels"))
        if (namespace, name) in sim.objects[plural]:
            raise ApiError(409, f'{plural} "{name}" already exists')
        obj = copy.deepcopy(body)
        obj.setdefault("apiVersion", f"{request.group}/v1" if request.group else "v1")
        obj.setdefault("kind", kind)
        if plural == "pods":
            self._check_pod(obj)
            sim.check_quota(namespace, obj)
            obj["status"] = {"phase": "Pending"}
            obj["spec"].setdefault("serviceAccountName", "default")
        if plural == "rolebindings" and not body.get("roleRef"):
            raise ApiError(422, f'RoleBinding "{name}" is invalid: roleRef: Required value')
        sim.stamp(obj, namespace)
        sim.objects[plural][(namespace, name)] = obj
        if plural == "pods" and not sim.faults.never_running:
            outcome = "Running"
            if sim.faults.failed_pods > 0:
                sim.faults.failed_pods -= 1
                outcome = "Failed"
            sim.schedule("pods", namespace, name, sim.pod_start_delay, outcome)
        if plural == "secrets" and obj.get("type") == \
                "kubernetes.io/service-account-token" and not sim.faults.no_legacy_tokens:
            sim.schedule("secrets", namespace, name, sim.token_delay, "fill-token")
        return obj

    @staticmethod
    def _check_pod(pod: dict) -> None:
        name = pod["metadata"]["name"]
        containers = (pod.get("spec") or {}).get("containers")
        if not containers:
            raise ApiError(422, f'Pod "{name}" is invalid: spec.containers: Required value')
        for index, container in enumerate(containers):
            for key in ("name", "image"):
                if not container.get(key):
                    raise ApiError(422, f'Pod "{name}" is invalid: '
                                   f"spec.containers[{index}].{key}: Required value")

    def _delete(self, plural: str, namespace: str, name: str) -> dict:
        sim = self.sim
        obj = self._lookup(plural, namespace, name)
        if plural == "namespaces":
            if obj["status"]["phase"] != "Terminating":
                obj["status"]["phase"] = "Terminating"
                obj["metadata"]["deletionTimestamp"] = time.strftime(
                    "%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                sim.schedule("namespaces", "", name, sim.namespace_delete_delay, "gone")
            return obj
        if plural == "pods" and sim.pod_delete_delay > 0:
            if "deletionTimestamp" not in obj["metadata"]:
                obj["metadata"]["deletionTimestamp"] = time.strftime(
                    "%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                sim.schedule("pods", namespace, name, sim.pod_delete_delay, "gone")
            return obj
        sim._remove(plural, namespace, name)
        return obj

    def _token_request(self, request: Request, body: dict) -> tuple[int, dict]:
        if request.method != "POST":
            raise ApiError(405, "token requests are created, not read")
        self._lookup("serviceaccounts", request.namespace, request.name)
        seconds = int((body.get("spec") or {}).get("expirationSeconds") or 3600)
        token = self.sim.issue_token(request.namespace, request.name)
        answer = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                  "metadata": {"name": request.name, "namespace": request.namespace},
                  "spec": dict(body.get("spec") or {}, expirationSeconds=seconds),
                  "status": {"token": token, "expirationTimestamp": time.strftime(
                      "%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + seconds))}}
        return 201, answer

    # -- OpenShift projects -----------------------------------------------------------

    @staticmethod
    def _project(namespace: dict) -> dict:
        meta = namespace["metadata"]
        return {"apiVersion": f"{PROJECT_GROUP}/v1", "kind": "Project",
                "metadata": {k: v for k, v in meta.items() if k != "namespace"},
                "spec": {"finalizers": ["kubernetes"]},
                "status": {"phase": namespace["status"]["phase"]}}

    def _projects(self, request: Request, body: dict, query: dict) -> tuple[int, Any]:
        sim = self.sim
        if request.plural == "projectrequests" and request.method == "POST":
            name = (body.get("metadata") or {}).get("name")
            # The default project template keeps the display name and
            # description; labels of the request are not carried over.
            annotations = {"openshift.io/requester": "system:admin"}
            if body.get("displayName"):
                annotations["openshift.io/display-name"] = body["displayName"]
            if body.get("description"):
                annotations["openshift.io/description"] = body["description"]
            try:
                namespace = sim.add_namespace(name, None, annotations)
            except ApiError as exc:
                if exc.code == 409:
                    raise ApiError(409, f'project.project.openshift.io "{name}" '
                                   "already exists") from None
                raise
            return 201, self._project(namespace)
        if request.plural != "projects":
            raise ApiError(404, f"no resource {request.plural} in {PROJECT_GROUP}")
        if request.method == "GET" and request.name is None:
            selector = query.get("labelSelector")
            items = [self._project(ns) for ns in sim.objects["namespaces"].values()
                     if selector_matches(selector, ns["metadata"].get("labels"))]
            return 200, {"apiVersion": f"{PROJECT_GROUP}/v1", "kind": "ProjectList",
                         "metadata": {}, "items": items}
        if request.method == "GET":
            return 200, self._project(self._lookup("namespaces", "", request.name))
        if request.method == "DELETE":
            self._delete("namespaces", "", request.name)
            return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                         "status": "Success"}
        raise ApiError(405, f"{request.method} is not supported on projects")
