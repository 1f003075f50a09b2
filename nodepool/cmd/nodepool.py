"""The ``nodepool`` administration command."""

from __future__ import annotations

import argparse
import sys

from nodepool.cmd import common

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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_ERROR
    common.setup_logging(args.logconfig, args.debug)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
