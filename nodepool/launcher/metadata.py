"""What a launch writes onto its instance: the ``groups`` entry, the label's
``instance-properties`` and ``dynamic-instance-properties``, then the
``nodepool_*`` tags (which always win, so a leak is always recognisable).

Dynamic properties are format strings over ``request``, which offers only
the request attributes upstream Nodepool lets user-visible templates read
(its ``getSafeAttributes``): ``id``, ``labels``, ``requestor``,
``requestor_data``, ``relative_priority``, ``event_id``, ``created_time`` and
``tenant_name``. A template that names anything else, or fails to format,
is logged and left out; the launch goes on.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

from nodepool.drivers.base import META_IMAGE, META_NODE_ID, META_POOL, META_PROVIDER

log = logging.getLogger("nodepool.launcher.lifecycle")

SAFE_REQUEST_ATTRIBUTES = ("id", "labels", "requestor", "requestor_data",
                           "relative_priority", "event_id", "created_time",
                           "tenant_name")


def request_attributes(request) -> SimpleNamespace:
    """The request as dynamic properties see it (None: every attribute None)."""
    values: dict[str, Any] = dict.fromkeys(SAFE_REQUEST_ATTRIBUTES)
    if request is not None:
        values.update(
            id=request.id, labels=list(request.node_types),
            requestor=request.requestor, requestor_data=request.requestor_data,
            relative_priority=request.relative_priority, event_id=request.event_id,
            created_time=request.created_time, tenant_name=request.tenant_name)
    return SimpleNamespace(**values)


def render_dynamic_properties(templates: dict, request, node_id: str | None
                              ) -> dict[str, str]:
    """Each template formatted with the request's safe attributes. Server
    metadata values must be strings (Nova refuses others), so a value that
    is not a string (a number, a boolean, as YAML reads them) is kept as its
    text rather than refused."""
    attributes = request_attributes(request)
    rendered: dict[str, str] = {}
    for key, template in templates.items():
        if not isinstance(template, str):
            rendered[str(key)] = str(template)
            continue
        try:
            rendered[str(key)] = template.format(request=attributes)
        except Exception as exc:
            log.warning("Node %s: cannot render dynamic instance property %s=%r: "
                        "%s: %s", node_id, key, template, type(exc).__name__, exc)
    return rendered


def instance_metadata(*, provider: str, pool: str, label, image_name: str | None,
                      node_id: str, request) -> dict[str, str]:
    """The metadata of a new instance, lowest precedence first."""
    meta = {"groups": f"{provider},{image_name},{label.name}"}
    meta.update({str(k): str(v) for k, v in label.instance_properties.items()})
    meta.update(render_dynamic_properties(label.dynamic_instance_properties,
                                          request, node_id))
    meta[META_NODE_ID] = node_id
    meta[META_POOL] = pool
    meta[META_PROVIDER] = provider
    if image_name:
        meta[META_IMAGE] = image_name
    return meta
