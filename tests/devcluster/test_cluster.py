"""The local cluster behaves like a real one for what Ferry needs: nodes, workloads, autoscaling on CPU
metrics, CRD validation, Helm, GPU scheduling, the monitoring CRDs on demand, and a clean lifecycle."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ferry_devcluster import build, components, monitoring, processes
from ferry_devcluster.config import ClusterConfig
from ferry_devcluster.testing import Kube, free_port_base

# The devcluster's own tests run generic pods (busybox-like, GPU, claims), not Ferry's restricted ones.
pytestmark = [pytest.mark.cluster, pytest.mark.pod_security("privileged")]

DEVCLUSTER = build.REPO_ROOT / "devcluster" / "devcluster"
IMAGE = "registry.k8s.io/pause:3.10"  # never pulled: kwok runs no containers
WAIT_SECONDS = 240


def wait_for(what: str, probe: Callable[[], Any], timeout: float = WAIT_SECONDS) -> Any:
    """Poll until `probe` returns something truthy; fail naming `what` and the last value seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(1)
    pytest.fail(f"timed out waiting for {what}; last seen: {last!r}")


def deployment(name: str, replicas: int, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": annotations or {}},
                "spec": {
                    "containers": [
                        {
                            "name": "main",
                            "image": IMAGE,
                            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                        }
                    ]
                },
            },
        },
    }


def test_nodes_are_ready_with_realistic_capacity(kube: Kube) -> None:
    nodes = kube.kubectl_json("get", "nodes")["items"]
    ready = {
        node["metadata"]["name"]: node
        for node in nodes
        if any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"])
    }
    assert ready, f"no Ready node among {[node['metadata']['name'] for node in nodes]}"
    if kube.is_devcluster:
        cpu_nodes = [node for name, node in ready.items() if name.startswith("kwok-node-")]
        gpu_nodes = [node for name, node in ready.items() if name.startswith("kwok-gpu-node-")]
        assert cpu_nodes
        assert gpu_nodes
        assert cpu_nodes[0]["status"]["allocatable"]["cpu"] == "8"
        assert gpu_nodes[0]["status"]["allocatable"]["nvidia.com/gpu"] == "2"
        version = json.loads(kube.kubectl("version", "-o", "json").stdout)["serverVersion"]
        assert version["gitVersion"] == components.KUBERNETES.version


def test_a_deployment_rolls_out(kube: Kube, namespace: str) -> None:
    kube.apply(deployment("web", replicas=3), namespace)
    result = kube.kubectl(
        "rollout", "status", "deployment/web", "-n", namespace, f"--timeout={WAIT_SECONDS}s"
    )
    assert 'deployment "web" successfully rolled out' in result.stdout
    pods = kube.kubectl_json("get", "pods", "-n", namespace, "-l", "app=web")["items"]
    assert len(pods) == 3
    assert all(pod["status"]["phase"] == "Running" and pod["status"].get("podIP") for pod in pods)
    # ordinary pods stay off the tainted GPU nodes
    assert not any(pod["spec"]["nodeName"].startswith("kwok-gpu-node-") for pod in pods)


def test_a_job_completes(kube: Kube, namespace: str) -> None:
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "once"},
        "spec": {
            "completions": 2,
            "template": {
                "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": IMAGE}]}
            },
        },
    }
    kube.apply(job, namespace)
    kube.kubectl(
        "wait", "--for=condition=Complete", "job/once", "-n", namespace, f"--timeout={WAIT_SECONDS}s"
    )
    status = kube.kubectl_json("get", "job/once", "-n", namespace)["status"]
    assert status["succeeded"] == 2


def test_a_pod_asking_for_a_gpu_lands_on_a_gpu_node(kube: Kube, namespace: str) -> None:
    if not kube.is_devcluster:
        pytest.skip("GPU nodes are a devcluster feature; this cluster was named by KUBECONFIG")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "gpu"},
        "spec": {
            "containers": [{"name": "main", "image": IMAGE, "resources": {"limits": {"nvidia.com/gpu": "1"}}}]
        },
    }
    kube.apply(pod, namespace)
    kube.kubectl("wait", "--for=condition=Ready", "pod/gpu", "-n", namespace, f"--timeout={WAIT_SECONDS}s")
    scheduled = kube.kubectl_json("get", "pod/gpu", "-n", namespace)
    assert scheduled["spec"]["nodeName"].startswith("kwok-gpu-node-")


