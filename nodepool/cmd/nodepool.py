"""The ``nodepool`` administration command."""

from __future__ import annotations

import argparse
import gc
import sys

from nodepool.cmd import common, images, nodes
from nodepool.cmd.common import EXIT_ERROR, EXIT_OK, CommandError


def cmd_config_validate(args: argparse.Namespace) -> int:
    from nodepool.config import validate_file
    print(f"validating {args.config}", file=sys.stderr)
    problems, warnings = validate_file(args.config, args.secure,
                                       check_files=not args.no_file_checks)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"configuration is invalid ({len(problems)} problem"
              f"{'s' if len(problems) != 1 else ''})", file=sys.stderr)
        return EXIT_ERROR
    print("configuration is valid", file=sys.stderr)
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    from nodepool import status
    _, client = common.connect(args)
    try:
        rows = status.node_rows(common.read_nodes(client))
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
    _, client = common.connect(args)
    try:
        requests = common.read_requests(client)
    finally:
        client.disconnect()
    common.print_rows(args, status.REQUEST_COLUMNS, status.request_rows(requests))
    return EXIT_OK


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < 86400:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(
            f"must be a number of seconds above 0 and below 86400, not {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = common.base_parser("nodepool", "Administer a nodepool installation.")
    parser.add_argument("--debug", action="store_true",
                        help="log at DEBUG level to stderr (kazoo's connection "
                        "retries included)")
    parser.add_argument("--zk-timeout", type=_seconds, default=10.0,
                        metavar="SECONDS",
                        help="give up when no ZooKeeper server answers within this")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    validate = sub.add_parser(
        "config-validate", help="check the configuration file and exit",
        description="Validate the configuration file (and the secure file if "
        "given); print every problem with its key path. Exit 0 if valid, 1 if "
        "not.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    validate.add_argument(
        "--no-file-checks", action="store_true",
        help="do not check that the files the configuration names (ZooKeeper "
        "TLS certificates) exist: for checks away from the daemons' hosts")
    validate.set_defaults(func=cmd_config_validate)

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
    # -c, -s and --zk-timeout work after the subcommand too (``nodepool list -c f``);
    # SUPPRESS keeps the global value when they are not repeated there.
    for subparser in sub.choices.values():
        subparser.add_argument("-c", "--config", dest="config",
                               default=argparse.SUPPRESS,
                               help="path to the configuration file")
        subparser.add_argument("-s", "--secure", dest="secure",
                               default=argparse.SUPPRESS,
                               help="path to the secure configuration file")
        subparser.add_argument("--zk-timeout", type=_seconds, metavar="SECONDS",
                               default=argparse.SUPPRESS,
                               help="give up when no ZooKeeper server answers "
                               "within this")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_ERROR
    from nodepool.cmd.logs import LoggingSetupError
    try:
        common.setup_logging(args.logconfig, args.debug)
    except LoggingSetupError as exc:
        print(f"nodepool: {exc}", file=sys.stderr)
        return EXIT_ERROR
    args.read_only_zk = False
    # A command reads ZooKeeper once and exits: the cyclic garbage collector
    # has nothing to free, yet each of its full passes over tens of
    # thousands of decoded records cost a quarter of ``list``'s time.
    gc.disable()
    try:
        return args.func(args)
    except CommandError as exc:
        print(f"nodepool: {exc}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        gc.enable()  # for a caller that runs main() in its own process


if __name__ == "__main__":
    sys.exit(main())
