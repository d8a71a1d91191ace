"""kubeconfig files: one per client identity, with the certificates embedded so a file can be copied
(into a test's temp dir, a container) and still work."""

from __future__ import annotations

import base64
from pathlib import Path

from ferry_devcluster.config import ClusterConfig

CLUSTER_NAME = "devcluster"

# The identities that get a kubeconfig: the name of a client certificate in the PKI directory.
CLIENTS: tuple[str, ...] = ("admin", "kube-controller-manager", "kube-scheduler", "kwok", "metrics-server")
REAL_NODE_CLIENTS: tuple[str, ...] = ("kubelet", "kube-proxy", "coredns")


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def render(server: str, ca_cert: Path, client_cert: Path, client_key: Path, user: str) -> str:
    """A single-context kubeconfig. Written as YAML by hand: every value is a plain scalar (URL,
    base64, a name without special characters), and the stdlib has no YAML writer."""
    return (
        "apiVersion: v1\n"
        "kind: Config\n"
        "clusters:\n"
        f"- name: {CLUSTER_NAME}\n"
        "  cluster:\n"
        f"    server: {server}\n"
        f"    certificate-authority-data: {_b64(ca_cert)}\n"
        "users:\n"
        f"- name: {user}\n"
        "  user:\n"
        f"    client-certificate-data: {_b64(client_cert)}\n"
        f"    client-key-data: {_b64(client_key)}\n"
        "contexts:\n"
        f"- name: {CLUSTER_NAME}\n"
        "  context:\n"
        f"    cluster: {CLUSTER_NAME}\n"
        f"    user: {user}\n"
        f"current-context: {CLUSTER_NAME}\n"
    )


def path_for(config: ClusterConfig, client: str) -> Path:
    return config.kubeconfig_dir / f"{client}.kubeconfig"


def write_all(config: ClusterConfig) -> None:
    config.kubeconfig_dir.mkdir(parents=True, exist_ok=True)
    config.kubeconfig_dir.chmod(0o700)
    pki = config.pki_dir
    for client in CLIENTS + (REAL_NODE_CLIENTS if config.real_node else ()):
        content = render(
            config.server_url, pki / "ca.crt", pki / f"{client}.crt", pki / f"{client}.key", user=client
        )
        path = path_for(config, client)
        if not path.exists() or path.read_text() != content:
            path.write_text(content)
            path.chmod(0o600)
