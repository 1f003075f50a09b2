"""``python -m nodepool.testing.openstack_sim --port 5000``"""

from __future__ import annotations

import threading

from nodepool.testing.openstack_sim import OpenStackSimulator


def main() -> int:
    import argparse
    parser = argparse.ArgumentParser(prog="python -m nodepool.testing.openstack_sim",
                                     description=OpenStackSimulator.__doc__ or "")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--boot-delay", type=float, default=1.0)
    args = parser.parse_args()
    sim = OpenStackSimulator(port=args.port, boot_delay=args.boot_delay).start()
    import yaml
    print(f"OpenStack simulator at {sim.auth_url}; clouds.yaml:\n"
          + yaml.safe_dump(sim.clouds_yaml()), flush=True)
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
