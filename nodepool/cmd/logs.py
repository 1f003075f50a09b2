"""Where the three programs log, decided (and checked) before a daemon detaches.

* ``-l FILE``: the operator's configuration: YAML or JSON for
  ``logging.config.dictConfig`` (a ``.yaml``/``.yml``/``.json`` file, or any
  file whose text is a YAML mapping), else an ini file for
  ``logging.config.fileConfig``. In a dictConfig handler's ``filename``,
  ``{server}`` stands for the program's log name (``nodepool`` for the
  launcher, ``nodepool-builder`` for the builder, as upstream names its
  files), so one file serves both daemons.
* Foreground (``-f``/``-d``) without ``-l``: a stream handler on stdout, as
  upstream does (journald takes it from there).
* Detached without ``-l``: ``<log dir>/<server>.log`` (INFO) and
  ``<log dir>/<server>-debug.log`` (DEBUG), both WatchedFileHandlers so that
  logrotate can move them away.

kazoo logs every ZooKeeper packet at DEBUG (and pings at its own BLATHER
level, 5): that is tens of megabytes per thousand node requests and a third
of a launcher's throughput. Its loggers stay at INFO even with DEBUG on,
unless ``--debug-kazoo`` or ``NODEPOOL_KAZOO_DEBUG=1`` asks for them.
"""

from __future__ import annotations

import argparse
import logging
import logging.config
import os
from dataclasses import dataclass, field

import yaml

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DEFAULT_LOG_DIR = "/var/log/nodepool"
LOG_DIR_ENV = "NODEPOOL_LOG_DIR"
KAZOO_DEBUG_ENV = "NODEPOOL_KAZOO_DEBUG"
# sysexits' EX_CONFIG: a unit can tell "fix the logging set-up" apart from a
# crash (systemd: RestartPreventExitStatus=78).
EXIT_LOGGING = 78

# Libraries whose DEBUG output is per request or per packet: INFO at most,
# even when nodepool itself logs DEBUG.
CHATTY_LIBRARIES = ("kazoo", "openstack", "keystoneauth", "urllib3", "requests",
                    "stevedore", "paramiko", "iso8601", "dogpile")
YAML_SUFFIXES = (".yaml", ".yml", ".json")


class LoggingSetupError(Exception):
    """One line for the terminal: logging cannot be set up as asked."""


def kazoo_debug_requested(flag: bool = False) -> bool:
    """``--debug-kazoo``, or ``NODEPOOL_KAZOO_DEBUG`` set to a true value."""
    value = os.environ.get(KAZOO_DEBUG_ENV, "").strip().lower()
    return flag or value in ("1", "true", "yes", "on")


def default_log_dir() -> str:
    return os.environ.get(LOG_DIR_ENV) or DEFAULT_LOG_DIR


@dataclass
class LogPlan:
    """A logging set-up to apply: a dictConfig mapping, or an ini file."""
    source: str                      # for messages: the -l path or a description
    config: dict | None = None
    ini_path: str | None = None
    kazoo_debug: bool = False
    log_files: list[str] = field(default_factory=list)  # the defaults' files

    def apply(self) -> None:
        """Configure logging; a failure is a LoggingSetupError."""
        try:
            if self.config is not None:
                logging.config.dictConfig(self.config)
            else:
                logging.config.fileConfig(self.ini_path,
                                          disable_existing_loggers=False)
        except Exception as exc:
            raise LoggingSetupError(
                f"cannot configure logging from {self.source}: "
                f"{_describe(exc)}") from None
        if self.kazoo_debug:
            logging.getLogger("kazoo").setLevel(logging.DEBUG)

    def check(self) -> None:
        """Prove the plan can be applied, leaving logging unconfigured: a
        detached daemon has no terminal left to report a failure on, and
        the files opened now would be closed by detaching anyway."""
        for path in self.log_files:
            directory = os.path.dirname(path)
            try:
                os.makedirs(directory, exist_ok=True)
            except OSError as exc:
                raise LoggingSetupError(
                    f"cannot create log directory {directory}: "
                    f"{exc.strerror or exc}") from None
            try:
                with open(path, "a", encoding="utf-8"):
                    pass
            except OSError as exc:
                raise LoggingSetupError(
                    f"cannot write log file {path}: {exc.strerror or exc}") from None
        try:
            self.apply()
        finally:
            reset()


def reset() -> None:
    """Remove and close every handler (the root's and every logger's)."""
    loggers = [logging.getLogger()] + [
        item for item in logging.Logger.manager.loggerDict.values()
        if isinstance(item, logging.Logger)]
    for logger in loggers:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            try:
                handler.close()
            except Exception:
                pass


def _describe(exc: BaseException) -> str:
    """dictConfig wraps the real cause ("Unable to configure handler 'x'"):
    name both on one line."""
    if isinstance(exc, KeyError):  # fileConfig: a section or key is absent
        text = f"missing section or key {exc.args[0]!r}" if exc.args else "KeyError"
    else:
        text = str(exc) or type(exc).__name__
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause) and str(cause) not in text:
        text = f"{text}: {cause}"
    return " ".join(text.split())


