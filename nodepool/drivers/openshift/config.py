"""The ``openshift`` driver's configuration: the kubernetes driver's keys,
with ``project`` labels instead of ``namespace`` ones, ``max-projects`` as
the provider's alias of max-servers, and a required ``context``."""

from __future__ import annotations

from nodepool.drivers.kubernetes.config import KubernetesConfig


class OpenShiftConfig(KubernetesConfig):
    name = "openshift"
    namespace_type = "project"
    count_alias = "max-projects"
    context_required = True
