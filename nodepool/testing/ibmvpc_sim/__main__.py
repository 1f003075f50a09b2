"""``python -m nodepool.testing.ibmvpc_sim --port 8080``: the IBM Cloud VPC
simulator on loopback, with an IBM credentials file for it."""

from __future__ import annotations

from nodepool.testing.ibmvpc_sim import BUCKET, IbmVpcSimulator
from nodepool.testing.loopback import run_simulator


def main() -> int:
    def options(parser) -> None:
        parser.add_argument("--credentials", default="ibmvpc-sim-credentials.env",
                            help="where to write the credentials file")

    def start(args) -> str:
        sim = IbmVpcSimulator(port=args.port, boot_delay=args.boot_delay).start()
        path = sim.credentials_file(args.credentials)
        return (f"IBM Cloud VPC simulator at {sim.url}; credentials-file: {path}; "
                f"object-storage endpoint {sim.cos_endpoint}, bucket {BUCKET}")
    return run_simulator("nodepool.testing.ibmvpc_sim", IbmVpcSimulator.__doc__, 8080,
                         "--boot-delay", start, options)


if __name__ == "__main__":
    raise SystemExit(main())
