"""``python -m nodepool.testing.azure_sim --port 8080``: the Azure simulator
on loopback, with a credentials file (``auth-path``) pointing at it."""

from __future__ import annotations

import threading

from nodepool.testing.azure_sim import AzureSimulator


def main() -> int:
    import argparse
    parser = argparse.ArgumentParser(prog="python -m nodepool.testing.azure_sim",
                                     description=AzureSimulator.__doc__ or "")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--boot-delay", type=float, default=1.0)
    parser.add_argument("--auth-file", default="azure-sim-credentials.json",
                        help="where to write the credentials file for auth-path")
    args = parser.parse_args()
    sim = AzureSimulator(port=args.port, boot_delay=args.boot_delay).start()
    path = sim.auth_file(args.auth_file)
    print(f"Azure simulator at {sim.url}; use auth-path: {path} (networks: "
          "nodepool/default, nodepool/ci)", flush=True)
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
