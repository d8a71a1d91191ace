"""Optimization Jobs against the real local cluster, with the real optimizer.

The devcluster's nodes are fake (kwok): the Job's pod is scheduled and marked Succeeded, but nothing runs
in it. The test plays the kubelet: it runs the real `ferry-optimize` on this machine with the Job's own
arguments (the claims the pod would mount at /mnt/pvc/CLAIM are directories under a temporary
FERRY_PVC_ROOT, the spec file is the pod's downward-API annotation), then writes the summary it produced
into the pod's container status as the kubelet writes a termination message. Everything else is real:
the API server, the Job controller, the garbage collector, the operator process and its watches.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import ARTIFACT_CLAIM, Cluster, OperatorProcess, wait_for
from ferry_operator.builders import optimization_job

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
FERRY_OPTIMIZE = Path(sys.executable).parent / "ferry-optimize"
SMALL = {"requests": {"cpu": "10m", "memory": "16Mi"}}
MODEL = {"uri": "pvc://models/digits/model.keras", "format": "keras"}
DATA = {"uri": "pvc://models/digits/data.npz"}
# Dynamic int8 quantization of the digits classifier: passes a 5-point accuracy gate.
QUANTIZE = {"quantize": "dynamic", "data": DATA, "validate": {"metric": "accuracy", "maxDrop": 0.05}}
# One-shot 90% pruning without fine-tuning and a gate that tolerates no loss at all: rejected.
PRUNE_HARD = {
    "graph": "disabled",
    "prune": {"sparsity": 0.9, "epochs": 0},
    "data": DATA,
    "validate": {"metric": "accuracy", "maxDrop": 0.0},
}


@pytest.fixture(scope="module")
def digits_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits classifier and its held-out data, trained by examples/digits/train.py."""
    directory = tmp_path_factory.mktemp("digits")
    subprocess.run(
        [sys.executable, str(ROOT / "examples" / "digits" / "train.py"), str(directory), "--epochs", "15"],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return directory


@pytest.fixture
def pvc_root(tmp_path: Path, digits_files: Path, cluster: Cluster) -> Path:
    """The claims the Job mounts, as the host directories the kubelet would mount: `models` holds the
    digits model and data; `ferry-artifacts` is the operator's artifact store."""
    root = tmp_path / "pvc"
    (root / "models" / "digits").mkdir(parents=True)
    (root / ARTIFACT_CLAIM).mkdir()
    for name in ("model.keras", "data.npz"):
        (root / "models" / "digits" / name).write_bytes((digits_files / name).read_bytes())
    for claim in ("models", ARTIFACT_CLAIM):
        manifest = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        }
        cluster.kubectl("apply", "-f", "-", stdin=json.dumps(manifest))
    return root


def jobs(cluster: Cluster) -> list[dict[str, Any]]:
    return cluster.items("jobs", "ferry.dev/modeldeployment=digits")


def optimization(cluster: Cluster) -> dict[str, Any]:
    md = cluster.get("modeldeployment", "digits") or {}
    return dict((md.get("status") or {}).get("optimization") or {})


def play_kubelet(cluster: Cluster, job: dict[str, Any], pvc_root: Path, workdir: Path) -> dict[str, Any]:
    """Run the Job's container on this machine and report its termination message as the kubelet does."""
    name = job["metadata"]["name"]
    pod = wait_for(
        f"the pod of Job {name} to be marked Succeeded (kwok)",
        lambda: next(
            (
                p
                for p in cluster.items("pods", f"batch.kubernetes.io/job-name={name}")
                if (p.get("status") or {}).get("phase") == "Succeeded"
            ),
            None,
        ),
        timeout=120,
    )
    (container,) = job["spec"]["template"]["spec"]["containers"]
    workdir.mkdir(parents=True)
    spec_file = workdir / "spec.json"
    spec_file.write_text(pod["metadata"]["annotations"][optimization_job.SPEC_ANNOTATION])
    args = list(container["args"])
    args[args.index("--spec") + 1] = str(spec_file)
    termination_log = workdir / "termination-log"
    environment = {
        **os.environ,
        **{e["name"]: e["value"] for e in container["env"] if "value" in e},
        "FERRY_PVC_ROOT": str(pvc_root),
        "HOME": str(workdir),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    run = subprocess.run(
        [str(FERRY_OPTIMIZE), *args, "--termination-log", str(termination_log)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert run.returncode == 0, f"ferry-optimize {args} exited {run.returncode}:\n{run.stderr[-4000:]}"
    message = termination_log.read_text()
    statuses = pod["status"]["containerStatuses"]
    for status in statuses:
        status["state"]["terminated"]["message"] = message
    cluster.kubectl(
        "patch",
        "pod",
        pod["metadata"]["name"],
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"containerStatuses": statuses}}),
    )
    return dict(json.loads(message))


def wait_condition(
    cluster: Cluster, status: str, reason: str | None = None, timeout: float = 120
) -> dict[str, Any]:
    """The Optimized condition once it has `status` (and `reason`); on timeout, the whole status."""

    def matching() -> dict[str, Any] | None:
        condition = cluster.condition("digits", "Optimized")
        if condition and condition["status"] == status and reason in (None, condition["reason"]):
            return condition
        return None

    try:
        return wait_for(f"Optimized={status} {reason or ''}", matching, timeout=timeout)
    except AssertionError as error:
        md = cluster.get("modeldeployment", "digits") or {}
        raise AssertionError(f"{error}\nstatus: {json.dumps(md.get('status'), indent=1)}") from None


def init_args(cluster: Cluster) -> list[str]:
    deployment = cluster.get("deployment", "digits")
    assert deployment is not None
    # The model's fetcher (pods serving an optimized model also fetch its drift reference, after it).
    containers = deployment["spec"]["template"]["spec"]["initContainers"]
    (fetch,) = [c for c in containers if c["name"] == "fetch-model"]
    return list(fetch["args"])


