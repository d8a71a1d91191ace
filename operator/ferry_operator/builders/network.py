"""The serving pods on the network: the Service in front of them (the model's stable in-cluster address),
and with spec.serving.network the NetworkPolicy that says who may reach them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ferry_operator import kinds
from ferry_operator.api import models
from ferry_operator.builders.common import Manifest, metadata, with_input_hash
from ferry_operator.builders.inputs import BuildInputs
from ferry_operator.builders.serving import GRPC_PORT, HTTP_PORT, METRICS_PORT, separate_metrics_port

# allowFrom's default: a peer with only a podSelector admits pods of the policy's own namespace, and {}
# selects all of them.
OWN_NAMESPACE: tuple[dict[str, Any], ...] = ({"podSelector": {}},)


def service(inputs: BuildInputs) -> Manifest:
    tls = inputs.spec.serving.tls is not None
    ports: list[dict[str, Any]] = [
        {
            "name": "http",
            "port": HTTP_PORT,
            "targetPort": "http",
            "protocol": "TCP",
            "appProtocol": "https" if tls else "http",
        },
        # kubernetes.io/h2c: gRPC is HTTP/2 over cleartext; gateways and meshes route it as such. With TLS
        # it is HTTP/2 over TLS, which IANA's "https" names.
        {
            "name": "grpc",
            "port": GRPC_PORT,
            "targetPort": "grpc",
            "protocol": "TCP",
            "appProtocol": "https" if tls else "kubernetes.io/h2c",
        },
    ]
    if separate_metrics_port(inputs):
        # What the ServiceMonitor scrapes (it selects the Service's endpoints by port name).
        ports.append(
            {
                "name": "metrics",
                "port": METRICS_PORT,
                "targetPort": "metrics",
                "protocol": "TCP",
                "appProtocol": "http",
            }
        )
    return with_input_hash(
        {
            "apiVersion": kinds.SERVICE.api_version,
            "kind": kinds.SERVICE.kind,
            "metadata": metadata(inputs.owner),
            "spec": {
                "type": "ClusterIP",
                "selector": kinds.selector_labels(inputs.owner.name),
                "ports": ports,
            },
        }
    )


def network_policy(inputs: BuildInputs) -> Manifest | None:
    """The serving pods' NetworkPolicy, or None without spec.serving.network (then nothing restricts them
    beyond the namespace's own policies).

    Ingress only, two rules: the inference ports from allowFrom (default: the own namespace), the metrics
    port from metricsFrom (default: the operator's, where Prometheus runs). Ports go by name, so the rules
    follow the pods' container ports. A rule never gets an empty `from`: in a NetworkPolicy that would
    admit everyone.
    """
    network = inputs.spec.serving.network
    if network is None:
        return None
    allow_from = _peers(network.allow_from) or list(OWN_NAMESPACE)
    metrics_from = (
        _peers(network.metrics_from)
        or _peers(inputs.defaults.metrics_from)
        or _peers(models.DEFAULT_METRICS_FROM)
    )
    return with_input_hash(
        {
            "apiVersion": kinds.NETWORK_POLICY.api_version,
            "kind": kinds.NETWORK_POLICY.kind,
            "metadata": metadata(inputs.owner),
            "spec": {
                "podSelector": {"matchLabels": kinds.selector_labels(inputs.owner.name)},
                "policyTypes": ["Ingress"],
                "ingress": [
                    {
                        "ports": [{"port": "http", "protocol": "TCP"}, {"port": "grpc", "protocol": "TCP"}],
                        "from": allow_from,
                    },
                    {"ports": [{"port": "metrics", "protocol": "TCP"}], "from": metrics_from},
                ],
            },
        }
    )


def _peers(peers: Sequence[models.NetworkPolicyPeer] | None) -> list[dict[str, Any]]:
    return [peer.model_dump(by_alias=True, exclude_none=True) for peer in peers or ()]


def url(name: str, namespace: str, cluster_domain: str) -> str:
    """The in-cluster Open Inference Protocol v2 REST URL of ModelDeployment `name` (its Service)."""
    return f"http://{name}.{namespace}.svc.{cluster_domain}:{HTTP_PORT}/v2/models/{name}"
