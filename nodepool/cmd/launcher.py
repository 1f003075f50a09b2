"""``nodepool-launcher``: serves node requests from ZooKeeper."""

from __future__ import annotations

import os
import sys

from nodepool.cmd import common, daemon

# The default log files' name, as upstream names them.
LOG_NAME = "nodepool"


def build_parser():
    parser = common.base_parser("nodepool-launcher",
                                "Launch and delete nodes for Zuul's node requests.")
    daemon.add_daemon_arguments(parser, "/var/run/nodepool/nodepool.pid",
                                LOG_NAME)
    parser.add_argument("--no-webapp", action="store_true",
                        help="do not start the status web server")
    parser.add_argument("--cleanup-interval", type=float, default=60.0,
                        help="seconds between leak and lost-request cleanups "
                        "(a leaked resource is removed on its second sighting)")
    parser.add_argument("--stats-name", metavar="NAME",
                        help="this launcher's name in its statsd keys "
                        "(nodepool.launcher.NAME.*; default: the host name); "
                        "set it when several launchers run on one host")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from nodepool.config import ConfigError, load_config
    config_path = os.path.abspath(os.path.expanduser(args.config))
    from nodepool.web.pooled import ListenError, check_can_listen
    try:
        # Fail on the terminal, before detaching, if the file is unusable
        # or the status server's port is taken.
        config = load_config(config_path, args.secure, report_warnings=False)
        if not args.no_webapp:
            check_can_listen(config.webapp.listen_address, config.webapp.port)
    except (ConfigError, ListenError) as exc:
        print(exc, file=sys.stderr)
        return 1

    def make():
        from nodepool.launcher.launcher import Launcher
        return Launcher(config_path, args.secure, webapp=not args.no_webapp,
                        cleanup_interval=args.cleanup_interval,
                        stats_name=args.stats_name)

    return daemon.run_service(args, make, (ConfigError, ListenError),
                              program="nodepool-launcher", log_name=LOG_NAME)


if __name__ == "__main__":
    sys.exit(main())
