"""The ``nodepool`` administration command."""

from __future__ import annotations

import argparse
import sys
import time

from nodepool.cmd import common
from nodepool.cmd.common import CommandError

# Exit statuses scripts can rely on.
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


def cmd_config_validate(args: argparse.Namespace) -> int:
    from nodepool.config import validate_file
    print(f"validating {args.config}", file=sys.stderr)
    problems = validate_file(args.config, args.secure)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"configuration is invalid ({len(problems)} problem"
              f"{'s' if len(problems) != 1 else ''})", file=sys.stderr)
        return EXIT_ERROR
    print("configuration is valid", file=sys.stderr)
    return EXIT_OK


def _connect(args: argparse.Namespace):
    """Load the configuration and connect; a clear message when either fails."""
    from nodepool.config import ConfigError, load_config
    from nodepool.zk.client import ZooKeeperError, client_from_config
    try:
        config = load_config(args.config, args.secure)
    except ConfigError as exc:
        raise CommandError(str(exc)) from None
    client = client_from_config(config, read_only=args.read_only_zk)
    try:
        client.connect(timeout=args.zk_timeout)
    except ZooKeeperError as exc:
        raise CommandError(str(exc)) from None
    return config, client


def read_nodes(client):
    """All nodes and whether each is locked, in two pipelined rounds."""
    from nodepool.zk import paths
    from nodepool.zk.records import CorruptRecord, Node
    from nodepool.zk.store import Store
    ids = Store(client).node_ids()
    datas = client.get_many(paths.node(i) for i in ids)
    locks = client.get_children_many(paths.node_lock(i) for i in ids)
    nodes = []
    for node_id, result, contenders in zip(ids, datas, locks):
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


def cmd_list(args: argparse.Namespace) -> int:
    from nodepool import status
    _, client = _connect(args)
    try:
        now = time.time()
        rows = [status.node_row(node, locked, now) for node, locked in read_nodes(client)]
    finally:
        client.disconnect()
    columns = status.NODE_COLUMNS if args.detail else \
        status.NODE_COLUMNS[:status.NODE_COLUMNS_SHORT]
    if args.json:
        keys = [k for k, _ in columns]
        print(status.render_json([{k: r[k] for k in keys} for r in rows]))
    else:
        print(status.render_table(columns, rows))
    return EXIT_OK


def cmd_request_list(args: argparse.Namespace) -> int:
    from nodepool import status
    from nodepool.zk.store import Store
    _, client = _connect(args)
    try:
        store = Store(client)
        ids = store.request_ids()
        from nodepool.zk import paths
        from nodepool.zk.records import CorruptRecord, NodeRequest
        requests = []
        for request_id, result in zip(ids, client.get_many(paths.request(i)
                                                           for i in ids)):
            if result is None:
                continue
            try:
                request = NodeRequest.from_json(request_id, result[0])
            except CorruptRecord:
                continue
            if request is not None:
                requests.append(request)
    finally:
        client.disconnect()
    requests.sort(key=NodeRequest.sort_key)
    rows = [status.request_row(r) for r in requests]
    print(status.render_json(rows) if args.json else
          status.render_table(status.REQUEST_COLUMNS, rows))
    return EXIT_OK


def _print_rows(args: argparse.Namespace, columns, rows) -> None:
    from nodepool import status
    print(status.render_json(rows) if getattr(args, "json", False) else
          status.render_table(columns, rows))


def build_parser() -> argparse.ArgumentParser:
    parser = common.base_parser("nodepool", "Administer a nodepool installation.")
    parser.add_argument("--debug", action="store_true",
                        help="log at DEBUG level to stderr")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    validate = sub.add_parser(
        "config-validate", help="check the configuration file and exit",
        description="Validate the configuration file (and the secure file if "
        "given); print every problem with its key path. Exit 0 if valid, 1 if "
        "not.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    validate.set_defaults(func=cmd_config_validate)

    from nodepool.cmd import images, nodes
    images.add_parsers(sub)
    nodes.add_parsers(sub)

    listing = sub.add_parser("list", help="list nodes",
                             description="List every node with its state.")
    listing.add_argument("--detail", action="store_true",
                         help="show all columns")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=cmd_list)

    requests = sub.add_parser("request-list", help="list node requests",
                              description="List node requests in priority order.")
    requests.add_argument("--json", action="store_true", help="print JSON")
    requests.set_defaults(func=cmd_request_list)
    # -c and -s work after the subcommand too (``nodepool list -c f``);
    # SUPPRESS keeps the global value when they are not repeated there.
    for subparser in sub.choices.values():
        subparser.add_argument("-c", "--config", dest="config",
                               default=argparse.SUPPRESS,
                               help="path to the configuration file")
        subparser.add_argument("-s", "--secure", dest="secure",
                               default=argparse.SUPPRESS,
                               help="path to the secure configuration file")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_ERROR
    common.setup_logging(args.logconfig, args.debug)
    args.read_only_zk = False
    args.zk_timeout = 10.0
    try:
        return args.func(args)
    except CommandError as exc:
        print(f"nodepool: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
