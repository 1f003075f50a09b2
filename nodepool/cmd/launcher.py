"""``nodepool-launcher``: serves node requests from ZooKeeper."""

from __future__ import annotations

import logging
import os
import sys
import threading

from nodepool.cmd import common, daemon

log = logging.getLogger("nodepool.cmd.launcher")


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
                        help="do not start the status web server (accepted for "
                        "compatibility; the web server is not built yet)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from nodepool.config import ConfigError, load_config
    config_path = os.path.abspath(os.path.expanduser(args.config))
    try:
        # Fail on the terminal, before detaching, if the file is unusable.
        load_config(config_path, args.secure)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1

    def setup_logging():
        common.setup_logging(args.logconfig, args.debug,
                             stream=sys.stdout if (args.debug or args.foreground)
                             else sys.stderr)

    def serve(stop: threading.Event) -> int:
        from nodepool.launcher.launcher import Launcher
        try:
            launcher = Launcher(config_path, args.secure)
        except ConfigError as exc:
            log.error("%s", exc)
            return 1
        launcher.start()
        stop.wait()
        launcher.stop()
        return 0

    return daemon.run(serve, foreground=args.debug or args.foreground,
                      pidfile=args.pidfile, setup_logging=setup_logging)


if __name__ == "__main__":
    sys.exit(main())
