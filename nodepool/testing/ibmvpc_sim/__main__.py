"""``python -m nodepool.testing.ibmvpc_sim --port 8080``: the IBM Cloud VPC
simulator on loopback, with an IBM credentials file for it."""

from __future__ import annotations

import threading

from nodepool.testing.ibmvpc_sim import BUCKET, IbmVpcSimulator


def main() -> int:
    import argparse
    parser = argparse.ArgumentParser(prog="python -m nodepool.testing.ibmvpc_sim",
                                     description=IbmVpcSimulator.__doc__ or "")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--boot-delay", type=float, default=1.0)
    parser.add_argument("--credentials", default="ibmvpc-sim-credentials.env",
                        help="where to write the credentials file")
    args = parser.parse_args()
    sim = IbmVpcSimulator(port=args.port, boot_delay=args.boot_delay).start()
    path = sim.credentials_file(args.credentials)
    print(f"IBM Cloud VPC simulator at {sim.url}; credentials-file: {path}; "
          f"object-storage endpoint {sim.cos_endpoint}, bucket {BUCKET}", flush=True)
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
