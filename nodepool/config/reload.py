"""Reloading a running daemon's configuration when its files change.

Both daemons poll often (the launcher every second). A file that fails to
load must not flood the log: it is reported once, as one ERROR line, per
change of the files (their mtimes), and the daemon keeps the last good
configuration. Whatever the failure (a ConfigError, or something unforeseen),
the daemon's loop never sees an exception from here.
"""

from __future__ import annotations

import logging
import os
import threading

from nodepool.config.loader import config_files_changed, load_config
from nodepool.config.model import Config
from nodepool.config.schema import ConfigError


def file_mtimes(config: Config) -> dict[str, int | None]:
    """Current mtimes of the files a configuration came from (None: gone)."""
    found: dict[str, int | None] = {}
    for path in config.mtimes:
        try:
            found[path] = os.stat(path).st_mtime_ns
        except OSError:
            found[path] = None
    return found


class ConfigReloader:
    """Loads the configuration anew when its files changed."""

    def __init__(self, config_path: str, secure_path: str | None,
                 log: logging.Logger):
        self.config_path = config_path
        self.secure_path = secure_path
        self.log = log
        # Failed loads, counted once per change of the files.
        self.errors = 0
        self._failed_mtimes: dict | None = None
        # Several threads may ask (a watcher and the workers): one change is
        # loaded, and reported, by one of them.
        self._lock = threading.Lock()

    def reload(self, current: Config) -> Config | None:
        """A newly loaded configuration when the files changed and load; None
        when they did not change or the change is invalid (reported once)."""
        with self._lock:
            return self._reload(current)

    def _reload(self, current: Config) -> Config | None:
        if not config_files_changed(current):
            return None
        mtimes = file_mtimes(current)
        if mtimes == self._failed_mtimes:
            return None  # already reported; wait for the next change
        try:
            new = load_config(self.config_path, self.secure_path)
        except ConfigError as exc:
            message = exc.one_line()
        except Exception as exc:
            # Not a validation problem; still one line per change, the
            # details only at DEBUG.
            message = (f"{self.config_path}: cannot be loaded: "
                       f"{type(exc).__name__}: {exc}")
            self.log.debug("Loading %s failed", self.config_path, exc_info=True)
        else:
            self._failed_mtimes = None
            return new
        self._failed_mtimes = mtimes
        self.errors += 1
        self.log.error("The changed configuration is invalid; still running on the "
                       "last good one: %s", message)
        return None
