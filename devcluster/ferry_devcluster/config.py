"""What a devcluster is: where its state lives, its ports, address ranges and nodes.

The configuration given to `up` is saved in the state directory (cluster.json) so that `down`,
`status` and a second `up` act on the same cluster without repeating options.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ferry_devcluster.build import REPO_ROOT

LOOPBACK = "127.0.0.1"
# the one real node's name (up --real-node)
REAL_NODE_NAME = "real-node-0"
# Below the NodePort range (30000-32767) and the kernel's ephemeral ports (32768-60999), and away
# from the well-known Kubernetes ports, so a devcluster can run beside a real cluster's processes.
DEFAULT_PORT_BASE = 26400
# Each port is the base plus the last two digits of the component's customary port (6443, 2379...).
PORT_OFFSETS: dict[str, int] = {
    "apiserver": 43,
    "metrics-server": 44,
    "kwok": 50,
    "kube-controller-manager": 57,
    "kube-scheduler": 59,
    "etcd": 79,
    "etcd-peer": 80,
    # the real node (--real-node); 10250 would collide with kwok's 50, so the kubelet takes 51
    "kubelet": 51,
    "kubelet-healthz": 48,
    "kube-proxy-metrics": 49,
    "kube-proxy-healthz": 56,
    # the real node's cluster DNS (CoreDNS on the host, behind the kube-dns Service)
    "coredns": 53,
    "coredns-health": 54,
    "coredns-ready": 81,
    # Prometheus on the host (`devcluster prometheus up`), scraping what the ServiceMonitors describe
    "prometheus": 90,
    # prometheus-adapter on the host (`devcluster adapter up`), beside metrics-server: custom metrics
    "prometheus-adapter": 45,
}


@dataclass(frozen=True)
class NodeShape:
    """Capacity and labels of one kind of fake node."""

    cpu: str
    memory: str
    pods: str
    ephemeral_storage: str
    # extended resources, e.g. {"nvidia.com/gpu": "2"}
    extended: dict[str, str] = field(default_factory=dict)

    def capacity(self) -> dict[str, str]:
        return {
            "cpu": self.cpu,
            "memory": self.memory,
            "pods": self.pods,
            "ephemeral-storage": self.ephemeral_storage,
            **self.extended,
        }


# A common general-purpose VM and a common single-GPU-pair inference VM.
CPU_NODE = NodeShape(cpu="8", memory="32Gi", pods="110", ephemeral_storage="100Gi")
GPU_NODE = NodeShape(
    cpu="16", memory="64Gi", pods="110", ephemeral_storage="200Gi", extended={"nvidia.com/gpu": "2"}
)


@dataclass(frozen=True)
class ClusterConfig:
    """One devcluster. Frozen: a change means `down` then `up` with new options."""

    state_dir: Path
    nodes: int = 2
    gpu_nodes: int = 1
    port_base: int = DEFAULT_PORT_BASE
    # the ClusterIP range; its first address is the `kubernetes` Service, which the serving
    # certificate therefore names
    service_cidr: str = "10.96.0.0/16"
    kubernetes_service_ip: str = "10.96.0.1"
    # pod addresses (kwok assigns them from here; the controller manager allocates per-node ranges)
    pod_cidr: str = "10.244.0.0/16"
    cluster_domain: str = "cluster.local"
    # a real kubelet node (containerd, CNI, kube-proxy) beside the fake ones; see real_node.py
    real_node: bool = False
    # the host address the real node registers and the API server advertises (pods reach it there);
    # found by `up --real-node`
    node_ip: str = ""

    @property
    def advertise_address(self) -> str:
        return self.node_ip if self.real_node and self.node_ip else LOOPBACK

    def port(self, name: str) -> int:
        return self.port_base + PORT_OFFSETS[name]

    @property
    def server_url(self) -> str:
        return f"https://{LOOPBACK}:{self.port('apiserver')}"

    # --- the state directory's layout (one place, so `down` and the docs agree) ---
    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"

    @property
    def kubeconfig_dir(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.kubeconfig_dir / "admin.kubeconfig"

    @property
    def etcd_data_dir(self) -> Path:
        return self.state_dir / "etcd"

    @property
    def config_dir(self) -> Path:
        return self.state_dir / "config"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    @property
    def saved_config(self) -> Path:
        return self.state_dir / "cluster.json"

    def save(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        values = dataclasses.asdict(self)
        values["state_dir"] = str(self.state_dir)
        self.saved_config.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, state_dir: Path) -> ClusterConfig | None:
        path = state_dir / "cluster.json"
        if not path.exists():
            return None
        values = json.loads(path.read_text())
        values["state_dir"] = state_dir
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})


def default_state_dir() -> Path:
    configured = os.environ.get("FERRY_DEVCLUSTER_DIR")
    return Path(configured).resolve() if configured else REPO_ROOT / ".devcluster"


def default_port_base() -> int:
    configured = os.environ.get("FERRY_DEVCLUSTER_PORT_BASE")
    if not configured:
        return DEFAULT_PORT_BASE
    try:
        return int(configured)
    except ValueError:
        raise ValueError(f"FERRY_DEVCLUSTER_PORT_BASE must be an integer port, got {configured!r}") from None
