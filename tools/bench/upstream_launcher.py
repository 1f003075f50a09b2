"""Upstream Nodepool's launcher with its fake cloud's quota raised.

Run with the Python of a virtualenv holding ``nodepool`` (11.0.0); the
arguments are those of upstream's ``nodepool-launcher``. Upstream's fake
cloud reports a fixed quota of 20 instances, which its own tests raise by
patching the same method; everything else is upstream's code as installed.
"""

from __future__ import annotations

import sys

from nodepool.cmd import launcher
from nodepool.driver.fake import adapter

# cores, instances, RAM (MiB): far above any burst the bench sends.
RAISED_QUOTA = (100_000_000, 1_000_000, 1_000_000_000_000)

adapter.FakeOpenStackCloud._get_quota = staticmethod(lambda: RAISED_QUOTA)

if __name__ == "__main__":
    sys.argv[0] = "nodepool-launcher"
    sys.exit(launcher.main())
