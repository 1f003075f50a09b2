"""Kubernetes clusters: a node is a namespace with a service account, or a
pod in one, reached by Zuul with ``kubectl`` (no images, no SSH)."""

from __future__ import annotations

from nodepool.config.model import Provider
from nodepool.drivers.base import Adapter, Capabilities, Driver
from nodepool.drivers.kubernetes.config import KubernetesConfig, KubernetesProvider


class KubernetesDriver(KubernetesConfig, Driver):
    # Launches nodes; boots no images; the cluster reports no quota of its
    # own (pool limits and the namespace ResourceQuota refusals count).
    capabilities = Capabilities(launches_instances=True, manages_images=False,
                                reports_quota=False)

    def make_adapter(self, provider: Provider) -> Adapter:
        from nodepool.drivers.kubernetes.adapter import KubernetesAdapter
        assert isinstance(provider, KubernetesProvider)
        return KubernetesAdapter(provider)

    def connection_key(self, provider: Provider) -> tuple:
        assert isinstance(provider, KubernetesProvider)
        return (provider.driver, provider.context)


DRIVER = KubernetesDriver()
