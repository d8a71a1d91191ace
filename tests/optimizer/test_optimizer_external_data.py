"""A model with ONNX external data through ferry-optimize and ferry-runtime: made here (a stack of float
MatMuls, its weights in model.onnx.data), quantized to INT8 and graph-optimized with the data kept
external, written as the folder OUTPUT/model/ that serving pods fetch and check, and served with outputs
that agree with ONNX Runtime in-process on the original.

The model above 2 GiB (protobuf's limit, past which a model must keep its weights outside model.onnx) is
the same test at ~600M parameters, marked slow.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from ferry_devcluster.testing import ferry_runtime_command
from ferry_runtime import storage

SAMPLES = 32


@dataclass(frozen=True)
class Stack:
    width: int
    layers: int

    @property
    def parameters(self) -> int:
        return self.width * self.width * self.layers


SMALL = Stack(width=1024, layers=12)  # 12.6M parameters, 48 MiB of external data
LARGE = Stack(width=4096, layers=36)  # 604M parameters, 2.25 GiB: above protobuf's 2 GiB


def make_stack(folder: Path, stack: Stack) -> Path:
    """x -> (MatMul, Relu) x layers -> y, weights drawn with a fixed seed, saved as model.onnx plus
    model.onnx.data; returns the folder."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    nodes, weights = [], []
    current = "x"
    for layer in range(stack.layers):
        scale = np.float32(1.4 / np.sqrt(stack.width))  # keeps activations of order one through the stack
        weight = rng.standard_normal((stack.width, stack.width), dtype=np.float32) * scale
        weights.append(numpy_helper.from_array(weight, f"w{layer}"))
        nodes.append(helper.make_node("MatMul", [current, f"w{layer}"], [f"m{layer}"]))
        last = layer == stack.layers - 1
        output = "y" if last else f"h{layer}"
        nodes.append(helper.make_node("Identity" if last else "Relu", [f"m{layer}"], [output]))
        current = output
    graph = helper.make_graph(
        nodes,
        "stack",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", stack.width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", stack.width])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save_model(
        model,
        str(folder / "model.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="model.onnx.data",
    )
    return folder


@dataclass(frozen=True)
class Optimized:
    source: Path
    output: Path
    samples: np.ndarray
    termination: dict[str, Any]
    report: dict[str, Any]


def optimize(tmp: Path, stack: Stack) -> Optimized:
    source = make_stack(tmp / "source", stack)
    samples = np.random.default_rng(4).standard_normal((SAMPLES, stack.width), dtype=np.float32)
    np.savez(tmp / "data.npz", x=samples)
    spec = tmp / "spec.yaml"
    spec.write_text("quantize: dynamic\ngraph: extended\nvalidate: {metric: cosine, maxDrop: 0.02}\n")
    output, termination = tmp / "out", tmp / "termination.json"
    command = [str(Path(sys.executable).with_name("ferry-optimize")), "--model", str(source), "--format"]
    command += ["onnx", "--spec", str(spec), "--data", str(tmp / "data.npz"), "--output", str(output)]
    command += ["--termination-log", str(termination), "--runs", "3", "--warmup", "1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=3600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return Optimized(
        source,
        output,
        samples,
        json.loads(termination.read_text()),
        json.loads((output / "report.json").read_text()),
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def served_outputs(folder: Path, samples: np.ndarray) -> tuple[np.ndarray, int]:
    """The outputs ferry-runtime serves for `samples` from `folder` (REST, one request), and its peak
    resident memory in bytes (VmHWM) once it has answered."""
    port = free_port()
    process = subprocess.Popen(
        ferry_runtime_command(folder, "stack", port, grpc_port=free_port()),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 600
        while True:
            assert process.poll() is None, process.stderr.read().decode()[-3000:] if process.stderr else ""
            try:
                with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=5) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                assert time.monotonic() < deadline, "ferry-runtime did not become ready"
                time.sleep(0.5)
        body = {
            "inputs": [
                {
                    "name": "x",
                    "shape": list(samples.shape),
                    "datatype": "FP32",
                    "data": samples.ravel().tolist(),
                }
            ]
        }
        request = urllib.request.Request(
            f"{url}/v2/models/stack/infer", json.dumps(body).encode(), {"content-type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=600) as reply:
            answer = json.loads(reply.read())
        output = answer["outputs"][0]
        values = np.asarray(output["data"], np.float32).reshape(output["shape"])
        status = Path(f"/proc/{process.pid}/status").read_text()
        peak = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")) * 1024
        return values, peak
    finally:
        process.terminate()
        process.wait(60)


def in_process(folder: Path, samples: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    result: np.ndarray = session.run(None, {"x": samples})[0]
    return result


def check(run: Optimized, stack: Stack) -> int:
    """What every size must show; returns the runtime's peak RSS."""
    source_bytes = sum(p.stat().st_size for p in run.source.iterdir())
    assert source_bytes > 4 * stack.parameters
    assert run.report["chosen"] == "optimized", run.report["reason"]
    # The artifact is the folder alone, with its data kept external, and its digest is the one
    # ferry-fetch checks for a directory.
    folder = run.output / "model"
    assert sorted(p.name for p in folder.iterdir()) == ["model.onnx", "model.onnx.data"]
    assert not (run.output / "model.onnx").exists()
    artifact = run.termination["artifact"]
    assert artifact["uri"] == f"{run.output}/model/"
    assert artifact["sha256"] == storage.directory_digest(folder)
    served_bytes = sum(p.stat().st_size for p in folder.iterdir())
    assert artifact["sizeBytes"] == served_bytes
    # INT8 weights: at most 0.35x the float model's bytes.
    assert served_bytes <= 0.35 * source_bytes, (served_bytes, source_bytes)
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    assert any(t.data_location == TensorProto.EXTERNAL for t in graph.graph.initializer)
    # Served outputs agree with ONNX Runtime in-process on the original (per-sample cosine).
    served, peak = served_outputs(folder, run.samples)
    expected = in_process(run.source, run.samples)
    cosine = np.sum(served * expected, axis=1) / (
        np.linalg.norm(served, axis=1) * np.linalg.norm(expected, axis=1)
    )
    assert float(cosine.min()) >= 0.99, cosine
    # The figures docs/status.md quotes (pytest -s shows them).
    print(
        f"\nexternal data: source {source_bytes / 2**20:.0f} MiB -> served {served_bytes / 2**20:.0f} MiB "
        f"({served_bytes / source_bytes:.3f}x), min cosine {float(cosine.min()):.5f}, runtime peak RSS "
        f"{peak / 2**20:.0f} MiB ({peak / served_bytes:.2f}x the served model)"
    )
    return peak


def test_a_model_with_external_data_is_quantized_written_as_a_folder_and_served(tmp_path: Path) -> None:
    run = optimize(tmp_path, SMALL)
    check(run, SMALL)
    # Each step kept the data external: every ONNX step's output in the report is INT8-sized or float.
    steps = {step["name"]: step for step in run.report["steps"]}
    assert steps["quantize"]["after"]["sizeBytes"] < steps["quantize"]["before"]["sizeBytes"] / 2


@pytest.mark.slow
@pytest.mark.skipif(os.cpu_count() is None, reason="needs /proc")
def test_a_model_above_2_gib_goes_through_and_the_runtime_holds_it_once(tmp_path: Path) -> None:
    run = optimize(tmp_path, LARGE)
    assert sum(p.stat().st_size for p in run.source.iterdir()) > 2 << 30
    peak = check(run, LARGE)
    served_bytes = sum(p.stat().st_size for p in (run.output / "model").iterdir())
    # The runtime does not hold the weights twice: peak RSS at most 1.5x the served model.
    assert peak <= 1.5 * served_bytes, f"peak RSS {peak >> 20} MiB for a {served_bytes >> 20} MiB model"
