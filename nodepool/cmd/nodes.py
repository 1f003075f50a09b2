"""The ``nodepool`` node and provider subcommands: hold, delete, info,
erase, label-list and alien-image-list."""

from __future__ import annotations

import argparse
import socket
import sys
import time

# Imported up front, not when the table is printed: ``delete`` prints the
# node right after unlocking it, and its launcher may remove it at once.
from nodepool import status
from nodepool.cmd import common
from nodepool.cmd.common import EXIT_OK, CommandError

LOCK_TIMEOUT = 5.0
# ``delete --now``: how long the cloud deletion may take before we give up.
DELETE_NOW_TIMEOUT = 600.0


def _node_table(args, client, node_id: str) -> None:
    """The ``list`` table restricted to one node (empty once it is gone)."""
    rows = status.node_rows(common.read_nodes(client), node_id)
    common.print_rows(args, status.NODE_COLUMNS[:status.NODE_COLUMNS_SHORT], rows)


def _locked_node(store, node_id: str):
    """(node, lock), or (None, None) with the message printed."""
    node = store.get_node(node_id)
    if node is None:
        print(f"Node id {node_id} not found")
        return None, None
    lock = store.lock_node(node_id, blocking=True, timeout=LOCK_TIMEOUT)
    if lock is None:
        raise CommandError(f"node {node_id} is locked by someone else (in use?); "
                           f"gave up after {LOCK_TIMEOUT:.0f}s")
    node = store.get_node(node_id)
    if node is None:
        lock.release()
        print(f"Node id {node_id} not found")
        return None, None
    return node, lock


def _change_locked_node(args, change) -> int:
    """Lock the node, ``change(config, store, node, lock)``, print what is
    left of it, and unlock. (Printed under the lock: once unlocked, a node
    marked deleting may be gone before it could be shown.)"""
    from nodepool.zk.store import Store
    config, client = common.connect(args)
    try:
        store = Store(client)
        node, lock = _locked_node(store, args.id)
        if node is None:
            return EXIT_OK
        try:
            change(config, store, node, lock)
            _node_table(args, client, args.id)
        finally:
            if lock.is_acquired:
                lock.release()
    finally:
        client.disconnect()
    return EXIT_OK


def cmd_hold(args: argparse.Namespace) -> int:
    from nodepool.zk.records import NodeState

    def hold(config, store, node, lock):
        node.set_state(NodeState.HOLD)
        if args.reason:
            node.comment = args.reason
        store.update_node(node)
    return _change_locked_node(args, hold)


def cmd_delete(args: argparse.Namespace) -> int:
    from nodepool.zk.records import NodeState

    def delete(config, store, node, lock):
        provider = config.providers.get(node.provider)
        if args.now and provider is None:
            print(f"Provider {node.provider} for node {node.id} not defined on "
                  "this launcher")
            return
        if args.now:
            _delete_now(store, node, lock, provider)
        else:
            node.set_state(NodeState.DELETING)
            store.update_node(node)
    return _change_locked_node(args, delete)


def _delete_now(store, node, lock, provider) -> None:
    """The launcher's own delete (``deletion.NodeDelete``: mark deleting,
    the driver's delete state machine, retries, then the record), stepped
    here to the end."""
    from nodepool.drivers import make_adapter
    from nodepool.launcher.deletion import NodeDelete
    adapter = make_adapter(provider)
    outcome: dict[str, bool] = {}
    task = NodeDelete(node=node, lock=lock, store=store, adapter=adapter,
                      on_done=lambda _, deleted: outcome.update(deleted=deleted),
                      launcher_id=f"nodepool-cli-{socket.gethostname()}")
    deadline = time.monotonic() + DELETE_NOW_TIMEOUT
    try:
        while (delay := task.step()) is not None:
            if time.monotonic() + delay > deadline:
                raise CommandError(f"node {node.id}: instance {node.external_id} "
                                   f"still not deleted after {DELETE_NOW_TIMEOUT:.0f}s; "
                                   "it stays 'deleting' for the launcher to finish")
            time.sleep(delay)
    finally:
        adapter.stop()
    if not outcome.get("deleted"):
        raise CommandError(f"node {node.id}: not deleted; it stays 'deleting' for "
                           "the launcher to retry")


def cmd_info(args: argparse.Namespace) -> int:
    from nodepool.zk.capacity import CapacityStore
    from nodepool.zk.store import Store
    _, client = common.connect(args)
    try:
        store = Store(client)
        capacity_rows = [status.capacity_row(entry) for entry in
                         CapacityStore(client).entries(args.provider)]
        image_rows = []
        for image in store.image_names():
            for build_id in sorted(store.build_ids(image)):
                if args.provider not in store.upload_providers(image, build_id):
                    continue
                uploads = sorted(u.id for u in store.get_uploads(image, build_id,
                                                                 args.provider))
                image_rows.append({"image": image, "build": build_id,
                                   "uploads": ",".join(uploads)})
        node_rows = [{"id": node.id, "server_id": node.external_id}
                     for node, _ in common.read_nodes(client)
                     if node.provider == args.provider]
    finally:
        client.disconnect()
    if args.json:
        print(status.render_json([{"images": image_rows, "nodes": node_rows,
                                   "capacity": capacity_rows}]))
        return EXIT_OK
    print(f"ZooKeeper data for provider {args.provider}\n")
    print("Image data:")
    print(status.render_table(status.INFO_IMAGE_COLUMNS, image_rows))
    print("\nNodes:")
    print(status.render_table(status.INFO_NODE_COLUMNS, node_rows))
    print("\nCapacity errors:")
    print(status.render_table(status.INFO_CAPACITY_COLUMNS, capacity_rows))
    return EXIT_OK


