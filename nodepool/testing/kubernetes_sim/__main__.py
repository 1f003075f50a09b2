"""``python -m nodepool.testing.kubernetes_sim --port 6443 [--openshift]``"""

from __future__ import annotations

from nodepool.testing.kubernetes_sim import KubernetesSimulator
from nodepool.testing.loopback import run_simulator


def main() -> int:
    def options(parser) -> None:
        parser.add_argument("--openshift", action="store_true",
                            help="also serve OpenShift's project API")

    def start(args) -> str:
        import yaml
        sim = KubernetesSimulator(port=args.port, pod_start_delay=args.pod_start_delay,
                                  openshift=args.openshift).start()
        return f"Kubernetes simulator at {sim.url}; kubeconfig:\n" + yaml.safe_dump(
            sim.kubeconfig())
    return run_simulator("nodepool.testing.kubernetes_sim", KubernetesSimulator.__doc__,
                         6443, "--pod-start-delay", start, options)


if __name__ == "__main__":
    raise SystemExit(main())
