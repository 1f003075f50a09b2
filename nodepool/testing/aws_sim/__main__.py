"""``python -m nodepool.testing.aws_sim --port 5000``: the AWS simulator
(moto's server with the gaps filled) on loopback; prints ``PORT <n>`` once
it listens."""

from __future__ import annotations

import argparse
import sys


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m nodepool.testing.aws_sim")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    from nodepool.testing.aws_sim.server import serve

    def ready(port: int) -> None:
        print(f"PORT {port}", flush=True)

    serve(args.host, args.port, ready)
    return 0


if __name__ == "__main__":
    sys.exit(main())
