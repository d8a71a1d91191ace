"""`kubectl ferry` as a user runs it: through kubectl's plugin mechanism, against the local cluster and a
real operator, with a real model server for `predict`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from conftest import Cluster, OperatorProcess, wait_for

pytestmark = pytest.mark.cluster
VENV_BIN = Path(sys.executable).parent


def kubectl_ferry(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    # kubectl finds `kubectl-ferry` on PATH, exactly as after `pip install ferry`.
    # kubectl refuses flags before a plugin's name, so the cluster comes from KUBECONFIG, as for a user.
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "KUBECONFIG": str(cluster.kube.kubeconfig),
    }
    return subprocess.run(
        [str(VENV_BIN / "kubectl"), "ferry", *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=120,
    )


@pytest.mark.usefixtures("model_pvc")
def test_list_status_watch_and_report_on_a_real_rollout(cluster: Cluster, operator: OperatorProcess) -> None:
    ns = cluster.namespace
    cluster.apply_md("digits", {"model": {"uri": "pvc://models/digits/", "format": "onnx"}})
    # Piped (not a TTY): one line per change, ending when the rollout is Ready.
    watched = kubectl_ferry(
        cluster, "status", "digits", "-n", ns, "--watch", "--exit-on-done", "--timeout", "90"
    )
    assert watched.returncode == 0, watched.stderr + operator.log()[-3000:]
    lines = watched.stdout.strip().splitlines()
    assert "\r" not in watched.stdout
    assert lines[-1].startswith("Ready"), lines
    assert "1/1 ready" in lines[-1]

    listed = kubectl_ferry(cluster, "list", "-n", ns)
    assert listed.returncode == 0, listed.stderr
    (row,) = [line.split() for line in listed.stdout.splitlines() if " digits " in f" {line} "]
    assert row[:5] == [ns, "digits", "True", "Ready", "1/1"]

    status = kubectl_ferry(cluster, "-n", ns, "status", "digits")
    assert "Ready" in status.stdout
    assert "Deployed" in status.stdout
    assert f"http://digits.{ns}.svc.cluster.local:8080/v2/models/digits" in status.stdout

    report = kubectl_ferry(cluster, "report", "digits", "-n", ns)
    assert report.returncode == 1
    assert "add `spec.optimize`" in report.stderr

    missing = kubectl_ferry(cluster, "status", "nosuch", "-n", ns)
    assert missing.returncode == 1
    assert 'modeldeployment "nosuch" not found' in missing.stderr
    assert "kubectl ferry list -A" in missing.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_predict_sends_an_npz_to_a_real_model_server(cluster: Cluster, tmp_path: Path) -> None:
    # y = x @ W + b: small, exact, and typed by the server's own metadata.
    weights = np.arange(12, dtype=np.float32).reshape(4, 3)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor("W", TensorProto.FLOAT, [4, 3], weights.ravel().tolist())],
    )
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model_dir / "model.onnx")
    http_port, grpc_port = _free_port(), _free_port()
    server = subprocess.Popen(
        [
            str(VENV_BIN / "ferry-runtime"),
            "--model-dir",
            str(model_dir),
            "--model-name",
            "linear",
            "--http-port",
            str(http_port),
            "--grpc-port",
            str(grpc_port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def ready() -> bool | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=2) as r:
                    return r.status == 200 or None
            except OSError:
                time.sleep(0.2)
                return None

        wait_for("the model server", ready, timeout=60)
        x = np.ones((2, 4), dtype=np.float64)  # float64 on disk: the plugin casts to the model's FP32
        np.savez(tmp_path / "input.npz", x=x)
        result = kubectl_ferry(
            cluster,
            "predict",
            "linear",
            "--input",
            str(tmp_path / "input.npz"),
            "--url",
            f"http://127.0.0.1:{http_port}",
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert result.returncode == 0, result.stderr
    expected = (x.astype(np.float32) @ weights).ravel().tolist()
    assert result.stdout.strip() == f"y FP32 [2, 3]: {json.dumps(expected).replace(', ', ', ')}".replace(
        ".0,", ".0,"
    )