def test_optimize_serve_reuse_and_reject(
    cluster: Cluster, optimizing_operator: OperatorProcess, pvc_root: Path, tmp_path: Path
) -> None:
    spec = {"model": MODEL, "optimize": QUANTIZE, "serving": {"resources": SMALL}}
    cluster.apply_md("digits", spec)

    # Exactly one Job, named after the content key, and nothing served before its result.
    (job,) = wait_for("the optimization Job", lambda: jobs(cluster), timeout=60)
    key = job["metadata"]["annotations"]["ferry.dev/optimization-key"]
    assert job["metadata"]["name"] == f"digits-opt-{key[:10]}"
    assert job["spec"]["template"]["spec"]["containers"][0]["args"][-2:] == ["--key", key]
    recorded = wait_for("status.optimization names the Job", lambda: optimization(cluster).get("job"))
    assert recorded == job["metadata"]["name"]
    assert optimization(cluster)["key"] == key
    assert cluster.get("deployment", "digits") is None

    summary = play_kubelet(cluster, job, pvc_root, tmp_path / "run-1")
    assert summary["passed"] is True
    assert summary["key"] == key
    artifact = summary["artifact"]
    assert artifact["uri"] == f"pvc://{ARTIFACT_CLAIM}/{cluster.namespace}/digits/{key}/model.onnx"
    written = pvc_root / ARTIFACT_CLAIM / cluster.namespace / "digits" / key / "model.onnx"
    assert hashlib.sha256(written.read_bytes()).hexdigest() == artifact["sha256"]

    # The report lands in the status, Optimized turns True, and the serving pods fetch the artifact.
    wait_condition(cluster, "True", "Passed")
    status = optimization(cluster)
    assert status["artifact"] == artifact
    report = status["report"]
    assert report["passed"] is True
    assert report["chosen"] == summary["chosen"]
    assert report["metric"]["name"] == "accuracy"
    assert {c["name"] for c in report["candidates"]} == {c["name"] for c in summary["candidates"]}
    assert init_args(cluster) == [artifact["uri"], "/mnt/models", "--sha256", artifact["sha256"]]
    md = wait_for("digits Ready", lambda: cluster.ready("digits"), timeout=120)
    # With the artifact's size, which the Job measured (status.model.sizeBytes).
    assert md["status"]["model"] == {
        "format": "onnx",
        "uri": artifact["uri"],
        "digest": f"sha256:{artifact['sha256']}",
        "sizeBytes": artifact["sizeBytes"],
    }
    served_revision = md["status"]["revision"]["current"]

    # The same spec again, and a restarted operator: still exactly one Job, the same artifact served.
    cluster.apply_md("digits", spec)
    optimizing_operator.stop()
    optimizing_operator.start()
    wait_for("the restarted operator", optimizing_operator.healthy, timeout=60)
    wait_for(
        "a reconcile by the restarted operator",
        lambda: (
            "ferry_operator_reconcile_total" in (text := optimizing_operator.metrics())
            and 'ferry_operator_modeldeployments{phase="Ready"} 1.0' in text
        ),
        timeout=60,
    )
    assert [j["metadata"]["name"] for j in jobs(cluster)] == [job["metadata"]["name"]]
    assert init_args(cluster)[0] == artifact["uri"]

    # A new optimize spec is a new key and a second Job; its candidate fails the gate, so the first
    # artifact keeps serving and the status says why.
    cluster.apply_md("digits", {**spec, "optimize": PRUNE_HARD})
    second = wait_for(
        "a second optimization Job",
        lambda: [j for j in jobs(cluster) if j["metadata"]["name"] != job["metadata"]["name"]],
        timeout=60,
    )[0]
    second_key = second["metadata"]["annotations"]["ferry.dev/optimization-key"]
    assert second_key != key
    rejected = play_kubelet(cluster, second, pvc_root, tmp_path / "run-2")
    assert rejected["passed"] is False
    assert rejected["artifact"] is None
    condition = wait_condition(cluster, "False", "GateRejected")
    assert rejected["reason"] in condition["message"]
    assert f"{artifact['uri']} keeps serving" in condition["message"]
    status = optimization(cluster)
    assert (status["key"], status["report"]["passed"]) == (second_key, False)
    assert init_args(cluster)[0] == artifact["uri"]
    md = cluster.get("modeldeployment", "digits")
    assert md is not None
    assert md["status"]["revision"]["current"] == served_revision
    assert len(jobs(cluster)) == 2

    # Back to the first spec: its Job's result is reused; nothing runs again.
    cluster.apply_md("digits", spec)
    wait_condition(cluster, "True", "Passed", timeout=60)
    assert optimization(cluster)["key"] == key
    assert len(jobs(cluster)) == 2


@pytest.mark.usefixtures("optimizing_operator")
def test_a_refused_job_is_reported_with_the_api_servers_message(cluster: Cluster) -> None:
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "no-jobs"},
        "spec": {"hard": {"count/jobs.batch": "0"}},
    }
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps(quota))
    wait_for(
        "the quota to be counted",
        lambda: ((cluster.get("resourcequota", "no-jobs") or {}).get("status") or {}).get("hard"),
    )
    cluster.apply_md("digits", {"model": MODEL, "serving": {"resources": SMALL}})
    condition = wait_condition(cluster, "False", "JobCreateFailed", timeout=60)
    assert "exceeded quota" in condition["message"]
    assert not jobs(cluster)
    # Lifting the quota lets the (periodically retried) creation through.
    cluster.kubectl("delete", "resourcequota", "no-jobs")
    wait_for("the optimization Job after the quota is lifted", lambda: jobs(cluster), timeout=90)
