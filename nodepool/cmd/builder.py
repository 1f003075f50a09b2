"""``nodepool-builder``: builds disk images and uploads them to providers."""

from __future__ import annotations

import sys

from nodepool.cmd import common


def build_parser():
    parser = common.base_parser("nodepool-builder",
                                "Build disk images and upload them to providers.")
    parser.add_argument("-p", dest="pidfile",
                        default="/var/run/nodepool/nodepool-builder.pid",
                        help="path to the pid file (daemon mode)")
    parser.add_argument("-d", dest="debug", action="store_true",
                        help="stay in the foreground, log DEBUG to stdout")
    parser.add_argument("-f", dest="foreground", action="store_true",
                        help="stay in the foreground")
    parser.add_argument("--build-workers", type=int, default=1,
                        help="number of build worker threads")
    parser.add_argument("--upload-workers", type=int, default=4,
                        help="number of upload worker threads")
    return parser


def main(argv: list[str] | None = None) -> int:
    build_parser().parse_args(argv)
    print("nodepool-builder: the builder is not implemented yet", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
