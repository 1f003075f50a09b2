"""OpenShift (or Kubernetes) pods in projects that already exist: a node is
a pod in the project named like its pool, reached with the context's own
credentials; no project or service account is made, so an unprivileged
account will do."""

from __future__ import annotations

from nodepool.config.model import Provider
from nodepool.drivers.base import Adapter
from nodepool.drivers.kubernetes import KubernetesDriver
from nodepool.drivers.kubernetes.config import KubernetesProvider
from nodepool.drivers.openshiftpods.config import OpenShiftPodsConfig


class OpenShiftPodsDriver(OpenShiftPodsConfig, KubernetesDriver):
    def make_adapter(self, provider: Provider) -> Adapter:
        from nodepool.drivers.openshiftpods.adapter import OpenShiftPodsAdapter
        assert isinstance(provider, KubernetesProvider)
        return OpenShiftPodsAdapter(provider)


DRIVER = OpenShiftPodsDriver()