def test_a_claim_binds_and_its_pod_runs(kube: Kube, namespace: str) -> None:
    if not kube.is_devcluster:
        pytest.skip("the kwok-volume StorageClass is a devcluster feature")
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "models"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "reader"},
        "spec": {
            "containers": [
                {"name": "main", "image": IMAGE, "volumeMounts": [{"name": "m", "mountPath": "/m"}]}
            ],
            "volumes": [{"name": "m", "persistentVolumeClaim": {"claimName": "models"}}],
        },
    }
    kube.apply(claim, namespace)
    kube.apply(pod, namespace)
    kube.kubectl("wait", "--for=condition=Ready", "pod/reader", "-n", namespace, f"--timeout={WAIT_SECONDS}s")
    bound = kube.kubectl_json("get", "pvc/models", "-n", namespace)
    assert bound["status"]["phase"] == "Bound"
    assert bound["spec"]["storageClassName"] == "kwok-volume"  # the default class


def test_an_hpa_reports_current_cpu_utilisation(kube: Kube, namespace: str) -> None:
    # kwok emulates 50m of CPU use per pod from this annotation; with 100m requested that is 50%
    kube.apply(deployment("busy", replicas=2, annotations={"kwok.x-k8s.io/usage-cpu": "50m"}), namespace)
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "busy"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "busy"},
            "minReplicas": 2,
            "maxReplicas": 4,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}},
                }
            ],
        },
    }
    kube.apply(hpa, namespace)

    def current_utilisation() -> int | None:
        status = kube.kubectl_json("get", "hpa/busy", "-n", namespace).get("status", {})
        for metric in status.get("currentMetrics") or []:
            value = metric.get("resource", {}).get("current", {}).get("averageUtilization")
            if value is not None:
                return int(value)
        return None

    utilisation = wait_for("the HPA to report CPU utilisation", current_utilisation)
    assert 40 <= utilisation <= 60, f"expected about 50% (50m used of 100m requested), got {utilisation}%"

    def pods_with_metrics() -> int:
        listed = kube.kubectl("get", "--raw", f"/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods")
        return len(json.loads(listed.stdout)["items"])

    # each pod needs two scrapes (a rate) before it has metrics; both get there
    wait_for("metrics for both pods", lambda: pods_with_metrics() == 2)


def test_a_structural_crd_schema_refuses_a_bad_object_naming_the_field(kube: Kube, namespace: str) -> None:
    crd_name = "widgets.devcluster-test.ferry.dev"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": crd_name},
        "spec": {
            "group": "devcluster-test.ferry.dev",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "required": ["size"],
                                    "properties": {"size": {"type": "integer", "minimum": 1}},
                                }
                            },
                        }
                    },
                }
            ],
        },
    }
    kube.apply(crd)
    try:
        kube.kubectl("wait", "--for=condition=Established", f"crd/{crd_name}", "--timeout=60s")
        widget = {"apiVersion": "devcluster-test.ferry.dev/v1", "kind": "Widget", "metadata": {"name": "w"}}
        good = kube.kubectl(
            "apply", "-n", namespace, "-f", "-", stdin=json.dumps({**widget, "spec": {"size": 2}})
        )
        assert "created" in good.stdout
        bad = kube.kubectl(
            "apply",
            "-n",
            namespace,
            "-f",
            "-",
            stdin=json.dumps({**widget, "spec": {"size": "big"}}),
            check=False,
        )
        assert bad.returncode != 0
        assert "spec.size" in bad.stderr, bad.stderr
        too_small = kube.kubectl(
            "apply",
            "-n",
            namespace,
            "-f",
            "-",
            stdin=json.dumps({**widget, "spec": {"size": 0}}),
            check=False,
        )
        assert "spec.size" in too_small.stderr
        assert "greater than or equal to 1" in too_small.stderr
    finally:
        kube.kubectl("delete", "crd", crd_name, "--ignore-not-found", "--wait=false", check=False)


