"""``python -m nodepool.testing.kubernetes_sim --port 6443 [--openshift]``"""

from __future__ import annotations

import threading

from nodepool.testing.kubernetes_sim import KubernetesSimulator


def main() -> int:
    import argparse
    parser = argparse.ArgumentParser(prog="python -m nodepool.testing.kubernetes_sim",
                                     description=KubernetesSimulator.__doc__ or "")
    parser.add_argument("--port", type=int, default=6443)
    parser.add_argument("--pod-start-delay", type=float, default=1.0)
    parser.add_argument("--openshift", action="store_true",
                        help="also serve OpenShift's project API")
    args = parser.parse_args()
    sim = KubernetesSimulator(port=args.port, pod_start_delay=args.pod_start_delay,
                              openshift=args.openshift).start()
    import yaml
    print(f"Kubernetes simulator at {sim.url}; kubeconfig:\n"
          + yaml.safe_dump(sim.kubeconfig()), flush=True)
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
