"""Fake nodes: Node objects that kwok keeps Ready and whose pods kwok drives through their lifecycle.

kwok v0.8.0 ships no built-in behaviour: the stages (node initialise and heartbeat, pod ready, Job pods
complete, deleted pods go away, volume provisioning) and the emulated resource usage come from YAML files
in its module, which we read from the module cache at the pinned version rather than copy. kwok runs
as a host process and manages only nodes annotated kwok.x-k8s.io/node=fake, so a real kubelet node can
join the same cluster without kwok touching it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ferry_devcluster import build, components, kubeconfig
from ferry_devcluster.config import CPU_NODE, GPU_NODE, LOOPBACK, ClusterConfig, NodeShape
from ferry_devcluster.processes import ProcessSpec

FAKE_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
MANAGED_BY_LABEL = ("app.kubernetes.io/managed-by", "devcluster")
GPU_RESOURCE = "nvidia.com/gpu"
# Node lease length, as a kubelet's default; kwok renews the leases (heartbeat-with-lease stage)
NODE_LEASE_SECONDS = 40

# kwok's own files, relative to its module root: what its `kustomize/stage/fast` bundle holds, plus
# the volume stages (so PersistentVolumeClaims bind) and the resource-usage emulation for metrics.
KWOK_STAGE_FILES: tuple[str, ...] = (
    "kustomize/stage/node/fast/node-initialize.yaml",
    "kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "kustomize/stage/pod/fast/pod-ready.yaml",
    "kustomize/stage/pod/fast/pod-complete.yaml",
    "kustomize/stage/pod/fast/pod-delete.yaml",
    "kustomize/stage/volume/fast/pvc-provision.yaml",
    "kustomize/stage/volume/fast/pv-bind.yaml",
    "kustomize/stage/volume/fast/pvc-delete.yaml",
    "kustomize/stage/volume/fast/pv-delete.yaml",
    # the fake kubelets' /metrics/resource endpoint (path /metrics/nodes/{nodeName}/metrics/resource)
    "kustomize/metrics/resource/metrics-resource.yaml",
    # container CPU/memory usage from the pod annotations kwok.x-k8s.io/usage-cpu and usage-memory
    "kustomize/metrics/usage/usage-from-annotation.yaml",
)
# Cluster objects (not kwok configuration) from the same module: the StorageClass that the volume
# stages provision for, marked the default class.
KWOK_MANIFEST_FILES: tuple[str, ...] = ("kustomize/stage/volume/fast/storage-class.yaml",)
USAGE_CPU_ANNOTATION = "kwok.x-k8s.io/usage-cpu"
USAGE_MEMORY_ANNOTATION = "kwok.x-k8s.io/usage-memory"


def kwok_module_dir() -> Path:
    kwok = components.KWOK
    return build.module_source_dir(kwok.module, kwok.version, kwok.module_dir)


def kwok_configuration(module_dir: Path) -> str:
    """kwok's --config: the stage, metric and usage documents, concatenated as one multi-document YAML."""
    documents = []
    for relative in KWOK_STAGE_FILES:
        path = module_dir / relative
        if not path.exists():
            raise FileNotFoundError(
                f"kwok module {module_dir.name} has no {relative}; update KWOK_STAGE_FILES"
            )
        documents.append(f"# from {components.KWOK.module} {relative}\n{path.read_text().strip()}\n")
    return "---\n".join(documents)


def kwok_config_path(config: ClusterConfig) -> Path:
    return config.config_dir / "kwok.yaml"


def kwok_process(config: ClusterConfig, binary: Path) -> ProcessSpec:
    pki = config.pki_dir
    port = config.port("kwok")
    key, value = FAKE_NODE_ANNOTATION
    return ProcessSpec(
        name="kwok",
        argv=(
            str(binary),
            f"--kubeconfig={kubeconfig.path_for(config, 'kwok')}",
            f"--config={kwok_config_path(config)}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={key}={value}",
            # every fake node reports this address and port as its kubelet, where kwok answers
            f"--node-ip={LOOPBACK}",
            f"--node-port={port}",
            f"--server-address={LOOPBACK}:{port}",
            f"--tls-cert-file={pki / 'kwok-serving.crt'}",
            f"--tls-private-key-file={pki / 'kwok-serving.key'}",
            f"--cidr={config.pod_cidr}",
            f"--node-lease-duration-seconds={NODE_LEASE_SECONDS}",
        ),
    )


def node_names(config: ClusterConfig) -> list[str]:
    return [f"kwok-node-{index}" for index in range(config.nodes)] + [
        f"kwok-gpu-node-{index}" for index in range(config.gpu_nodes)
    ]


def node_object(name: str, shape: NodeShape, kubernetes_version: str) -> dict[str, Any]:
    """A Node as a kubelet would register it; kwok fills in conditions, addresses and the endpoint."""
    is_gpu = GPU_RESOURCE in shape.extended
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "node.kubernetes.io/instance-type": "devcluster-gpu" if is_gpu else "devcluster-cpu",
        "type": "kwok",
        MANAGED_BY_LABEL[0]: MANAGED_BY_LABEL[1],
    }
    spec: dict[str, Any] = {}
    if is_gpu:
        labels["nvidia.com/gpu.present"] = "true"
        # as GPU node pools on managed clusters: only pods that ask for a GPU land here
        # (ExtendedResourceToleration adds the toleration to such pods)
        spec["taints"] = [{"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}]
    capacity = shape.capacity()
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {
                FAKE_NODE_ANNOTATION[0]: FAKE_NODE_ANNOTATION[1],
                "node.alpha.kubernetes.io/ttl": "0",
                # where metrics-server finds this node's resource metrics on kwok's server
                "metrics.k8s.io/resource-metrics-path": f"/metrics/nodes/{name}/metrics/resource",
            },
        },
        "spec": spec,
        "status": {
            "capacity": capacity,
            "allocatable": capacity,
            # every field is required by the schema; kwok's node-initialize stage fills the empty ones
            # with "kwok-<version>", the kubelet version is the control plane's as on a real cluster
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": kubernetes_version,
                "kubeProxyVersion": "",
                "osImage": f"kwok fake node ({components.KWOK.version})",
                "kernelVersion": "",
                "containerRuntimeVersion": "",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
        },
    }


def node_objects(config: ClusterConfig, kubernetes_version: str) -> list[dict[str, Any]]:
    objects = [node_object(f"kwok-node-{i}", CPU_NODE, kubernetes_version) for i in range(config.nodes)]
    objects += [
        node_object(f"kwok-gpu-node-{i}", GPU_NODE, kubernetes_version) for i in range(config.gpu_nodes)
    ]
    return objects