def from_file(path: str, server: str, kazoo_debug: bool = False) -> LogPlan:
    """The plan of a ``-l`` file: read and parsed now, applied later."""
    path = os.path.abspath(os.path.expanduser(path))
    try:
        if not os.path.isfile(path):
            raise LoggingSetupError(
                f"logging configuration {path} "
                f"{'is not a regular file' if os.path.exists(path) else 'does not exist'}")
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise LoggingSetupError(
            f"cannot read logging configuration {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise LoggingSetupError(
            f"cannot read logging configuration {path}: {exc}") from None
    is_yaml = path.lower().endswith(YAML_SUFFIXES)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        if is_yaml:
            raise LoggingSetupError(
                f"logging configuration {path} is not valid YAML: "
                f"{' '.join(str(exc).split())}") from None
        data = None  # an ini file, most likely
    if isinstance(data, dict):
        data.setdefault("version", 1)
        # Loggers made at import time (before this runs) must keep working;
        # dictConfig would silence them by default.
        data.setdefault("disable_existing_loggers", False)
        _fill_server(data, server)
        return LogPlan(source=path, config=data, kazoo_debug=kazoo_debug)
    if is_yaml:
        raise LoggingSetupError(
            f"logging configuration {path} must be a mapping (a dictConfig), "
            f"not {type(data).__name__}")
    return LogPlan(source=path, ini_path=path, kazoo_debug=kazoo_debug)


def _fill_server(config: dict, server: str) -> None:
    handlers = config.get("handlers")
    if not isinstance(handlers, dict):
        return
    for handler in handlers.values():
        if isinstance(handler, dict) and isinstance(handler.get("filename"), str):
            handler["filename"] = handler["filename"].replace("{server}", server)


def _quiet_libraries(kazoo_debug: bool) -> dict:
    loggers = {name: {"level": "INFO"} for name in CHATTY_LIBRARIES}
    if kazoo_debug:
        loggers["kazoo"] = {"level": "DEBUG"}
    return loggers


def to_stream(debug: bool, stream: str = "ext://sys.stdout",
              kazoo_debug: bool = False) -> LogPlan:
    """One stream handler: INFO, or DEBUG with the chatty libraries at INFO."""
    return LogPlan(
        source="the command line", kazoo_debug=kazoo_debug,
        config={
            "version": 1, "disable_existing_loggers": False,
            "formatters": {"plain": {"format": LOG_FORMAT}},
            "handlers": {"console": {"class": "logging.StreamHandler",
                                     "stream": stream, "formatter": "plain"}},
            "loggers": _quiet_libraries(kazoo_debug),
            "root": {"level": "DEBUG" if debug else "INFO",
                     "handlers": ["console"]},
        })


def to_files(log_dir: str, server: str, kazoo_debug: bool = False) -> LogPlan:
    """A detached daemon's defaults: ``<server>.log`` and ``<server>-debug.log``."""
    log_dir = os.path.abspath(os.path.expanduser(log_dir))
    normal = os.path.join(log_dir, f"{server}.log")
    debug = os.path.join(log_dir, f"{server}-debug.log")

    def handler(path: str, level: str) -> dict:
        return {"class": "logging.handlers.WatchedFileHandler", "filename": path,
                "level": level, "formatter": "plain", "encoding": "utf-8"}

    return LogPlan(
        source=f"the log directory {log_dir}", kazoo_debug=kazoo_debug,
        log_files=[normal, debug],
        config={
            "version": 1, "disable_existing_loggers": False,
            "formatters": {"plain": {"format": LOG_FORMAT}},
            "handlers": {"normal": handler(normal, "INFO"),
                         "debug": handler(debug, "DEBUG")},
            "loggers": _quiet_libraries(kazoo_debug),
            "root": {"level": "DEBUG", "handlers": ["normal", "debug"]},
        })


def for_daemon(args: argparse.Namespace, server: str) -> LogPlan:
    """The plan for ``nodepool-launcher``/``nodepool-builder`` arguments."""
    kazoo_debug = kazoo_debug_requested(getattr(args, "debug_kazoo", False))
    if args.logconfig:
        return from_file(args.logconfig, server, kazoo_debug)
    if args.debug or args.foreground:
        return to_stream(args.debug, kazoo_debug=kazoo_debug)
    return to_files(args.log_dir or default_log_dir(), server, kazoo_debug)


def for_cli(logconfig: str | None, debug: bool) -> LogPlan:
    """The ``nodepool`` command's plan: stderr, so that output stays clean."""
    kazoo_debug = kazoo_debug_requested()
    if logconfig:
        return from_file(logconfig, "nodepool-cli", kazoo_debug)
    plan = to_stream(debug, "ext://sys.stderr", kazoo_debug)
    if not debug:
        # A command that cannot connect says so in one line of its own;
        # kazoo's retry warnings and the client's "still trying" would bury it.
        plan.config["loggers"].update({"kazoo": {"level": "ERROR"},
                                       "nodepool.zk.client": {"level": "ERROR"}})
    return plan
