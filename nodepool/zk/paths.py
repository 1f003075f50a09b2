"""Every znode path nodepool reads or writes, in one place.

The layout is the wire contract shared with Zuul and upstream Nodepool
(spec section 1.3); nothing else in the code base builds these strings.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

ROOT = "/nodepool"
REQUESTS = f"{ROOT}/requests"
REQUEST_LOCKS = f"{ROOT}/requests-lock"
NODES = f"{ROOT}/nodes"
IMAGES = f"{ROOT}/images"
COMPONENTS = f"{ROOT}/components"
ELECTIONS = f"{ROOT}/elections"
STATS_ELECTION = f"{ELECTIONS}/stats"
# Ours (upstream neither reads nor writes them): one fence znode per
# provider, and one per tenant with resource limits, whose versions order the
# creation of the provider's (the tenant's) nodes among launchers; and the
# capacity errors each provider answered per flavor.
QUOTA_FENCES = f"{ROOT}/quota-fences"
TENANT_FENCES = f"{ROOT}/tenant-fences"
CAPACITY = f"{ROOT}/capacity"

COMPONENT_KINDS = ("launcher", "pool", "builder")

# Name of the lock directory below a locked znode, and the marker kazoo's Lock
# recipe puts in contender names: "<uuid4 hex>__lock__<10-digit sequence>".
LOCK_DIR = "lock"
LOCK_CONTENDER_RE = re.compile(r"__lock__(-?\d{10})$")

# Node and upload ids are 10-digit sequence numbers; request ids carry a
# 3-character priority prefix that Zuul relies on (id[3] == "-").
SEQUENCE_RE = re.compile(r"^\d{10}$")
REQUEST_ID_RE = re.compile(r"^(.{3})-(\d{10})$")


def request(request_id: str) -> str:
    return f"{REQUESTS}/{request_id}"


def request_prefix(priority: str) -> str:
    """Path prefix for a new sequential request of the given priority."""
    if len(priority) != 3:
        raise ValueError(f"request priority must be 3 characters, got {priority!r}")
    return f"{REQUESTS}/{priority}-"


def request_lock(request_id: str) -> str:
    return f"{REQUEST_LOCKS}/{request_id}"


def node(node_id: str) -> str:
    return f"{NODES}/{node_id}"


def node_lock(node_id: str) -> str:
    return f"{NODES}/{node_id}/{LOCK_DIR}"


def image(image_name: str) -> str:
    return f"{IMAGES}/{image_name}"


def image_pause(image_name: str) -> str:
    return f"{IMAGES}/{image_name}/pause"


def image_build_request(image_name: str) -> str:
    return f"{IMAGES}/{image_name}/request-build"


def image_builds(image_name: str) -> str:
    return f"{IMAGES}/{image_name}/builds"


def image_build_lock(image_name: str) -> str:
    return f"{IMAGES}/{image_name}/builds/{LOCK_DIR}"


def build(image_name: str, build_id: str) -> str:
    return f"{IMAGES}/{image_name}/builds/{build_id}"


def build_lock(image_name: str, build_id: str) -> str:
    return f"{build(image_name, build_id)}/{LOCK_DIR}"


def build_providers(image_name: str, build_id: str) -> str:
    return f"{build(image_name, build_id)}/providers"


def uploads(image_name: str, build_id: str, provider: str) -> str:
    return f"{build(image_name, build_id)}/providers/{provider}/images"


def upload_lock(image_name: str, build_id: str, provider: str) -> str:
    return f"{uploads(image_name, build_id, provider)}/{LOCK_DIR}"


def upload(image_name: str, build_id: str, provider: str, upload_id: str) -> str:
    return f"{uploads(image_name, build_id, provider)}/{upload_id}"


def upload_number_lock(image_name: str, build_id: str, provider: str,
                       upload_id: str) -> str:
    return f"{upload(image_name, build_id, provider, upload_id)}/{LOCK_DIR}"


def quota_fence(provider: str) -> str:
    return f"{QUOTA_FENCES}/{provider}"


def tenant_fence(tenant: str) -> str:
    return f"{TENANT_FENCES}/{tenant}"


def capacity_provider(provider: str) -> str:
    return f"{CAPACITY}/{provider}"


def capacity(provider: str, key: str) -> str:
    """One (provider, flavor) entry; the key is quoted: flavor names may
    contain any character, "/" included."""
    return f"{CAPACITY}/{provider}/{quote(key, safe='')}"


def capacity_key(name: str) -> str:
    """The flavor key of a capacity entry's znode name."""
    return unquote(name)


def components(kind: str) -> str:
    if kind not in COMPONENT_KINDS:
        raise ValueError(f"unknown component kind {kind!r}")
    return f"{COMPONENTS}/{kind}"


def component_prefix(kind: str, hostname: str) -> str:
    return f"{components(kind)}/{hostname}"


def split(path: str) -> list[str]:
    """Path components below the root: '/nodepool/nodes/1' -> ['nodes', '1']."""
    if not path.startswith(ROOT + "/"):
        return []
    return path[len(ROOT) + 1:].split("/")


def is_lock_contender(name: str) -> bool:
    return LOCK_CONTENDER_RE.search(name) is not None


def contender_sequence(name: str) -> str:
    match = LOCK_CONTENDER_RE.search(name)
    return match.group(1) if match else ""


def parse_upload_path(path: str) -> tuple[str, str, str, str] | None:
    """'/nodepool/images/i/builds/b/providers/p/images/u' -> (i, b, p, u)."""
    parts = split(path)
    if (len(parts) == 8 and parts[0] == "images" and parts[2] == "builds"
            and parts[4] == "providers" and parts[6] == "images"):
        return parts[1], parts[3], parts[5], parts[7]
    return None
