"""``python -m nodepool.testing.gce_sim --port 8080``: the GCE simulator on
loopback, with a service-account key file for it."""

from __future__ import annotations

import threading

from nodepool.testing.gce_sim import GceSimulator


def main() -> int:
    import argparse
    parser = argparse.ArgumentParser(prog="python -m nodepool.testing.gce_sim",
                                     description=GceSimulator.__doc__ or "")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--boot-delay", type=float, default=1.0)
    parser.add_argument("--credentials", default="gce-sim-credentials.json",
                        help="where to write the service-account key file")
    args = parser.parse_args()
    sim = GceSimulator(port=args.port, boot_delay=args.boot_delay).start()
    env = sim.env(args.credentials)
    print(f"GCE simulator at {sim.endpoint} (project {sim.project}); environment:\n"
          + "".join(f"  {k}={v}\n" for k, v in env.items()), flush=True)
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
