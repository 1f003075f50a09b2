"""The ``openshiftpods`` driver's configuration: the kubernetes driver's pod
keys without ``type`` (every label is a pod, and needs ``image`` unless it
has a ``spec``); a pool's name is the project its pods run in."""

from __future__ import annotations

from nodepool.drivers.kubernetes.config import DNS_LABEL, DNS_SUBDOMAIN, KubernetesConfig

# A pod is named "<label>-<10-digit node id>".
NODE_ID_SUFFIX = 11


class OpenShiftPodsConfig(KubernetesConfig):
    name = "openshiftpods"
    namespace_type = None
    count_alias = "max-pods"
    context_required = True
    typed_labels = False

    def pool_name_problem(self, name: str) -> str | None:
        if len(name) > 63 or not DNS_LABEL.fullmatch(name):
            return f"pool name {name!r} is not a project name"
        return None

    def pod_name_problem(self, label_name: str) -> str | None:
        # Also a label value (nodepool_node_label): at most 63 characters.
        if len(label_name) + NODE_ID_SUFFIX > 63 or \
                not DNS_SUBDOMAIN.fullmatch(label_name):
            return (f"label name {label_name!r} cannot start a pod name (lower case "
                    "letters, digits, '-' and '.', at most "
                    f"{63 - NODE_ID_SUFFIX} characters)")
        return None