def cmd_erase(args: argparse.Namespace) -> int:
    from nodepool.zk.store import Store
    if not args.force:
        print("\nWARNING! This action is not reversible!")
        answer = input(f"Erase ZooKeeper data for provider {args.provider}? [N/y] ")
        if answer.strip().lower() != "y":
            print("Aborting. No data erased.")
            return EXIT_OK
    _, client = common.connect(args)
    try:
        store = Store(client)
        print(f"Erasing build data for {args.provider}...")
        for image in store.image_names():
            for build_id in store.build_ids(image):
                if args.provider in store.upload_providers(image, build_id):
                    store.erase_provider_uploads(image, build_id, args.provider)
        print(f"Erasing node data for {args.provider}...")
        for node, _ in common.read_nodes(client):
            if node.provider == args.provider:
                store.delete_node(node)
    finally:
        client.disconnect()
    return EXIT_OK


def cmd_label_list(args: argparse.Namespace) -> int:
    from nodepool.zk.store import Store
    _, client = common.connect(args)
    try:
        pools = Store(client).components("pool")
    finally:
        client.disconnect()
    common.print_rows(args, status.LABEL_COLUMNS, status.label_rows(pools))
    return EXIT_OK


def cmd_alien_image_list(args: argparse.Namespace) -> int:
    """Cloud images carrying nodepool's properties that no upload record of
    that provider accounts for (what a crashed upload or a lost ZooKeeper
    leaves behind)."""
    from nodepool.drivers import capabilities, make_adapter
    from nodepool.zk.store import Store
    config, client = common.connect(args)
    rows = []
    try:
        store = Store(client)
        providers = [p for p in config.providers.values()
                     if capabilities(p).manages_images
                     and (args.provider is None or p.name == args.provider)]
        if args.provider is not None and not providers:
            raise CommandError(f"no image-managing provider {args.provider} in the "
                               "configuration")
        for provider in providers:
            known = set()
            for image in store.image_names():
                for build_id in store.build_ids(image):
                    known.update(u.external_id for u in store.get_uploads(
                        image, build_id, provider.name) if u.external_id)
            try:
                adapter = make_adapter(provider)
                try:
                    images = adapter.list_images()
                finally:
                    adapter.stop()
            except Exception as exc:
                print(f"warning: cannot list images of {provider.name}: {exc}",
                      file=sys.stderr)
                continue
            for image in images:
                properties = image.get("properties") or {}
                if "nodepool_build_id" in properties and image["id"] not in known:
                    rows.append({"provider": provider.name, "name": image["name"],
                                 "id": image["id"]})
    finally:
        client.disconnect()
    common.print_rows(args, status.ALIEN_IMAGE_COLUMNS, rows)
    return EXIT_OK


def add_parsers(sub) -> None:
    hold = sub.add_parser("hold", help="hold a node (keep it; nodepool will not "
                          "delete or reuse it)")
    hold.add_argument("id", help="node id")
    hold.add_argument("--reason", help="stored as the node's comment")
    hold.add_argument("--json", action="store_true", help="print JSON")
    hold.set_defaults(func=cmd_hold)

    delete = sub.add_parser("delete", help="delete a node",
                            description="Mark a node for deletion by its launcher, "
                            "or with --now delete it from the cloud right here.")
    delete.add_argument("id", help="node id")
    delete.add_argument("--now", action="store_true",
                        help="delete the instance now, from this process")
    delete.add_argument("--json", action="store_true", help="print JSON")
    delete.set_defaults(func=cmd_delete)

    info = sub.add_parser("info", help="show a provider's data in ZooKeeper")
    info.add_argument("provider")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=cmd_info)

    erase = sub.add_parser("erase", help="erase a removed provider's data from "
                           "ZooKeeper (nothing is deleted in the cloud)")
    erase.add_argument("provider")
    erase.add_argument("--force", action="store_true", help="do not ask")
    erase.set_defaults(func=cmd_erase)

    labels = sub.add_parser("label-list", help="labels the running launchers serve")
    labels.add_argument("--json", action="store_true", help="print JSON")
    labels.set_defaults(func=cmd_label_list)

    alien = sub.add_parser("alien-image-list",
                           help="cloud images of nodepool that no upload knows")
    alien.add_argument("provider", nargs="?")
    alien.add_argument("--json", action="store_true", help="print JSON")
    alien.set_defaults(func=cmd_alien_image_list)
