"""Backing nodes for drivers whose nodes live on other nodepool nodes.

The metastatic driver hands out slots of big nodes that nodepool itself
launched. It gets those nodes the way Zuul does, through node requests, and
keeps them with a lock that outlives the launcher, as upstream Nodepool
does, so an upstream launcher or a restarted one recognises them. The
driver never touches ZooKeeper: this service does it for it
(:class:`nodepool.drivers.base.BackingNodes`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from nodepool.zk.records import Node, NodeRequest, NodeState, RequestState
from nodepool.zk.store import RecordNotFound

if TYPE_CHECKING:  # pragma: no cover
    from nodepool.launcher.launcher import Launcher

log = logging.getLogger("nodepool.launcher.backing")

# How long a claim waits for the node's lock (Zuul-like requestors wait too:
# the fulfilling launcher releases it right after fulfilling).
CLAIM_LOCK_TIMEOUT = 30.0
# Backing requests go in at upstream's default priority.
PRIORITY = "100"


class LauncherBackingNodes:
    """The launcher's :class:`~nodepool.drivers.base.BackingNodes`."""

    def __init__(self, launcher: "Launcher"):
        self.launcher = launcher

    @property
    def store(self):
        return self.launcher.store

    def submit(self, label: str, requestor: str) -> str:
        request = NodeRequest(node_types=[label], requestor=requestor,
                              state=RequestState.REQUESTED)
        request_id = self.store.submit_request(request, priority=PRIORITY)
        log.info("Requested a backing node of %s for %s: request %s", label,
                 requestor, request_id)
        return request_id

    def request(self, request_id: str) -> NodeRequest | None:
        return self.launcher.requests.get(request_id)

    def claim(self, request_id: str, node_id: str, holder: str,
              user_data: str) -> Node | None:
        store = self.store
        lock = store.lock_node(node_id, blocking=True, timeout=CLAIM_LOCK_TIMEOUT,
                               identifier=holder, ephemeral=False)
        if lock is None:
            log.warning("Backing node %s of request %s stayed locked; not claimed",
                        node_id, request_id)
            return None
        node = store.get_node(node_id)
        if node is None:
            store.force_unlock_node(node_id, holder)
            return None
        node.user_data = user_data
        node.set_state(NodeState.IN_USE)
        try:
            store.update_node(node)
        except RecordNotFound:
            store.force_unlock_node(node_id, holder)
            return None
        store.delete_request(request_id)
        log.info("Backing node %s (request %s) is held by %s", node_id, request_id,
                 holder)
        return node

    def update_user_data(self, node_id: str, user_data: str) -> None:
        node = self.store.get_node(node_id)
        if node is None:
            return
        node.user_data = user_data
        try:
            self.store.update_node(node)
        except RecordNotFound:
            pass

    def release(self, node_id: str, holder: str) -> None:
        store = self.store
        node = store.get_node(node_id)
        if node is not None and node.state != NodeState.USED:
            node.set_state(NodeState.USED)
            try:
                store.update_node(node)
            except RecordNotFound:
                pass
        # Marked used before unlocked: whoever locks it next deletes it.
        store.force_unlock_node(node_id, holder)
        log.info("Backing node %s released by %s", node_id, holder)

    def cancel(self, request_id: str) -> None:
        if self.store.delete_request(request_id):
            log.info("Backing node request %s withdrawn", request_id)

    def node(self, node_id: str) -> Node | None:
        return self.launcher.nodes.get(node_id)

    def nodes(self) -> list[Node]:
        return self.launcher.nodes.nodes()

    def requests_of(self, requestor: str) -> list[NodeRequest]:
        return [r for r in self.launcher.requests.requests() if r.requestor == requestor]

    def holders(self, node_id: str) -> list[str]:
        return self.store.node_lock_holders(node_id)
