"""Triton's own Python clients (HTTP and gRPC, JSON and binary) against the real server process."""

from __future__ import annotations

import functools
import queue

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http

from conftest import RuntimeProcess
from runtime_models import DigitsModel


@pytest.fixture
def http_client(digits_server: RuntimeProcess) -> triton_http.InferenceServerClient:
    return triton_http.InferenceServerClient(digits_server.http)


@pytest.fixture
def grpc_client(digits_server: RuntimeProcess) -> triton_grpc.InferenceServerClient:
    return triton_grpc.InferenceServerClient(digits_server.grpc)


def test_health_and_metadata_over_http(http_client: triton_http.InferenceServerClient) -> None:
    assert http_client.is_server_live()
    assert http_client.is_server_ready()
    assert http_client.is_model_ready("digits")
    assert http_client.is_model_ready("digits", "1")
    server = http_client.get_server_metadata()
    assert server["name"] == "ferry-runtime"
    assert "binary_tensor_data" in server["extensions"]
    metadata = http_client.get_model_metadata("digits")
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert {o["name"]: o["datatype"] for o in metadata["outputs"]} == {
        "label": "INT64",
        "probabilities": "FP32",
    }


def test_health_and_metadata_over_grpc(grpc_client: triton_grpc.InferenceServerClient) -> None:
    assert grpc_client.is_server_live()
    assert grpc_client.is_server_ready()
    assert grpc_client.is_model_ready("digits")
    metadata = grpc_client.get_model_metadata("digits", as_json=True)
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "64"]}]
    assert grpc_client.get_server_metadata(as_json=True)["name"] == "ferry-runtime"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_http_predictions_match_scikit_learn(
    http_client: triton_http.InferenceServerClient, digits: DigitsModel, binary: bool
) -> None:
    images = digits.test_images[:50]
    tensor = triton_http.InferInput("input", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images, binary_data=binary)
    outputs = [
        triton_http.InferRequestedOutput("label", binary_data=binary),
        triton_http.InferRequestedOutput("probabilities", binary_data=binary),
    ]
    result = http_client.infer("digits", [tensor], outputs=outputs, request_id="r-1")
    np.testing.assert_array_equal(result.as_numpy("label"), digits.expected_labels[:50])
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (50, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert result.get_response()["id"] == "r-1"


def test_http_default_outputs_are_binary_and_complete(
    http_client: triton_http.InferenceServerClient, digits: DigitsModel
) -> None:
    # With no outputs named, tritonclient asks for every output in binary (binary_data_output).
    tensor = triton_http.InferInput("input", [3, 64], "FP32")
    tensor.set_data_from_numpy(digits.test_images[:3])
    result = http_client.infer("digits", [tensor], model_version="1")
    np.testing.assert_array_equal(result.as_numpy("label"), digits.expected_labels[:3])
    assert result.as_numpy("probabilities").shape == (3, 10)


def test_http_compressed_request(http_client: triton_http.InferenceServerClient, digits: DigitsModel) -> None:
    tensor = triton_http.InferInput("input", [4, 64], "FP32")
    tensor.set_data_from_numpy(digits.test_images[:4])
    for algorithm in ("gzip", "deflate"):
        result = http_client.infer("digits", [tensor], request_compression_algorithm=algorithm)
        np.testing.assert_array_equal(result.as_numpy("label"), digits.expected_labels[:4])


def test_grpc_predictions_match_scikit_learn(
    grpc_client: triton_grpc.InferenceServerClient, digits: DigitsModel
) -> None:
    images = digits.test_images[:50]
    tensor = triton_grpc.InferInput("input", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)
    result = grpc_client.infer(
        "digits", [tensor], outputs=[triton_grpc.InferRequestedOutput("label")], request_id="g-1"
    )
    np.testing.assert_array_equal(result.as_numpy("label"), digits.expected_labels[:50])
    assert result.as_numpy("probabilities") is None  # only what was asked for
    assert result.get_response().id == "g-1"


def test_grpc_async_requests_all_answered(
    grpc_client: triton_grpc.InferenceServerClient, digits: DigitsModel
) -> None:
    # Many concurrent requests exercise the batcher's concat/split path: each answer must be its own.
    answers: queue.Queue[tuple[int, triton_grpc.InferResult | None, Exception | None]] = queue.Queue()
    for index in range(40):
        tensor = triton_grpc.InferInput("input", [1, 64], "FP32")
        tensor.set_data_from_numpy(digits.test_images[index : index + 1])
        grpc_client.async_infer("digits", [tensor], callback=functools.partial(_collect, answers, index))
    for _ in range(40):
        index, result, error = answers.get(timeout=60)
        assert error is None
        assert result is not None
        np.testing.assert_array_equal(result.as_numpy("label"), digits.expected_labels[index : index + 1])


def _collect(
    answers: queue.Queue[tuple[int, triton_grpc.InferResult | None, Exception | None]],
    index: int,
    result: triton_grpc.InferResult | None,
    error: Exception | None,
) -> None:
    answers.put((index, result, error))
