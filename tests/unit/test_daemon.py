"""The daemons' shared life (nodepool.cmd.daemon.run_service)."""

import argparse
import os
import signal
import threading

from kazoo.exceptions import SessionExpiredError

from nodepool.cmd import daemon


class FlakyService:
    """Its first start dies as a ZooKeeper session expiring mid-start does."""

    made = 0
    events: list = []

    def __init__(self):
        FlakyService.made += 1
        self.number = FlakyService.made

    def start(self, stop=None):
        FlakyService.events.append(("start", self.number))
        if self.number == 1:
            raise SessionExpiredError()
        # Running: ask the daemon to stop, as systemd would.
        threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGTERM)).start()

    def stop(self):
        FlakyService.events.append(("stop", self.number))


def test_a_start_cut_short_by_zookeeper_is_retried_with_a_fresh_service(tmp_path):
    # An incremental logging configuration changes nothing: pytest keeps
    # capturing this process's logs.
    logconfig = tmp_path / "logging.yaml"
    logconfig.write_text("version: 1\nincremental: true\n")
    args = argparse.Namespace(debug=False, foreground=True, logconfig=str(logconfig),
                              pidfile=None, log_dir=None, debug_kazoo=False,
                              config="nodepool.yaml")
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM,
                                               signal.SIGUSR2)}
    try:
        rc = daemon.run_service(args, FlakyService, (ValueError,),
                                program="nodepool-launcher", log_name="nodepool")
    finally:
        for number, handler in saved.items():
            signal.signal(number, handler)
    assert rc == 0
    # The half-started first service was stopped, a second one started, and
    # stopped on SIGTERM.
    assert FlakyService.events == [("start", 1), ("stop", 1), ("start", 2),
                                   ("stop", 2)]
