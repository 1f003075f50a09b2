"""The kubernetes, openshift and openshiftpods drivers end to end: the
launcher, a real ZooKeeper, the official Kubernetes client over HTTP and
the Kubernetes simulator (nodepool/testing/kubernetes_sim). What Zuul's
executor makes of the nodes is checked by building the job's kubeconfig
from the node records as it does, and using it against the cluster."""

import base64
import os
import subprocess
import sys

import pytest
import yaml

from conftest import wait_until
from nodepool.testing.kubernetes_sim import ADMIN_TOKEN
from nodepool.testing.zuul_client import executor_view

REPO = os.path.join(os.path.dirname(__file__), "..", "..")

KUBERNETES = """
labels:
  - name: k8s-namespace
  - name: pod-fedora
  - name: pod-custom
providers:
  - name: kube
    driver: kubernetes
    context: sim-admin
    pools:
      - name: main
{pool_extra}        node-attributes:
          executor-zone: dc1
        labels:
          - name: k8s-namespace
            type: namespace
          - name: pod-fedora
            type: pod
            image: registry.example.org/fedora:40
{label_extra}          - name: pod-custom
            type: pod
            spec:
              containers:
                - name: custom
                  image: registry.example.org/custom:1
                  command: ["sleep", "infinity"]
"""


def kubernetes(env, pool_extra="", label_extra="", **kwargs):
    return env.start(env.config(KUBERNETES.format(pool_extra=pool_extra,
                                                  label_extra=label_extra)), **kwargs)


def job_client(tmp_path, view: dict, context: str):
    """The kubernetes client as a job's playbook would use it, from the
    kubeconfig Zuul's executor writes."""
    from kubernetes import client, config
    path = tmp_path / "job-kubeconfig"
    path.write_text(yaml.safe_dump(view["kubeconfig"]))
    return client.CoreV1Api(config.new_client_from_config(config_file=str(path),
                                                          context=context))


def forbidden(call) -> bool:
    from kubernetes.client.exceptions import ApiException
    try:
        call()
    except ApiException as exc:
        return exc.status == 403
    return False


