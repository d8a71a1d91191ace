"""metrics-server as a host process behind the metrics.k8s.io aggregated API, so HPAs see CPU use.

metrics-server scrapes each node's kubelet resource-metrics endpoint; for fake nodes that is kwok's
server, which emulates usage from pod annotations. The API server reaches metrics-server through the
APIService's Service; with no pod network here that Service is an ExternalName for the loopback
address (the API server's service resolver dials an ExternalName's host directly), the technique
kwokctl uses for its binary runtime. RBAC comes unchanged from metrics-server's own manifests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ferry_devcluster import build, components, kubeconfig
from ferry_devcluster.config import LOOPBACK, ClusterConfig
from ferry_devcluster.processes import ProcessSpec

APISERVICE_NAME = "v1beta1.metrics.k8s.io"
NAMESPACE = "kube-system"
SERVICE_NAME = "metrics-server"
# The file we apply from metrics-server's module: its ServiceAccount, roles and bindings. Its
# apiservice.yaml is not applied as is: it names the Service without a port and skips TLS
# verification; `cluster_objects` gives the same APIService (name, group, version, priorities) with
# the port and the CA, in one apply, so the API server never sees it pointing at port 443.
UPSTREAM_MANIFESTS: tuple[str, ...] = ("manifests/base/rbac.yaml",)
# metrics-server keeps one sample per node per resolution; 15s is its upstream default
METRIC_RESOLUTION = "15s"


def module_dir() -> Path:
    metrics_server = components.METRICS_SERVER
    return build.module_source_dir(metrics_server.module, metrics_server.version, metrics_server.module_dir)


def upstream_manifest_paths(source_dir: Path) -> list[Path]:
    paths = [source_dir / relative for relative in UPSTREAM_MANIFESTS]
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"metrics-server module has no {path}; update UPSTREAM_MANIFESTS")
    return paths


def process(config: ClusterConfig, binary: Path) -> ProcessSpec:
    pki = config.pki_dir
    path = kubeconfig.path_for(config, "metrics-server")
    return ProcessSpec(
        name="metrics-server",
        argv=(
            str(binary),
            f"--kubeconfig={path}",
            f"--authentication-kubeconfig={path}",
            f"--authorization-kubeconfig={path}",
            f"--bind-address={LOOPBACK}",
            f"--secure-port={config.port('metrics-server')}",
            f"--tls-cert-file={pki / 'metrics-server-serving.crt'}",
            f"--tls-private-key-file={pki / 'metrics-server-serving.key'}",
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            "--kubelet-use-node-status-port",
            # kwok's serving certificate is issued by the cluster CA: verify it, no --kubelet-insecure-tls
            f"--kubelet-certificate-authority={pki / 'ca.crt'}",
            f"--metric-resolution={METRIC_RESOLUTION}",
        ),
    )


def cluster_objects(config: ClusterConfig, ca_bundle_b64: str) -> list[dict[str, Any]]:
    """The Service the APIService names, and the APIService as in metrics-server's
    manifests/base/apiservice.yaml but verified by the cluster CA and with the host process's port."""
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": SERVICE_NAME, "namespace": NAMESPACE, "labels": {"k8s-app": "metrics-server"}},
        "spec": {
            "type": "ExternalName",
            "externalName": LOOPBACK,
            "ports": [{"name": "https", "port": config.port("metrics-server"), "protocol": "TCP"}],
        },
    }
    apiservice = {
        "apiVersion": "apiregistration.k8s.io/v1",
        "kind": "APIService",
        "metadata": {"name": APISERVICE_NAME},
        "spec": {
            "group": "metrics.k8s.io",
            "version": "v1beta1",
            "groupPriorityMinimum": 100,
            "versionPriority": 100,
            "insecureSkipTLSVerify": False,
            "caBundle": ca_bundle_b64,
            "service": {"name": SERVICE_NAME, "namespace": NAMESPACE, "port": config.port("metrics-server")},
        },
    }
    return [service, apiservice]
