"""Argument parsing and logging set-up shared by the three programs."""

from __future__ import annotations

import argparse
import logging
import logging.config
import sys

import yaml

from nodepool.config.model import DEFAULT_CONFIG_PATH
from nodepool.version import __version__

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


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
                        help="path to a logging configuration file (YAML "
                        "dictConfig or ini fileConfig)")
    return parser


def setup_logging(logconfig: str | None, debug: bool = False,
                  stream=sys.stderr) -> None:
    """Configure logging from ``-l``, else a plain handler on ``stream``."""
    if logconfig and not debug:
        with open(logconfig, encoding="utf-8") as handle:
            text = handle.read()
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError:
            data = None
        if isinstance(data, dict):
            # Loggers made at import time (before this runs) must keep
            # working; dictConfig would silence them by default.
            data.setdefault("disable_existing_loggers", False)
            logging.config.dictConfig(data)
        else:
            logging.config.fileConfig(logconfig, disable_existing_loggers=False)
        return
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO,
                        format=LOG_FORMAT, stream=stream)
    if not debug:
        logging.getLogger("kazoo").setLevel(logging.WARNING)