def test_helm_installs_a_chart(kube: Kube, namespace: str, tmp_path: Path) -> None:
    chart = tmp_path / "hello"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(
        "apiVersion: v2\nname: hello\nversion: 0.1.0\nkubeVersion: '>=1.30.0-0'\n"
    )
    (chart / "values.yaml").write_text("greeting: hello\n")
    (chart / "templates" / "configmap.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-greeting\n"
        "data:\n  greeting: {{ .Values.greeting | quote }}\n"
        "  kube: {{ .Capabilities.KubeVersion.Version | quote }}\n"
    )
    kube.helm(
        "install", "hi", str(chart), "-n", namespace, "--set", "greeting=hallo", "--wait", "--timeout=2m"
    )
    releases = json.loads(kube.helm("list", "-n", namespace, "-o", "json").stdout)
    assert [(release["name"], release["status"]) for release in releases] == [("hi", "deployed")]
    data = kube.kubectl_json("get", "configmap/hi-greeting", "-n", namespace)["data"]
    assert data["greeting"] == "hallo"
    server_version = json.loads(kube.kubectl("version", "-o", "json").stdout)["serverVersion"]["gitVersion"]
    assert data["kube"] == server_version
    kube.helm("uninstall", "hi", "-n", namespace, "--wait")


def test_monitoring_crds_install_and_uninstall_on_demand(kube: Kube, namespace: str) -> None:
    def served_kinds() -> set[str]:
        listed = kube.kubectl("api-resources", "--api-group=monitoring.coreos.com", "-o", "name").stdout
        return set(listed.split())

    was_installed = bool(monitoring.installed(kube.kubeconfig))
    monitoring.install(kube.kubeconfig)
    try:
        kinds = wait_for("the monitoring API to be served", served_kinds)
        assert {
            "servicemonitors.monitoring.coreos.com",
            "podmonitors.monitoring.coreos.com",
            "prometheusrules.monitoring.coreos.com",
        } <= kinds
        service_monitor = {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "ServiceMonitor",
            "metadata": {"name": "sm"},
            "spec": {"selector": {"matchLabels": {"app": "x"}}, "endpoints": [{"port": "metrics"}]},
        }
        kube.apply(service_monitor, namespace)
        monitoring.uninstall(kube.kubeconfig)
        assert wait_for("the monitoring API to go away", lambda: not served_kinds())
        assert monitoring.installed(kube.kubeconfig) == []
    finally:
        if was_installed:
            monitoring.install(kube.kubeconfig)


def test_up_again_keeps_the_running_cluster(kube: Kube) -> None:
    if not kube.is_devcluster:
        pytest.skip("the cluster was named by KUBECONFIG, not started by devcluster")
    state = ClusterConfig.load(Path(kube.kubeconfig).parents[1])
    assert state is not None
    from ferry_devcluster.processes import Supervisor

    supervisor = Supervisor(state.run_dir, state.log_dir)
    before = {name: supervisor.pid(name) for name in ("etcd", "kube-apiserver", "kwok", "metrics-server")}
    result = subprocess.run(
        [str(DEVCLUSTER), "--state-dir", str(state.state_dir), "up"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"export KUBECONFIG={state.admin_kubeconfig}" in result.stdout
    assert {name: supervisor.pid(name) for name in before} == before


def test_down_leaves_nothing_running_and_up_restarts_from_the_kept_state(tmp_path: Path) -> None:
    """A second, small cluster (own state directory and ports), so the shared one is untouched."""
    state_dir = tmp_path / "cluster"
    port_base = free_port_base()
    up = [str(DEVCLUSTER), "--state-dir", str(state_dir), "up", "--nodes", "1", "--gpu-nodes", "0"]
    down = [str(DEVCLUSTER), "--state-dir", str(state_dir), "down"]

    def run(command: list[str]) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=900)
        assert result.returncode == 0, f"{' '.join(command)}:\n{result.stderr}"
        return result

    def ours() -> list[int]:
        return processes.strays(state_dir.resolve(), build.cache_dir() / "bin")

    try:
        run([*up, "--port-base", str(port_base)])
        kubeconfig = run([str(DEVCLUSTER), "--state-dir", str(state_dir), "kubeconfig"]).stdout.strip()
        assert len(ours()) == 6  # etcd, apiserver, controller manager, scheduler, kwok, metrics-server
        kubectl = [str(build.kubectl()), "--kubeconfig", kubeconfig]
        subprocess.run([*kubectl, "create", "configmap", "survivor", "--from-literal=k=v"], check=True)

        run(down)
        assert ours() == []
        assert "nothing (not running)" in run(down).stderr

        # the second start reuses the PKI and the etcd data: same CA, objects still there
        run(up)
        survivor = subprocess.run(
            [*kubectl, "get", "configmap", "survivor", "-o", "json"], capture_output=True, check=True
        )
        assert json.loads(survivor.stdout)["data"] == {"k": "v"}
    finally:
        subprocess.run(down, capture_output=True, check=False)
    assert ours() == []
