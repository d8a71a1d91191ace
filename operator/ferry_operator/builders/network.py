"""The Service in front of the serving pods: the model's stable in-cluster address."""

from __future__ import annotations

from ferry_operator import kinds
from ferry_operator.builders.common import Manifest, metadata, with_input_hash
from ferry_operator.builders.inputs import BuildInputs
from ferry_operator.builders.serving import GRPC_PORT, HTTP_PORT


def service(inputs: BuildInputs) -> Manifest:
    return with_input_hash(
        {
            "apiVersion": kinds.SERVICE.api_version,
            "kind": kinds.SERVICE.kind,
            "metadata": metadata(inputs.owner),
            "spec": {
                "type": "ClusterIP",
                "selector": kinds.selector_labels(inputs.owner.name),
                "ports": [
                    {
                        "name": "http",
                        "port": HTTP_PORT,
                        "targetPort": "http",
                        "protocol": "TCP",
                        "appProtocol": "http",
                    },
                    # kubernetes.io/h2c: gRPC is HTTP/2 over cleartext; gateways and meshes route it as such.
                    {
                        "name": "grpc",
                        "port": GRPC_PORT,
                        "targetPort": "grpc",
                        "protocol": "TCP",
                        "appProtocol": "kubernetes.io/h2c",
                    },
                ],
            },
        }
    )


def url(name: str, namespace: str, cluster_domain: str) -> str:
    """The in-cluster Open Inference Protocol v2 REST URL of ModelDeployment `name` (its Service)."""
    return f"http://{name}.{namespace}.svc.{cluster_domain}:{HTTP_PORT}/v2/models/{name}"
