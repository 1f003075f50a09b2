"""OpenShift clusters: a node is a project (made through a project request,
as a self-provisioner may) with a service account, or a pod in one."""

from __future__ import annotations

from nodepool.config.model import Provider
from nodepool.drivers.base import Adapter
from nodepool.drivers.kubernetes import KubernetesDriver
from nodepool.drivers.kubernetes.config import KubernetesProvider
from nodepool.drivers.openshift.config import OpenShiftConfig


class OpenShiftDriver(OpenShiftConfig, KubernetesDriver):
    def make_adapter(self, provider: Provider) -> Adapter:
        from nodepool.drivers.openshift.adapter import OpenShiftAdapter
        assert isinstance(provider, KubernetesProvider)
        return OpenShiftAdapter(provider)


DRIVER = OpenShiftDriver()
