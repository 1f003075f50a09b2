"""Shared by the three programs: argument parsing and logging set-up; and
by the ``nodepool`` subcommand modules: exit statuses, connecting, reading
ZooKeeper for the status views, printing rows."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from nodepool.config.model import DEFAULT_CONFIG_PATH
from nodepool.version import __version__

if TYPE_CHECKING:
    from nodepool.config.model import Config
    from nodepool.zk.client import ZooKeeperClient
    from nodepool.zk.image_records import ImageBuild, ImageFlags, ImageUpload
    from nodepool.zk.records import Node, NodeRequest

# Exit statuses scripts can rely on.
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


class CommandError(Exception):
    """Printed without a traceback; the command exits 1. (Defined here so
    that ``python -m nodepool.cmd.nodepool`` and its subcommand modules share
    one class.)"""


def base_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--version", action="version",
                        version=f"Nodepool version: {__version__}")
    parser.add_argument("-c", "--config", dest="config", default=DEFAULT_CONFIG_PATH,
                        help="path to the configuration file")
    parser.add_argument("-s", "--secure", dest="secure", default=None,
                        help="path to the secure configuration file")
    parser.add_argument("-l", dest="logconfig", default=None,
                        help="path to a logging configuration file: YAML or "
                        "JSON for dictConfig ('{server}' in a handler's filename "
                        "becomes the program's log name), or ini for fileConfig")
    return parser


def setup_logging(logconfig: str | None, debug: bool = False) -> None:
    """The ``nodepool`` command's logging (see :mod:`nodepool.cmd.logs`);
    a LoggingSetupError names what is wrong in one line."""
    from nodepool.cmd import logs
    logs.for_cli(logconfig, debug).apply()


# -- the nodepool subcommands ---------------------------------------------------

def connect(args: argparse.Namespace) -> tuple[Config, ZooKeeperClient]:
    """Load the configuration and connect; a clear message when either fails."""
    from nodepool.config import ConfigError, load_config
    from nodepool.zk.client import (ZooKeeperError, ZooKeeperUnreachable,
                                    client_from_config)
    try:
        config = load_config(args.config, args.secure, report_warnings=False)
    except ConfigError as exc:
        raise CommandError(str(exc)) from None
    client = client_from_config(config, read_only=args.read_only_zk)
    try:
        client.connect(timeout=args.zk_timeout)
    except ZooKeeperUnreachable:
        raise CommandError(f"cannot reach ZooKeeper at {client.hosts} within "
                           f"{args.zk_timeout:g}s") from None
    except ZooKeeperError as exc:
        raise CommandError(str(exc)) from None
    return config, client


def print_rows(args: argparse.Namespace, columns: list[tuple[str, str]],
               rows: list[dict]) -> None:
    """A table, or with ``--json`` the rows as JSON."""
    from nodepool import status
    print(status.render_json(rows) if getattr(args, "json", False) else
          status.render_table(columns, rows))


def read_nodes(client: ZooKeeperClient) -> list[tuple[Node, bool]]:
    """All nodes and whether each is locked, read in one pipeline (each
    node's data and lock directory side by side) and decoded as the replies
    come in."""
    from kazoo.protocol.serialization import GetChildren, GetData

    from nodepool.zk import paths
    from nodepool.zk.records import CorruptRecord, Node
    from nodepool.zk.store import Store
    ids = Store(client).node_ids()
    reads = []
    for node_id in ids:
        reads.append(GetData(client.full_path(paths.node(node_id)), None))
        reads.append(GetChildren(client.full_path(paths.node_lock(node_id)), None))
    # Read everything before decoding: decoding while replies arrive makes
    # kazoo's reader thread wait for the interpreter lock (twice as slow).
    replies = iter(list(client.iter_many(reads)))
    nodes = []
    # The same iterator twice: each node takes its data, then its lock listing.
    for node_id, result, contenders in zip(ids, replies, replies):
        if result is None:
            continue
        try:
            node = Node.from_json(node_id, result[0], result[1].version)
        except CorruptRecord as exc:
            print(f"warning: skipping corrupt node {node_id}: {exc}", file=sys.stderr)
            continue
        if node is None:
            continue
        locked = any(paths.is_lock_contender(c) for c in contenders or ())
        nodes.append((node, locked))
    return nodes


def read_requests(client: ZooKeeperClient) -> list[NodeRequest]:
    """All node requests (corrupt ones skipped), in one pipelined round."""
    from nodepool.zk import paths
    from nodepool.zk.records import CorruptRecord, NodeRequest
    from nodepool.zk.store import Store
    ids = Store(client).request_ids()
    requests = []
    for request_id, result in zip(ids, client.get_many(paths.request(i) for i in ids)):
        if result is None:
            continue
        try:
            request = NodeRequest.from_json(request_id, result[0])
        except CorruptRecord:
            continue
        if request is not None:
            requests.append(request)
    return requests


class ZooKeeperImages:
    """The image views' source for the CLI, which has no cache: the
    ImageCache's readers answered by direct reads, each image's builds and
    flags read once."""

    def __init__(self, client: ZooKeeperClient):
        from nodepool.zk.store import Store
        self.client = client
        self.store = Store(client)
        self._names: list[str] | None = None
        self._builds: dict[str, list[ImageBuild]] = {}
        self._flags: dict[str, ImageFlags] = {}

    def image_names(self) -> list[str]:
        if self._names is None:
            self._names = self.store.image_names()
        return self._names

    def flags(self, image_name: str) -> ImageFlags:
        from nodepool.zk.image_records import ImageFlags
        if image_name not in self._flags:
            self._flags[image_name] = ImageFlags(
                image_name, self.store.is_image_paused(image_name),
                self.store.build_requested_at(image_name))
        return self._flags[image_name]

    def is_building(self, image_name: str) -> bool:
        from nodepool.zk import paths
        from nodepool.zk.locks import is_locked
        return is_locked(self.client, paths.image_build_lock(image_name))

    def builds(self, image_name: str | None = None) -> list[ImageBuild]:
        """Newest first within each image."""
        if image_name is None:
            return [b for name in self.image_names() for b in self.builds(name)]
        if image_name not in self._builds:
            self._builds[image_name] = self.store.get_builds(image_name)
        return self._builds[image_name]

    def uploads(self, image_name: str | None = None) -> list[ImageUpload]:
        """The uploads of every readable build."""
        names = self.image_names() if image_name is None else [image_name]
        return [upload for name in names for build in self.builds(name)
                for provider in self.store.upload_providers(name, build.id)
                for upload in self.store.get_uploads(name, build.id, provider)]
