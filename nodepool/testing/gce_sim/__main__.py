"""``python -m nodepool.testing.gce_sim --port 8080``: the GCE simulator on
loopback, with a service-account key file for it."""

from __future__ import annotations

from nodepool.testing.gce_sim import GceSimulator
from nodepool.testing.loopback import run_simulator


def main() -> int:
    def options(parser) -> None:
        parser.add_argument("--credentials", default="gce-sim-credentials.json",
                            help="where to write the service-account key file")

    def start(args) -> str:
        sim = GceSimulator(port=args.port, boot_delay=args.boot_delay).start()
        env = sim.env(args.credentials)
        return (f"GCE simulator at {sim.endpoint} (project {sim.project}); "
                "environment:\n" + "".join(f"  {k}={v}\n" for k, v in env.items()))
    return run_simulator("nodepool.testing.gce_sim", GceSimulator.__doc__, 8080,
                         "--boot-delay", start, options)


if __name__ == "__main__":
    raise SystemExit(main())
