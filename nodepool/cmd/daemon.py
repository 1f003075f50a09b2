"""What both daemons share: detaching, the pid file, logging, signals,
debugging aids.

* ``-d``/``-f`` keep the process in the foreground; otherwise it detaches with
  python-daemon (umask 022) holding a pid lock file, and a stale pid file
  (its process is gone) is broken first.
* Logging (:mod:`nodepool.cmd.logs`) is checked before detaching: a bad
  ``-l`` file or an unwritable log directory is one line on the terminal and
  exit status 78, not a silent death.
* SIGINT and SIGTERM stop cleanly.
* SIGUSR2 logs every thread's stack and toggles yappi: the first signal starts
  profiling, the next one logs the statistics and stops it.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import traceback
from typing import Callable

from nodepool.memory import LongLivedObjects

log = logging.getLogger("nodepool.daemon")


def add_daemon_arguments(parser: argparse.ArgumentParser, pidfile: str,
                         log_name: str) -> None:
    """The options both daemons take: -p, -d, -f, --log-dir, --debug-kazoo."""
    from nodepool.cmd import logs
    parser.add_argument("-p", dest="pidfile", default=pidfile,
                        help="path to the pid file (daemon mode)")
    parser.add_argument("-d", dest="debug", action="store_true",
                        help="stay in the foreground, log DEBUG to stdout")
    parser.add_argument("-f", dest="foreground", action="store_true",
                        help="stay in the foreground, log INFO to stdout")
    parser.add_argument("--log-dir", dest="log_dir", default=logs.default_log_dir(),
                        help=f"detached without -l: write {log_name}.log (INFO) "
                        f"and {log_name}-debug.log (DEBUG) here, reopened when "
                        f"rotated (${logs.LOG_DIR_ENV} sets the default)")
    parser.add_argument("--debug-kazoo", dest="debug_kazoo", action="store_true",
                        help="let kazoo log each ZooKeeper packet at DEBUG (off "
                        "even with -d, as it slows the daemon; also "
                        f"{logs.KAZOO_DEBUG_ENV}=1)")


def dump_stacks() -> str:
    frames = sys._current_frames()
    names = {t.ident: t.name for t in threading.enumerate()}
    out = []
    for ident, frame in frames.items():
        out.append(f"Thread {ident} ({names.get(ident, '?')}):")
        out.append("".join(traceback.format_stack(frame)))
    return "\n".join(out)


class DebugSignal:
    """SIGUSR2: stack dump, then start or stop-and-report yappi profiling."""

    def __init__(self):
        self.profiling = False

    def __call__(self, signum, frame) -> None:
        log.warning("Thread stacks:\n%s", dump_stacks())
        try:
            import yappi
        except ImportError:  # pragma: no cover - a declared dependency
            return
        if not self.profiling:
            yappi.start()
            self.profiling = True
            log.warning("yappi profiling started")
            return
        yappi.stop()
        self.profiling = False
        import io
        buffer = io.StringIO()
        yappi.get_func_stats().print_all(
            out=buffer, columns={0: ("name", 80), 1: ("ncall", 10), 2: ("tsub", 8),
                                 3: ("ttot", 8), 4: ("tavg", 8)})
        yappi.get_thread_stats().print_all(out=buffer)
        yappi.clear_stats()
        log.warning("yappi profile:\n%s", buffer.getvalue())


def run(main: Callable[[threading.Event], int], *, foreground: bool,
        pidfile: str | None, setup_logging: Callable[[], None]) -> int:
    """Run ``main(stop_event)`` in the foreground or detached."""
    if foreground:
        setup_logging()
        return _serve(main)
    import daemon
    import daemon.pidfile
    path = os.path.abspath(pidfile)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    lock = daemon.pidfile.TimeoutPIDLockFile(path, 10)
    if lock.is_locked():
        pid = lock.read_pid()
        try:
            if pid:
                os.kill(pid, 0)
                print(f"already running as pid {pid} (pid file {path})",
                      file=sys.stderr)
                return 1
        except ProcessLookupError:
            lock.break_lock()  # a stale pid file: its process is gone
        except PermissionError:
            print(f"already running as pid {pid} (pid file {path})", file=sys.stderr)
            return 1
    # Surface "already running" or an unwritable directory on the terminal.
    try:
        lock.acquire()
        lock.release()
    except Exception as exc:
        print(f"cannot take the pid file {path}: {exc}", file=sys.stderr)
        return 1
    with daemon.DaemonContext(pidfile=lock, umask=0o022, working_directory="/"):
        setup_logging()
        return _serve(main)


def _serve(main: Callable[[threading.Event], int]) -> int:
    stop = threading.Event()

    def on_stop(signum, frame):
        log.info("Received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGUSR2, DebugSignal())
    return main(stop)


def _abort_start_on_stop(service, stop: threading.Event,
                         started: threading.Event) -> None:
    """A stop asked for while start-up waits on an unreachable ZooKeeper
    (a call queued until the server comes back) cuts that wait short."""
    while not started.is_set():
        if stop.wait(0.5):
            client = getattr(service, "client", None)
            if client is not None and not started.is_set():
                client.abort_when_disconnected()
            return


def run_service(args, make: Callable[[], object], errors: tuple, *,
                program: str, log_name: str) -> int:
    """The daemons' common life: set up logging (``log_name`` names the
    default log files), build the service with ``make()`` (an error of
    ``errors`` is logged and exits 1), ``start()`` it, and ``stop()`` it on
    SIGINT/SIGTERM."""
    from nodepool.cmd import logs
    log = logging.getLogger("nodepool.daemon")
    foreground = args.debug or args.foreground
    try:
        plan = logs.for_daemon(args, log_name)
        if foreground:
            plan.apply()
        else:
            plan.check()
    except logs.LoggingSetupError as exc:
        print(f"{program}: {exc}", file=sys.stderr)
        return logs.EXIT_LOGGING

    def setup_logging():
        if not foreground:
            plan.apply()

    def serve(stop: threading.Event) -> int:
        from kazoo.exceptions import KazooException

        from nodepool.version import __version__
        from nodepool.zk.client import ConnectInterrupted, ZooKeeperError
        log.info("%s %s starting (pid %d, configuration %s)", program, __version__,
                 os.getpid(), args.config)
        while True:
            try:
                service = make()
            except errors as exc:
                log.error("%s", exc)
                return 1
            started = threading.Event()
            threading.Thread(target=_abort_start_on_stop, args=(service, stop, started),
                             daemon=True, name="start-watch").start()
            try:
                service.start(stop=stop)
                started.set()
                break
            except ConnectInterrupted:
                log.info("Stopped before ZooKeeper could be reached")
                try:
                    service.stop()
                except Exception:
                    log.debug("Stopping the unstarted service failed", exc_info=True)
                return 0
            except (KazooException, ZooKeeperError) as exc:
                # ZooKeeper went away mid-start (a restart, an expired
                # session): start again from scratch rather than die.
                log.warning("Start-up interrupted by ZooKeeper (%s: %s); "
                            "starting again", type(exc).__name__, exc)
                try:
                    service.stop()
                except Exception:
                    log.debug("Stopping the half-started service failed",
                              exc_info=True)
                if stop.wait(2.0):
                    return 0
            finally:
                started.set()
        # Timed: the kernel may hand SIGINT/SIGTERM to any thread, and Python
        # runs the handler only when the main thread wakes; an untimed wait
        # would sleep through it for good.
        long_lived = LongLivedObjects()
        while not stop.wait(1.0):
            long_lived.tick()
        service.stop()
        return 0

    return run(serve, foreground=foreground, pidfile=args.pidfile,
               setup_logging=setup_logging)
