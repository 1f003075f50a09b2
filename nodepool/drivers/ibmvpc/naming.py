"""How nodepool's things in IBM Cloud are recognised. VPC resources get tags
only in a separate call after they exist, too late for leak detection, so
(as upstream) the metadata lives in names: each pool's instances and
floating IPs are in the resource group ``np_<provider>_<pool>``, uploads in
``npimages_<provider>``; an instance (and its floating IP) is named
``np<node id>``, an upload ``npimage<build id>-<upload id>``."""

from __future__ import annotations

import re

from nodepool.drivers.base import (
    META_BUILD_ID, META_NODE_ID, META_POOL, META_PROVIDER, META_UPLOAD_ID,
)

NODE_RE = re.compile(r"^np([0-9]+)$")
UPLOAD_RE = re.compile(r"^npimage([0-9]+)-([0-9]+)(?:\.[a-z0-9]+)?$")
POOL_GROUP_RE = re.compile(r"^np_([A-Za-z0-9-]+)_([A-Za-z0-9-]+)$")
IMAGE_GROUP_RE = re.compile(r"^npimages_([A-Za-z0-9-]+)$")


def pool_group(provider: str, pool: str) -> str:
    return f"np_{provider}_{pool}"


def image_group(provider: str) -> str:
    return f"npimages_{provider}"


def metadata(name: str, group: str | None) -> dict[str, str]:
    """What an object's name and its resource group's name say about it."""
    found: dict[str, str] = {}
    node = NODE_RE.match(name or "")
    upload = UPLOAD_RE.match(name or "")
    if node:
        found[META_NODE_ID] = node.group(1)
    elif upload:
        found[META_BUILD_ID], found[META_UPLOAD_ID] = upload.group(1), upload.group(2)
    pool = POOL_GROUP_RE.match(group or "")
    images = IMAGE_GROUP_RE.match(group or "")
    if pool:
        found[META_PROVIDER], found[META_POOL] = pool.group(1), pool.group(2)
    elif images:
        found[META_PROVIDER] = images.group(1)
    return found
