"""The simulated cluster's rules: object validation, label selectors,
resource quantities, quota and RBAC checks, and the knobs of its faults.

Pure functions over plain dicts (the objects as the API serves them); the
state and the HTTP plumbing are elsewhere."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# The bearer token of the cluster's administrator (kubeconfigs of tests).
ADMIN_TOKEN = "sim-admin-token"

# The cluster CA as kubeconfigs and token secrets carry it (base64 of a PEM);
# nothing checks it over plain HTTP, but it travels like the real one.
FAKE_CA_PEM = ("-----BEGIN CERTIFICATE-----\n"
               "TUlJQnNpbXVsYXRlZC1rdWJlcm5ldGVzLWNsdXN0ZXItY2E=\n"
               "-----END CERTIFICATE-----\n")

_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


@dataclass
class Faults:
    """Failure injection; counters decrement as failures are served."""

    http_500: int = 0             # next N API requests (any) answered 500
    failed_pods: int = 0          # next N pods go to phase Failed, not Running
    never_running: bool = False   # pods stay Pending
    # Legacy token secrets are never filled in (a cluster whose token
    # controller no longer does it): drivers must use the TokenRequest API.
    no_legacy_tokens: bool = False


class ApiError(Exception):
    """Answered as a Kubernetes ``Status`` object."""

    REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden",
               404: "NotFound", 405: "MethodNotAllowed", 409: "AlreadyExists",
               422: "Invalid", 500: "InternalError"}

    def __init__(self, code: int, message: str, reason: str | None = None):
        super().__init__(message)
        self.code = code
        self.reason = reason or self.REASONS.get(code, "Unknown")

    def status(self) -> dict:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "message": str(self), "reason": self.reason,
                "code": self.code}


# -- names and labels ---------------------------------------------------------------

def check_name(kind: str, name: Any, dns_label: bool) -> None:
    pattern, limit = (_DNS_LABEL, 63) if dns_label else (_DNS_SUBDOMAIN, 253)
    if not isinstance(name, str) or len(name) > limit or not pattern.fullmatch(name):
        raise ApiError(422, f'{kind} "{name}" is invalid: metadata.name: Invalid '
                       f'value: "{name}": a lowercase RFC 1123 '
                       f'{"label" if dns_label else "subdomain"} must consist of '
                       "lower case alphanumeric characters or '-'")


def check_labels(kind: str, name: str, labels: Any) -> None:
    if labels is None:
        return
    if not isinstance(labels, dict):
        raise ApiError(400, f"{kind} {name}: metadata.labels must be a mapping")
    for key, value in labels.items():
        prefix, _, short = str(key).rpartition("/")
        if len(short) > 63 or not _LABEL_NAME.fullmatch(short) or \
                (prefix and not _DNS_SUBDOMAIN.fullmatch(prefix)):
            raise ApiError(422, f'{kind} "{name}" is invalid: metadata.labels: '
                           f'Invalid value: "{key}": name part must consist of '
                           "alphanumeric characters, '-', '_' or '.'")
        if not isinstance(value, str) or len(value) > 63 or \
                (value and not _LABEL_NAME.fullmatch(value)):
            raise ApiError(422, f'{kind} "{name}" is invalid: metadata.labels: '
                           f'Invalid value: "{value}": a valid label must be an '
                           "empty string or consist of alphanumeric characters, "
                           "'-', '_' or '.', at most 63 characters")


def selector_matches(selector: str | None, labels: dict | None) -> bool:
    """Kubernetes label selector syntax: ``a=b``, ``a==b``, ``a!=b``,
    ``a in (x,y)``, ``a notin (x)``, ``a``, ``!a``, comma-separated."""
    if not selector:
        return True
    labels = labels or {}
    for term in _split_terms(selector):
        term = term.strip()
        if not term:
            continue
        match = re.fullmatch(r"(\S+?)\s+(in|notin)\s+\((.*)\)", term)
        if match:
            key, op, values = match.groups()
            wanted = {v.strip() for v in values.split(",")}
            present = key in labels and labels[key] in wanted
            if present != (op == "in"):
                return False
        elif "!=" in term:
            key, value = (s.strip() for s in term.split("!=", 1))
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = (s.strip() for s in term.replace("==", "=").split("=", 1))
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def _split_terms(selector: str) -> list[str]:
    """Split on commas outside parentheses."""
    terms, depth, current = [], 0, ""
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    terms.append(current)
    return terms


# -- quantities and quota -----------------------------------------------------------

_SUFFIXES = {"Ki": 2 ** 10, "Mi": 2 ** 20, "Gi": 2 ** 30, "Ti": 2 ** 40,
             "k": 10 ** 3, "M": 10 ** 6, "G": 10 ** 9, "T": 10 ** 12, "m": 10 ** -3}


def quantity(value: Any) -> float:
    """A Kubernetes quantity ("500m", "2", "1Gi", 3) as a number."""
    if isinstance(value, bool):
        raise ApiError(400, f"quantities must be numbers or strings, not {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if text.endswith(suffix):
            number = text[:-len(suffix)]
            try:
                return float(number) * _SUFFIXES[suffix]
            except ValueError:
                break
    try:
        return float(text)
    except ValueError:
        raise ApiError(400, f"quantities must match the regular expression: "
                       f"{text!r}") from None


def pod_usage(pod: dict) -> dict[str, float]:
    """What a pod counts against a ResourceQuota."""
    usage = {"pods": 1.0, "count/pods": 1.0}
    for container in (pod.get("spec") or {}).get("containers") or []:
        resources = container.get("resources") or {}
        for section, prefix in (("requests", "requests."), ("limits", "limits.")):
            for key, value in (resources.get(section) or {}).items():
                amount = quantity(value)
                usage[prefix + key] = usage.get(prefix + key, 0.0) + amount
                if section == "requests":  # "cpu" and "memory" mean requests
                    usage[key] = usage.get(key, 0.0) + amount
    return usage


def quota_excess(quota: dict, used: dict[str, float], new: dict[str, float]
                 ) -> list[str]:
    """The resources of ``quota`` that ``new`` would push over their limit."""
    over = []
    for key, limit in ((quota.get("spec") or {}).get("hard") or {}).items():
        if used.get(key, 0.0) + new.get(key, 0.0) > quantity(limit):
            over.append(key)
    return sorted(over)


# -- RBAC -----------------------------------------------------------------------

# The built-in cluster roles the simulator knows (what a RoleBinding may name).
CLUSTER_ROLES = {
    "admin": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}],
    "edit": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}],
    "view": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["get", "list", "watch"]}],
}


def rule_allows(rule: dict, group: str, resource: str, verb: str) -> bool:
    def has(key, value):
        return any(item in ("*", value) for item in rule.get(key) or [])
    return has("apiGroups", group) and has("resources", resource) and has("verbs", verb)


def role_rules(role: dict | None) -> list[dict]:
    """A Role's rules; an aggregated role (aggregationRule) is taken as the
    built-in role it aggregates into (edit)."""
    if role is None:
        return []
    if role.get("aggregationRule"):
        return CLUSTER_ROLES["edit"]
    return list(role.get("rules") or [])
