"""The three images, run as containers: the optimizer image optimizes a real Keras model, the runtime
image serves the result over the Open Inference Protocol, and the operator image starts against the
local cluster and answers its health endpoint. Built by scripts/build-images.sh (cached by podman)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ferry_devcluster.testing import Kube

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
VERSION = "0.1.0"
# Containers on this machine kind: crun refuses the hybrid cgroup layout, and the sandbox forbids raising
# rlimits to podman's defaults (scripts/build-images.sh explains the same flags for builds).
PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]
RUN = [
    *PODMAN,
    "run",
    "--rm",
    "--network",
    "host",
    "--ulimit",
    "nofile=4096:4096",
    "--ulimit",
    "nproc=4096:4096",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_http(url: str, timeout: float, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"container exited with {process.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer 200 within {timeout:.0f}s")


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build-images.sh")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {name: f"localhost/ferry-{name}:{VERSION}" for name in ("operator", "runtime", "optimizer")}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("images")
    path.chmod(0o777)  # the containers run as uid 65532
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "digits" / "train.py"),
            str(path / "model"),
            "--epochs",
            "15",
        ],
        check=True,
        capture_output=True,
    )
    (path / "artifact").mkdir(mode=0o777)
    (path / "artifact").chmod(0o777)
    return path


def test_runtime_image_has_no_tensorflow_and_runs_as_non_root(images: dict[str, str]) -> None:
    probe = "import importlib.util, os; print(importlib.util.find_spec('tensorflow') is None, os.getuid())"
    result = subprocess.run(
        [*RUN, "--entrypoint", "python3", images["runtime"], "-c", probe],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.split() == ["True", "65532"]


@pytest.fixture(scope="module")
def optimized(images: dict[str, str], workdir: Path) -> Path:
    spec = workdir / "spec.json"
    spec.write_text(json.dumps({"quantize": "dynamic", "validate": {"metric": "accuracy", "maxDrop": 0.02}}))
    result = subprocess.run(
        [
            *RUN,
            "-v",
            f"{workdir}:/work:z",
            images["optimizer"],
            "--model",
            "file:///work/model/model.keras",
            "--format",
            "keras",
            "--spec",
            "/work/spec.json",
            "--data",
            "file:///work/model/data.npz",
            "--output",
            "file:///work/artifact/",
            "--termination-log",
            "/work/termination.json",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((workdir / "termination.json").read_text())
    assert summary["passed"] is True, summary
    assert (workdir / "artifact" / "model.onnx").stat().st_size > 0
    return workdir / "artifact"


def test_optimizer_image_quantizes_a_keras_model_behind_the_gate(optimized: Path) -> None:
    report = json.loads((optimized / "report.json").read_text())
    assert report["chosen"], report
    assert report["passed"] is True


@pytest.fixture(scope="module")
def runtime_url(images: dict[str, str], optimized: Path) -> Iterator[str]:
    port, grpc_port = _free_port(), _free_port()
    process = subprocess.Popen(
        [
            *RUN,
            "-v",
            f"{optimized}:/mnt/models:ro,z",
            images["runtime"],
            "--model-dir",
            "/mnt/models",
            "--model-name",
            "digits",
            "--http-port",
            str(port),
            "--grpc-port",
            str(grpc_port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_http(f"http://127.0.0.1:{port}/v2/health/ready", 60, process)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()  # podman forwards SIGTERM: the server drains and exits
        process.wait(timeout=60)


def test_runtime_image_serves_the_optimized_model(runtime_url: str, workdir: Path) -> None:
    data = np.load(workdir / "model" / "data.npz")
    x, y = data["x"][:64], data["y"][:64]
    with urllib.request.urlopen(f"{runtime_url}/v2/models/digits", timeout=10) as response:
        metadata = json.loads(response.read())
    (model_input,) = metadata["inputs"]
    body = {
        "inputs": [
            {
                "name": model_input["name"],
                "shape": list(x.shape),
                "datatype": "FP32",
                "data": x.ravel().tolist(),
            }
        ]
    }
    request = urllib.request.Request(
        f"{runtime_url}/v2/models/digits/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        (output,) = json.loads(response.read())["outputs"]
    probabilities = np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])
    accuracy = float((probabilities.argmax(axis=1) == y).mean())
    assert accuracy > 0.85, f"the served model is not the trained classifier (accuracy {accuracy:.3f})"


@pytest.mark.cluster
def test_operator_image_starts_and_answers_health(images: dict[str, str], kube: Kube, tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(kube.kubeconfig.read_text())
    kubeconfig.chmod(0o644)
    port = _free_port()
    process = subprocess.Popen(
        [
            *RUN,
            "-v",
            f"{kubeconfig}:/config/kubeconfig:ro,z",
            "-e",
            "KUBECONFIG=/config/kubeconfig",
            "-e",
            f"FERRY_OPERATOR_METRICS_PORT={port}",
            images["operator"],
            "--namespace",
            "default",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_http(f"http://127.0.0.1:{port}/healthz", 90, process)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            assert b"ferry_" in response.read()
    finally:
        process.terminate()
        output = process.communicate(timeout=60)[0].decode()
    assert process.returncode == 0, output[-3000:]
