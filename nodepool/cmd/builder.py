"""``nodepool-builder``: builds disk images and uploads them to providers."""

from __future__ import annotations

import os
import sys

from nodepool.cmd import common, daemon

# The default log files' name, as upstream names them.
LOG_NAME = "nodepool-builder"


def build_parser():
    parser = common.base_parser("nodepool-builder",
                                "Build disk images and upload them to providers.")
    daemon.add_daemon_arguments(parser, "/var/run/nodepool/nodepool-builder.pid",
                                LOG_NAME)
    parser.add_argument("--build-workers", type=int, default=1,
                        help="number of build worker threads")
    parser.add_argument("--upload-workers", type=int, default=4,
                        help="number of upload worker threads")
    parser.add_argument("--cleanup-interval", type=float, default=60.0,
                        help="seconds between retention and cleanup passes")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from nodepool.config import ConfigError, load_config
    config_path = os.path.abspath(os.path.expanduser(args.config))
    try:
        # Fail on the terminal, before detaching, if the file is unusable.
        config = load_config(config_path, args.secure, report_warnings=False)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    for problem in _startup_problems(config):
        print(problem, file=sys.stderr)
        return 1
    if args.build_workers < 1 or args.upload_workers < 1:
        print("--build-workers and --upload-workers must be at least 1",
              file=sys.stderr)
        return 1

    def make():
        from nodepool.builder.builder import Builder
        return Builder(config_path, args.secure, build_workers=args.build_workers,
                       upload_workers=args.upload_workers,
                       cleanup_interval=args.cleanup_interval)

    from nodepool.builder.base import BuilderError
    return daemon.run_service(args, make, (ConfigError, BuilderError),
                              program="nodepool-builder", log_name=LOG_NAME)


def _startup_problems(config) -> list[str]:
    if not config.zookeeper_servers:
        return ["No ZooKeeper servers specified in config."]
    if not config.images_dir:
        return ["No images-dir specified in config."]
    if not os.path.isdir(config.images_dir):
        return [f"images-dir {config.images_dir} does not exist"]
    return []


if __name__ == "__main__":
    sys.exit(main())
