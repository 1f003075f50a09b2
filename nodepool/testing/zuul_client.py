"""Zuul's side of the node protocol, for tests (spec section 8.4).

Each method is a direct translation of what Zuul 14 does over ZooKeeper, using
plain kazoo calls and kazoo's own ``Lock`` recipe on the raw paths - on
purpose not nodepool's store - so that tests exercise the launcher exactly as
an unmodified Zuul would.
"""

from __future__ import annotations

import json
import time
import uuid
from urllib.parse import urlsplit

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError
from kazoo.recipe.lock import Lock

REQUESTS = "/nodepool/requests"
REQUEST_LOCKS = "/nodepool/requests-lock"
NODES = "/nodepool/nodes"


class FakeZuul:
    def __init__(self, hosts: str, system_id: str | None = None, timeout: float = 10.0,
                 **kazoo_kwargs):
        self.kazoo = KazooClient(hosts=hosts, timeout=timeout, **kazoo_kwargs)
        self.kazoo.start(timeout=15)
        self.system_id = system_id or uuid.uuid4().hex
        self._node_locks: dict[str, Lock] = {}

    def stop(self) -> None:
        for lock in self._node_locks.values():
            try:
                lock.release()
            except Exception:
                pass
        self.kazoo.stop()
        self.kazoo.close()

    # -- requests -------------------------------------------------------------

    def submit_async(self, labels: list[str], priority: str = "200", **kwargs):
        """Like submit, without waiting: returns kazoo's async result (a path)."""
        return self.submit(labels, priority, _async=True, **kwargs)

    def submit(self, labels: list[str], priority: str = "200",
               relative_priority: int = 0, requestor: str | None = None,
               tenant: str | None = None, provider: str | None = None,
               reuse: bool | None = None, ephemeral: bool = False,
               requestor_data: dict | None = None, _async: bool = False):
        now = time.time()
        data = {
            "requestor_data": requestor_data if requestor_data is not None else {
                "build_set_uuid": uuid.uuid4().hex, "tenant_name": tenant,
                "pipeline_name": "check", "job_uuid": uuid.uuid4().hex,
                "job_name": "unit-test", "span_info": None},
            "node_types": list(labels),
            "requestor": requestor or self.system_id,
            "created_time": now,
            "provider": provider,
            "state": "requested",
            "state_time": now,
            "relative_priority": relative_priority,
            "event_id": uuid.uuid4().hex,
            "tenant_name": tenant,
        }
        if reuse is not None:
            data["reuse"] = reuse
        if _async:
            return self.kazoo.create_async(f"{REQUESTS}/{priority}-",
                                           json.dumps(data).encode(), sequence=True,
                                           makepath=True, ephemeral=ephemeral)
        path = self.kazoo.create(f"{REQUESTS}/{priority}-", json.dumps(data).encode(),
                                 sequence=True, makepath=True, ephemeral=ephemeral)
        return path.rsplit("/", 1)[1]

    def get_request(self, request_id: str) -> dict | None:
        try:
            data, _ = self.kazoo.get(f"{REQUESTS}/{request_id}")
        except NoNodeError:
            return None
        return json.loads(data) if data else None

    def wait_for_request(self, request_id: str, states=("fulfilled", "failed"),
                         timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            request = self.get_request(request_id)
            if request is not None and request["state"] in states:
                return request
            time.sleep(0.01)
        raise TimeoutError(f"request {request_id} not in {states} after {timeout}s: "
                           f"{self.get_request(request_id)}")

    def cancel(self, request_id: str) -> None:
        try:
            self.kazoo.delete(f"{REQUESTS}/{request_id}")
        except NoNodeError:
            pass

    def revise(self, request_id: str, relative_priority: int) -> bool:
        """Zuul's priority revision: only under the request lock, versioned."""
        lock = Lock(self.kazoo, f"{REQUEST_LOCKS}/{request_id}")
        if not lock.acquire(blocking=False):
            return False
        try:
            data, stat = self.kazoo.get(f"{REQUESTS}/{request_id}")
            request = json.loads(data)
            if request["state"] != "requested":
                return False
            request["relative_priority"] = relative_priority
            self.kazoo.set(f"{REQUESTS}/{request_id}", json.dumps(request).encode(),
                           version=stat.version)
            return True
        finally:
            lock.release()

    # -- nodes ------------------------------------------------------------------

    def get_node(self, node_id: str) -> dict | None:
        try:
            data, _ = self.kazoo.get(f"{NODES}/{node_id}")
        except NoNodeError:
            return None
        return json.loads(data) if data else None

    def lock_node(self, node_id: str, blocking: bool = True,
                  timeout: float | None = 30.0) -> bool:
        lock = Lock(self.kazoo, f"{NODES}/{node_id}/lock")
        if lock.acquire(blocking=blocking, timeout=timeout if blocking else None):
            self._node_locks[node_id] = lock
            return True
        return False

    def unlock_node(self, node_id: str) -> None:
        lock = self._node_locks.pop(node_id, None)
        if lock is not None:
            lock.release()

    def accept(self, request_id: str) -> list[dict]:
        """Take the nodes of a fulfilled request, then delete the request."""
        request = self.get_request(request_id)
        try:
            if request is None or request["state"] != "fulfilled":
                raise RuntimeError(f"request {request_id} is not fulfilled: {request}")
            nodes = []
            for node_id in request["nodes"]:
                node = self.get_node(node_id)
                if node is None or node.get("allocated_to") != request_id:
                    raise RuntimeError(f"node {node_id} is not allocated to "
                                       f"{request_id}: {node}")
                if not self.lock_node(node_id, blocking=True, timeout=30):
                    raise RuntimeError(f"cannot lock node {node_id}")
                node["id"] = node_id
                nodes.append(node)
            return nodes
        except Exception:
            for node_id in (request or {}).get("nodes", []):
                self.unlock_node(node_id)
            raise
        finally:
            self.cancel(request_id)

    def _write_node(self, node: dict) -> None:
        data = dict(node)
        self.kazoo.set(f"{NODES}/{node['id']}", json.dumps(data).encode())

    def use(self, nodes: list[dict], project: str = "example.org/project") -> None:
        for node in nodes:
            node["state"] = "in-use"
            node["state_time"] = time.time()
            node["user_data"] = {"zuul_system": self.system_id, "project_name": project}
            self._write_node(node)

    def hold(self, nodes: list[dict], hold_job: str, comment: str,
             expiration: int | None = None) -> None:
        for node in nodes:
            node["state"] = "hold"
            node["state_time"] = time.time()
            node["hold_job"] = hold_job
            node["comment"] = comment
            if expiration is not None:
                node["hold_expiration"] = expiration
            self._write_node(node)

    def run_job(self, request_id: str, project: str = "example.org/project"
                ) -> list[dict]:
        """A whole job's worth: take the nodes, use them, return them."""
        nodes = self.accept(request_id)
        self.use(nodes, project)
        self.release(nodes)
        return nodes

    def release(self, nodes: list[dict]) -> None:
        for node in nodes:
            if node["state"] == "in-use":
                node["state"] = "used"
                node["state_time"] = time.time()
                self._write_node(node)
            self.unlock_node(node["id"])


def executor_view(nodes: list[dict]) -> dict:
    """What Zuul's executor makes of a job's nodes before the job runs, read
    from the same node fields it reads: the job's kubeconfig (from the
    ``connection_port`` mapping of ``kubectl``, ``namespace`` and ``project``
    nodes), the inventory hosts (pods and SSH-like nodes; a namespace or
    project is no host) and ``zuul.resources``. Nodes are named by their
    label here (Zuul names them as the job's nodeset does).

    A missing key raises KeyError, as it would fail the executor."""
    kubeconfig: dict = {"apiVersion": "v1", "kind": "Config", "preferences": {},
                        "clusters": [], "users": [], "contexts": [],
                        "current-context": None}
    hosts: dict[str, dict] = {}
    resources: dict[str, dict] = {}
    for node in nodes:
        name = node["type"][0]
        kind = node.get("connection_type")
        if kind not in ("kubectl", "namespace", "project"):
            hosts[name] = {"ansible_host": node["interface_ip"],
                           "ansible_port": node["connection_port"],
                           "ansible_user": node.get("username"),
                           "ansible_connection": kind or "ssh"}
            continue
        data = node["connection_port"]
        cluster = urlsplit(data["host"]).netloc.replace(".", "-")
        if cluster not in [c["name"] for c in kubeconfig["clusters"]]:
            entry: dict = {"server": data["host"]}
            if data.get("ca_crt"):
                entry["certificate-authority-data"] = data["ca_crt"]
            if data["skiptls"]:
                entry["insecure-skip-tls-verify"] = True
            kubeconfig["clusters"].append({"name": cluster, "cluster": entry})
        user = f"{data['namespace']}:{data['user']}"
        kubeconfig["users"].append({"name": user, "user": {"token": data["token"]}})
        context = f"{user}/{cluster}"
        kubeconfig["contexts"].append({"name": context, "context": {
            "user": user, "cluster": cluster, "namespace": data["namespace"]}})
        kubeconfig["current-context"] = kubeconfig["current-context"] or context
        resources[name] = {"namespace": data["namespace"], "context": context}
        if kind == "kubectl":
            resources[name]["pod"] = data["pod"]
            hosts[name] = {"ansible_host": node["interface_ip"],
                           "ansible_connection": "kubectl",
                           "ansible_kubectl_context": context,
                           "ansible_python_interpreter": node.get("python_path")}
    return {"kubeconfig": kubeconfig, "hosts": hosts, "resources": resources}
