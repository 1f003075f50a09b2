"""``python -m nodepool.testing.azure_sim --port 8080``: the Azure simulator
on loopback, with a credentials file (``auth-path``) pointing at it."""

from __future__ import annotations

from nodepool.testing.azure_sim import AzureSimulator
from nodepool.testing.loopback import run_simulator


def main() -> int:
    def options(parser) -> None:
        parser.add_argument("--auth-file", default="azure-sim-credentials.json",
                            help="where to write the credentials file for auth-path")

    def start(args) -> str:
        sim = AzureSimulator(port=args.port, boot_delay=args.boot_delay).start()
        path = sim.auth_file(args.auth_file)
        return (f"Azure simulator at {sim.url}; use auth-path: {path} (networks: "
                "nodepool/default, nodepool/ci)")
    return run_simulator("nodepool.testing.azure_sim", AzureSimulator.__doc__, 8080,
                         "--boot-delay", start, options)


if __name__ == "__main__":
    raise SystemExit(main())
