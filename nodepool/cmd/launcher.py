"""``nodepool-launcher``: serves node requests from ZooKeeper."""

from __future__ import annotations

import sys

from nodepool.cmd import common


def build_parser():
    parser = common.base_parser("nodepool-launcher",
                                "Launch and delete nodes for Zuul's node requests.")
    parser.add_argument("-p", dest="pidfile", default="/var/run/nodepool/nodepool.pid",
                        help="path to the pid file (daemon mode)")
    parser.add_argument("-d", dest="debug", action="store_true",
                        help="stay in the foreground, log DEBUG to stdout")
    parser.add_argument("-f", dest="foreground", action="store_true",
                        help="stay in the foreground")
    parser.add_argument("--no-webapp", action="store_true",
                        help="do not start the status web server")
    return parser


def main(argv: list[str] | None = None) -> int:
    build_parser().parse_args(argv)
    print("nodepool-launcher: the launcher is not implemented yet", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
