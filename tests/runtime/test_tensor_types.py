"""Every tensor type the protocol expresses round-trips through the server, and non-tensor outputs are
either served (sequence of maps -> 2-D tensor) or refused at load time with a clear message."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from onnx import TensorProto, helper

from conftest import RuntimeProcess, free_port, start_runtime
from ferry_devcluster.testing import ferry_runtime_command
from runtime_models import DigitsModel, build_digits_model

# Protocol datatype -> (ONNX element type, numpy dtype).
TYPES = {
    "BOOL": (TensorProto.BOOL, np.bool_),
    "UINT8": (TensorProto.UINT8, np.uint8),
    "UINT16": (TensorProto.UINT16, np.uint16),
    "UINT32": (TensorProto.UINT32, np.uint32),
    "UINT64": (TensorProto.UINT64, np.uint64),
    "INT8": (TensorProto.INT8, np.int8),
    "INT16": (TensorProto.INT16, np.int16),
    "INT32": (TensorProto.INT32, np.int32),
    "INT64": (TensorProto.INT64, np.int64),
    "FP16": (TensorProto.FLOAT16, np.float16),
    "FP32": (TensorProto.FLOAT, np.float32),
    "FP64": (TensorProto.DOUBLE, np.float64),
    "BYTES": (TensorProto.STRING, np.object_),
}


def sample(datatype: str) -> np.ndarray:
    dtype = TYPES[datatype][1]
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    if datatype == "BYTES":
        return np.array([["a", "héllo", ""], ["x" * 300, "b", "c"]], dtype=np.object_)
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else np.finfo(dtype)
    return np.array([[info.min, 0, 1], [2, 3, info.max]], dtype=dtype)


@pytest.fixture(scope="module")
def identity_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    nodes, inputs, outputs = [], [], []
    for datatype, (element, _) in TYPES.items():
        name = datatype.lower()
        nodes.append(helper.make_node("Identity", [f"in_{name}"], [f"out_{name}"]))
        inputs.append(helper.make_tensor_value_info(f"in_{name}", element, ["batch", 3]))
        outputs.append(helper.make_tensor_value_info(f"out_{name}", element, ["batch", 3]))
    model = helper.make_model(
        helper.make_graph(nodes, "identity", inputs, outputs), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    directory = tmp_path_factory.mktemp("identity")
    onnx.save(model, directory / "model.onnx")
    runtime = start_runtime(directory, "identity", directory)
    yield runtime
    assert runtime.stop() == 0, runtime.log()


def _assert_same(got: np.ndarray, expected: np.ndarray, datatype: str) -> None:
    if datatype == "BYTES":
        # Triton's clients return BYTES as bytes objects.
        assert [g.decode() if isinstance(g, bytes) else g for g in got.ravel()] == list(expected.ravel())
    else:
        np.testing.assert_array_equal(got, expected)
    assert got.shape == expected.shape


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_every_type_round_trips_over_http(identity_server: RuntimeProcess, binary: bool) -> None:
    client = triton_http.InferenceServerClient(identity_server.http)
    tensors, outputs = [], []
    for datatype in TYPES:
        tensor = triton_http.InferInput(f"in_{datatype.lower()}", [2, 3], datatype)
        tensor.set_data_from_numpy(sample(datatype), binary_data=binary)
        tensors.append(tensor)
        outputs.append(triton_http.InferRequestedOutput(f"out_{datatype.lower()}", binary_data=binary))
    result = client.infer("identity", tensors, outputs=outputs)
    for datatype in TYPES:
        _assert_same(result.as_numpy(f"out_{datatype.lower()}"), sample(datatype), datatype)


def test_every_type_round_trips_over_grpc(identity_server: RuntimeProcess) -> None:
    client = triton_grpc.InferenceServerClient(identity_server.grpc)
    tensors = []
    for datatype in TYPES:
        tensor = triton_grpc.InferInput(f"in_{datatype.lower()}", [2, 3], datatype)
        tensor.set_data_from_numpy(sample(datatype))
        tensors.append(tensor)
    result = client.infer("identity", tensors)
    for datatype in TYPES:
        _assert_same(result.as_numpy(f"out_{datatype.lower()}"), sample(datatype), datatype)


def test_model_metadata_lists_every_type(identity_server: RuntimeProcess) -> None:
    metadata = triton_http.InferenceServerClient(identity_server.http).get_model_metadata("identity")
    assert {tensor["datatype"] for tensor in metadata["inputs"]} == set(TYPES)
    assert all(tensor["shape"] == [-1, 3] for tensor in metadata["outputs"])


def test_non_utf8_bytes_for_a_string_tensor_is_a_400(identity_server: RuntimeProcess) -> None:
    client = triton_http.InferenceServerClient(identity_server.http)
    tensors = []
    for datatype in TYPES:
        data = sample(datatype)
        if datatype == "BYTES":
            data = np.array([[b"\xff\xfe", b"b", b"c"], [b"d", b"e", b"f"]], dtype=np.object_)
        tensor = triton_http.InferInput(f"in_{datatype.lower()}", [2, 3], datatype)
        tensor.set_data_from_numpy(data)
        tensors.append(tensor)
    with pytest.raises(Exception, match="BYTES element 0 is not UTF-8") as caught:
        client.infer("identity", tensors)
    assert "400" in str(caught.value)


def test_zipmap_probabilities_are_served_as_a_matrix(tmp_path: Path) -> None:
    digits: DigitsModel = build_digits_model(tmp_path / "zipmap", zipmap=True)
    runtime = start_runtime(digits.path.parent, "digits", tmp_path)
    try:
        client = triton_http.InferenceServerClient(runtime.http)
        outputs = {tensor["name"]: tensor for tensor in client.get_model_metadata("digits")["outputs"]}
        assert outputs["probabilities"] == {"name": "probabilities", "datatype": "FP32", "shape": [-1, -1]}
        tensor = triton_http.InferInput("input", [5, 64], "FP32")
        tensor.set_data_from_numpy(digits.test_images[:5])
        result = client.infer("digits", [tensor])
        probabilities = result.as_numpy("probabilities")
        assert probabilities.shape == (5, 10)
        np.testing.assert_array_equal(probabilities.argmax(axis=1), digits.expected_labels[:5])
        np.testing.assert_array_equal(result.as_numpy("label"), digits.expected_labels[:5])
    finally:
        assert runtime.stop() == 0


def test_sequence_output_is_refused_at_load_time(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("SequenceConstruct", ["x"], ["parts"])],
        "sequence",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [
            helper.make_value_info(
                "parts",
                helper.make_sequence_type_proto(helper.make_tensor_type_proto(TensorProto.FLOAT, [2])),
            )
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "model.onnx")
    completed = subprocess.run(  # noqa: PLW1510 (the exit code is asserted)
        ferry_runtime_command(tmp_path, "seq", free_port()),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 1
    assert "output 'parts' has type seq(tensor(float))" in completed.stderr
    assert "Open Inference Protocol cannot express" in completed.stderr


def test_missing_model_file_is_refused_with_what_the_directory_holds(tmp_path: Path) -> None:
    (tmp_path / "a.onnx").write_bytes(b"")
    (tmp_path / "b.onnx").write_bytes(b"")
    completed = subprocess.run(  # noqa: PLW1510 (the exit code is asserted)
        ferry_runtime_command(tmp_path, "m", free_port()),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 1
    assert f"expected {tmp_path / 'model.onnx'}; {tmp_path} holds a.onnx, b.onnx" in completed.stderr