# -- configuration --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["kubernetes", "openshift", "openshiftpods"])
def test_upstream_example_configs_validate(name):
    path = os.path.join(REPO, "doc", "examples", f"{name}.yaml")
    result = subprocess.run([sys.executable, "-m", "nodepool.cmd.nodepool", "-c", path,
                             "config-validate"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "configuration is valid" in result.stderr
    from nodepool.config.loader import load_config
    config = load_config(path)
    [provider] = config.providers.values()
    assert provider.driver == name and provider.context


def test_example_keys_become_the_typed_label():
    from nodepool.config.loader import load_config
    config = load_config(os.path.join(REPO, "doc", "examples", "kubernetes.yaml"))
    pool = config.providers["kubespray"].pools["main"]
    assert (pool.max_servers, pool.max_cores, pool.max_ram) == (40, 80, 65536)
    assert pool.max_resources == {"nvidia.com/gpu": 4}
    pod = pool.labels["pod-fedora"]
    assert (pod.cpu, pod.memory, pod.storage) == (2, 2048, 10240)
    # Limits: the label's, else the pool's default limit, else the request.
    assert (pod.cpu_limit, pod.memory_limit, pod.storage_limit) == (2, 4096, 10240)
    assert pod.instance_properties == {"team": "ci"}
    assert pod.dynamic_instance_properties == {"tenant": "{request.tenant_name}"}
    assert pool.labels["kubernetes-namespace"].cpu == 1  # the pool's default
    assert pool.labels["pod-custom"].spec["containers"][0]["name"] == "pod-custom"


# -- kubernetes ------------------------------------------------------------------------


@pytest.mark.kube(tls=True)
def test_namespace_node_as_zuul_uses_it(env, kube, zuul, tmp_path):
    kubernetes(env)
    request_id = zuul.submit(["k8s-namespace"], tenant="acme")
    request = zuul.wait_for_request(request_id, timeout=30)
    assert request["state"] == "fulfilled"
    [node_id] = request["nodes"]
    node = zuul.get_node(node_id)
    namespace = f"main-{node_id}"
    assert node["connection_type"] == "namespace"
    assert node["external_id"] == namespace and node["cloud"] == "sim-admin"
    assert node["host_keys"] == [] and node["interface_ip"] is None
    assert node["attributes"] == {"executor-zone": "dc1"}
    assert node["resources"] == {"instances": 1}
    data = node["connection_port"]
    assert data["namespace"] == data["name"] == namespace
    assert data["host"] == kube.url and data["skiptls"] is False
    assert data["user"] == "zuul-worker"
    # The CA that verifies the API server (over HTTPS here) goes to the job.
    assert base64.b64decode(data["ca_crt"]).decode() == kube.ca_pem
    labels = kube.get("namespaces", namespace)["metadata"]["labels"]
    assert labels == {"nodepool_node_id": node_id, "nodepool_provider_name": "kube",
                      "nodepool_pool_name": "main",
                      "nodepool_node_label": "k8s-namespace"}

    view = executor_view(zuul.accept(request_id))
    assert view["hosts"] == {}  # a namespace is no inventory host
    context = view["resources"]["k8s-namespace"]["context"]
    assert view["resources"]["k8s-namespace"]["namespace"] == namespace
    job = job_client(tmp_path, view, context)
    # The job manages workloads in its namespace, and nothing outside it.
    job.create_namespaced_pod(namespace, {"metadata": {"name": "job-pod"}, "spec": {
        "containers": [{"name": "main", "image": "registry.example.org/app:1"}]}})
    assert [p.metadata.name for p in job.list_namespaced_pod(namespace).items] == \
        ["job-pod"]
    assert forbidden(job.list_namespace)
    assert forbidden(lambda: job.list_namespaced_pod("default"))


def test_pod_node_carries_every_pod_key(env, kube, zuul, tmp_path):
    extra = """            image-pull: Always
            image-pull-secrets:
              - name: registry-credentials
            python-path: /usr/bin/python3
            shell-type: sh
            cpu: 2
            memory: 1024
            storage: 5000
            cpu-limit: 4
            gpu: 1
            gpu-resource: nvidia.com/gpu
            env:
              - name: CI
                value: "true"
            node-selector:
              disktype: ssd
            scheduler-name: ci-scheduler
            privileged: true
            volumes:
              - name: cache
                emptyDir: {}
            volume-mounts:
              - name: cache
                mountPath: /cache
            labels:
              team: ci
            dynamic-labels:
              tenant: "{request.tenant_name}"
            annotations:
              example.org/owner: ci-team
            extra-resources:
              licences: 1
"""
    kubernetes(env, label_extra=extra)
    request_id = zuul.submit(["pod-fedora"], tenant="acme")
    [node_id] = zuul.wait_for_request(request_id, timeout=30)["nodes"]
    node = zuul.get_node(node_id)
    namespace = f"main-{node_id}"
    pod = kube.get("pods", "pod-fedora", namespace)
    meta, spec = pod["metadata"], pod["spec"]
    assert meta["labels"] == {"team": "ci", "tenant": "acme",
                              "nodepool_node_id": node_id,
                              "nodepool_provider_name": "kube",
                              "nodepool_pool_name": "main",
                              "nodepool_node_label": "pod-fedora"}
    assert meta["annotations"] == {"example.org/owner": "ci-team"}
    [container] = spec["containers"]
    assert container["image"] == "registry.example.org/fedora:40"
    assert container["imagePullPolicy"] == "Always"
    assert container["env"] == [{"name": "CI", "value": "true"}]
    assert container["resources"] == {
        "requests": {"cpu": "2", "memory": "1024Mi", "ephemeral-storage": "5000M",
                     "nvidia.com/gpu": "1.00"},
        "limits": {"cpu": "4", "memory": "1024Mi", "ephemeral-storage": "5000M",
                   "nvidia.com/gpu": "1.00"}}
    assert container["securityContext"] == {"privileged": True}
    assert container["volumeMounts"] == [{"name": "cache", "mountPath": "/cache"}]
    assert spec["volumes"] == [{"name": "cache", "emptyDir": {}}]
    assert spec["imagePullSecrets"] == [{"name": "registry-credentials"}]
    assert spec["nodeSelector"] == {"disktype": "ssd"}
    assert spec["schedulerName"] == "ci-scheduler"

    assert node["connection_type"] == "kubectl"
    assert node["interface_ip"] == node["connection_port"]["pod"] == "pod-fedora"
    assert node["host_id"] == "sim-worker-1"
    assert (node["python_path"], node["shell_type"]) == ("/usr/bin/python3", "sh")
    assert node["resources"] == {"instances": 1, "cores": 2, "ram": 1024,
                                 "ephemeral-storage": 5000, "nvidia.com/gpu": 1,
                                 "licences": 1}

    view = executor_view(zuul.accept(request_id))
    host = view["hosts"]["pod-fedora"]
    assert host["ansible_connection"] == "kubectl"
    assert host["ansible_host"] == "pod-fedora"
    assert view["resources"]["pod-fedora"] == {
        "namespace": namespace, "pod": "pod-fedora",
        "context": host["ansible_kubectl_context"]}
    job = job_client(tmp_path, view, host["ansible_kubectl_context"])
    # A pod node's account reaches its pod and nothing more.
    assert job.read_namespaced_pod("pod-fedora", namespace).status.phase == "Running"
    assert forbidden(lambda: job.delete_namespaced_pod("pod-fedora", namespace))
    assert forbidden(lambda: job.create_namespaced_pod(namespace, {
        "metadata": {"name": "extra"},
        "spec": {"containers": [{"name": "x", "image": "x"}]}}))


def test_pod_label_with_its_own_spec(env, kube, zuul):
    kubernetes(env)
    request = zuul.wait_for_request(zuul.submit(["pod-custom"]), timeout=30)
    [node_id] = request["nodes"]
    pod = kube.get("pods", "pod-custom", f"main-{node_id}")
    assert pod["spec"]["containers"] == [{"name": "custom",
                                          "image": "registry.example.org/custom:1",
                                          "command": ["sleep", "infinity"]}]
    assert pod["metadata"]["labels"]["nodepool_node_id"] == node_id


def test_used_nodes_leave_nothing_behind(env, kube, zuul):
    kubernetes(env)
    ids = [zuul.submit([label]) for label in ("k8s-namespace", "pod-fedora",
                                              "pod-custom")]
    for request_id in ids:
        assert zuul.wait_for_request(request_id, timeout=30)["state"] == "fulfilled"
        zuul.run_job(request_id)
    wait_until(lambda: not kube.names("namespaces") and not kube.names("pods"),
               timeout=30, message="namespaces and pods deleted")
    wait_until(lambda: not env.launchers[0].nodes.nodes(), timeout=30,
               message="node records deleted")


def test_a_burst_of_200_pods_leaves_nothing_behind(env, kube, zuul):
    kubernetes(env, pool_extra="        max-servers: 200\n")
    ids = [zuul.submit(["pod-fedora"]) for _ in range(200)]
    results = [zuul.wait_for_request(r, timeout=300) for r in ids]
    assert [r["state"] for r in results] == ["fulfilled"] * 200
    nodes = {n for r in results for n in r["nodes"]}
    assert len(nodes) == 200
    assert kube.names("pods") == {"pod-fedora"}
    assert len(kube.names("namespaces")) == 200
    for request_id in ids:
        zuul.run_job(request_id)
    wait_until(lambda: not kube.names("namespaces") and not kube.names("pods"),
               timeout=300, interval=0.2, message="every namespace and pod deleted")
    wait_until(lambda: not any(zuul.get_node(n) for n in nodes), timeout=60,
               interval=0.2, message="every node record deleted")


def test_failed_pods_are_retried_and_their_namespaces_deleted(env, kube, zuul):
    kube.faults.failed_pods = 2
    kubernetes(env)
    request = zuul.wait_for_request(zuul.submit(["pod-fedora"]), timeout=30)
    assert request["state"] == "fulfilled" and kube.faults.failed_pods == 0
    [node_id] = request["nodes"]
    wait_until(lambda: kube.names("namespaces") == {f"main-{node_id}"}, timeout=30,
               message="only the ready node's namespace is left")


@pytest.mark.kube(namespace_delete_delay=0.5)
def test_leaked_namespaces_and_pods_go_foreign_ones_stay(env, kube, zuul, statsd):
    ours = {"nodepool_provider_name": "kube", "nodepool_node_id": "0000009999",
            "nodepool_pool_name": "main"}
    kube.add_namespace("main-0000009999", ours)
    kube.add_pod("main-0000009999", "pod-fedora", ours)
    kube.add_namespace("team-apps")
    kube.add_pod("team-apps", "stray", {**ours, "nodepool_node_id": "0000009998"})
    kube.add_pod("team-apps", "web", {"app": "web"})
    kube.add_namespace("other-0000009997", {**ours, "nodepool_provider_name": "other"})
    kubernetes(env)
    wait_until(lambda: "main-0000009999" not in kube.names("namespaces")
               and kube.names("pods", "team-apps") == {"web"}, timeout=30,
               message="leaks removed")
    assert {"team-apps", "other-0000009997"} <= kube.names("namespaces")
    assert statsd.wait_for(lambda keys: "nodepool.provider.kube.leaked.nodes" in keys)


@pytest.mark.kube(tls=True)
def test_token_request_when_legacy_tokens_stay_empty(kube, monkeypatch):
    """A cluster whose token controller no longer fills token secrets in:
    the node gets a TokenRequest token instead, and it works."""
    from nodepool import drivers
    from nodepool.config.loader import build_config
    from nodepool.drivers.base import META_NODE_ID, META_POOL, META_PROVIDER
    from nodepool.testing.kubernetes_sim import b64

    kube.faults.no_legacy_tokens = True
    config = build_config(yaml.safe_load(KUBERNETES.format(pool_extra="",
                                                           label_extra="")))
    provider = config.providers["kube"]
    adapter = drivers.make_adapter(provider)
    adapter.token_wait = 0.2
    machine = adapter.create_state_machine(
        "np0000000001", provider.pools["main"].labels["k8s-namespace"], None,
        {META_NODE_ID: "0000000001", META_POOL: "main", META_PROVIDER: "kube"},
        None, None)
    done = []

    def step():
        instance = machine.advance()
        if machine.complete:
            done.append(instance)
        return machine.complete
    wait_until(step, timeout=20, message="namespace ready")
    adapter.stop()
    [instance] = done
    data = instance.connection_port
    assert kube.tokens[data["token"]] == ("main-0000000001", "zuul-worker")
    assert kube.get("secrets", "zuul-worker", "main-0000000001").get("data") is None
    # No secret to take the CA from: the kubeconfig's.
    assert data["ca_crt"] == b64(kube.ca_pem)


# -- quota -----------------------------------------------------------------------------


@pytest.mark.parametrize("limits,label", [
    ("        max-pods: 2\n", ""),
    ("        max-cores: 4\n", "            cpu: 2\n"),
    ("        max-ram: 2048\n", "            memory: 1024\n"),
    ("        max-resources:\n          licences: 2\n",
     "            extra-resources:\n              licences: 1\n"),
], ids=["max-pods", "max-cores", "max-ram", "max-resources"])
def test_requests_beyond_the_pool_limits_wait_then_complete(env, kube, zuul, limits,
                                                            label):
    kubernetes(env, pool_extra=limits, label_extra=label)
    first = [zuul.submit(["pod-fedora"]) for _ in range(2)]
    for request_id in first:
        assert zuul.wait_for_request(request_id, timeout=30)["state"] == "fulfilled"
    waiting = zuul.submit(["pod-fedora"])
    env.settle()
    assert zuul.get_request(waiting)["state"] == "requested"
    assert len(kube.names("namespaces")) == 2
    zuul.run_job(first[0])
    assert zuul.wait_for_request(waiting, timeout=30)["state"] == "fulfilled"


# -- openshift -------------------------------------------------------------------------

OPENSHIFT = """
labels:
  - name: os-project
  - name: os-pod
providers:
  - name: ocp
    driver: openshift
    context: sim-admin
    max-projects: 5
    pools:
      - name: main
        labels:
          - name: os-project
            type: project
          - name: os-pod
            type: pod
            image: registry.example.org/fedora:40
            cpu: 1
"""


@pytest.mark.kube(openshift=True)
def test_openshift_projects_and_pods(env, kube, zuul, tmp_path):
    env.start(env.config(OPENSHIFT))
    project_request = zuul.submit(["os-project"])
    pod_request = zuul.submit(["os-pod"])
    project = zuul.get_node(zuul.wait_for_request(project_request)["nodes"][0])
    pod = zuul.get_node(zuul.wait_for_request(pod_request)["nodes"][0])
    assert kube.count("POST", "/apis/project.openshift.io/v1/projectrequests") == 2
    assert project["connection_type"] == "project"
    assert project["external_id"] == project["connection_port"]["namespace"]
    assert pod["connection_type"] == "kubectl" and pod["interface_ip"] == "os-pod"
    assert pod["resources"] == {"instances": 1, "cores": 1}
    namespace = pod["connection_port"]["namespace"]
    assert kube.get("pods", "os-pod", namespace)["metadata"]["labels"][
        "nodepool_provider_name"] == "ocp"

    view = executor_view(zuul.accept(project_request) + zuul.accept(pod_request))
    job = job_client(tmp_path, view, view["resources"]["os-project"]["context"])
    # OpenShift's admin role in its own project.
    assert job.list_namespaced_pod(project["external_id"]).items == []
    assert forbidden(lambda: job.list_namespaced_pod(namespace))


@pytest.mark.kube(openshift=True)
def test_openshift_used_and_leaked_projects_are_deleted(env, kube, zuul):
    kube.add_namespace("main-0000009999")      # named as a node of ours: a leak
    kube.add_namespace("main-app")             # not a node's name
    kube.add_namespace("shared-0000000001")    # no pool of ours is "shared"
    env.start(env.config(OPENSHIFT))
    request_id = zuul.submit(["os-pod"])
    node_id = zuul.wait_for_request(request_id)["nodes"][0]
    wait_until(lambda: "main-0000009999" not in kube.names("namespaces"),
               timeout=30, message="leaked project deleted")
    zuul.run_job(request_id)
    wait_until(lambda: f"main-{node_id}" not in kube.names("namespaces"), timeout=30,
               message="used project deleted")
    assert kube.names("namespaces") == {"main-app", "shared-0000000001"}


# -- openshiftpods ---------------------------------------------------------------------

OPENSHIFTPODS = """
labels:
  - name: os-pod
providers:
  - name: pods
    driver: openshiftpods
    context: sim-admin
    launch-retries: 1
    pools:
      - name: ci-project
        labels:
          - name: os-pod
            image: registry.example.org/fedora:40
            cpu: 1
            memory: 512
"""


@pytest.mark.kube(tls=True)
def test_openshiftpods_pods_in_an_existing_project(env, kube, zuul, tmp_path):
    kube.add_namespace("ci-project")
    env.start(env.config(OPENSHIFTPODS))
    request_id = zuul.submit(["os-pod"])
    node_id = zuul.wait_for_request(request_id, timeout=30)["nodes"][0]
    node = zuul.get_node(node_id)
    pod = f"os-pod-{node_id}"
    assert node["external_id"] == f"ci-project-{pod}"
    assert node["interface_ip"] == pod and node["connection_type"] == "kubectl"
    data = node["connection_port"]
    # The context's own credentials: nothing is created but the pod.
    assert (data["namespace"], data["pod"], data["token"]) == ("ci-project", pod,
                                                               ADMIN_TOKEN)
    assert base64.b64decode(data["ca_crt"]).decode() == kube.ca_pem
    assert kube.names("serviceaccounts", "ci-project") == {"default"}
    view = executor_view(zuul.accept(request_id))
    job = job_client(tmp_path, view, view["hosts"]["os-pod"]["ansible_kubectl_context"])
    assert job.read_namespaced_pod(pod, "ci-project").status.phase == "Running"


def test_openshiftpods_resource_quota_defers_instead_of_failing(
        env, kube, zuul, statsd):
    kube.add_namespace("ci-project")
    kube.add_resource_quota("ci-project", {"pods": "1", "requests.cpu": "4"})
    kube.add_pod("ci-project", "web", {"app": "web"})  # not ours, counts in quota
    env.start(env.config(OPENSHIFTPODS))
    waiting = zuul.submit(["os-pod"])
    # The project's quota refuses the pod: retried, not failed (launch-retries
    # is 1, so a failure would fail the request).
    assert statsd.wait_for(lambda keys: any(k.endswith("error.quota") for k in keys))
    assert zuul.get_request(waiting)["state"] in ("requested", "pending")
    with kube.lock:
        kube.objects["pods"].pop(("ci-project", "web"))
    assert zuul.wait_for_request(waiting, timeout=60)["state"] == "fulfilled"


def test_openshiftpods_leaked_pods_go_foreign_pods_stay(env, kube, zuul):
    kube.add_namespace("ci-project")
    ours = {"nodepool_provider_name": "pods", "nodepool_node_id": "0000009999",
            "nodepool_pool_name": "ci-project"}
    kube.add_pod("ci-project", "os-pod-0000009999", ours)
    kube.add_pod("ci-project", "web", {"app": "web"})
    kube.add_pod("ci-project", "theirs-0000009998",
                 {**ours, "nodepool_provider_name": "elsewhere"})
    env.start(env.config(OPENSHIFTPODS))
    wait_until(lambda: "os-pod-0000009999" not in kube.names("pods", "ci-project"),
               timeout=30, message="leaked pod deleted")
    assert kube.names("pods", "ci-project") == {"web", "theirs-0000009998"}
