"""``python -m nodepool.testing.openstack_sim --port 5000``"""

from __future__ import annotations

from nodepool.testing.loopback import run_simulator
from nodepool.testing.openstack_sim import OpenStackSimulator


def main() -> int:
    def start(args) -> str:
        import yaml
        sim = OpenStackSimulator(port=args.port, boot_delay=args.boot_delay).start()
        return (f"OpenStack simulator at {sim.auth_url}; clouds.yaml:\n"
                + yaml.safe_dump(sim.clouds_yaml()))
    return run_simulator("nodepool.testing.openstack_sim", OpenStackSimulator.__doc__,
                         5000, "--boot-delay", start)


if __name__ == "__main__":
    raise SystemExit(main())
