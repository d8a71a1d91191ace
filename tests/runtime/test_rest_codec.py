"""The REST codec's shortcuts give the same results as the general path they replace.

The response encoder renders JSON from precomputed per-output bytes, so its output is checked against
orjson's rendering of the plain document (byte for byte); the request decoder remembers the layout of a binary
request's JSON header, so a repeated header must still carry each request's own tensor bytes and a
body that no longer matches the remembered layout must get the general path's error.
"""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest

from ferry_runtime.errors import InvalidInput
from ferry_runtime.inference import InferenceRequest, RequestedOutput
from ferry_runtime.model import Array, TensorSpec
from ferry_runtime.protocol.rest.codec import RequestDecoder, ResponseEncoder, decode_request

OUTPUT_SPECS = (
    TensorSpec("label", "INT64", (-1,)),
    TensorSpec("probabilities", "FP32", (-1, 3)),
    TensorSpec("names", "BYTES", (-1,)),
)
OUTPUTS: dict[str, Array] = {
    "label": np.array([2, 0], dtype=np.int64),
    "probabilities": np.array([[0.1, 0.2, 0.7], [0.5, 0.25, 0.25]], dtype=np.float32),
    "names": np.array(["two", "zéro"], dtype=np.object_),
}


def binary_body(images: np.ndarray, request_id: str = "") -> tuple[bytes, int]:
    document: dict[str, object] = {
        "inputs": [
            {
                "name": "input",
                "datatype": "FP32",
                "shape": list(images.shape),
                "parameters": {"binary_data_size": images.nbytes},
            }
        ],
        "outputs": [{"name": "label", "parameters": {"binary_data": True}}],
    }
    if request_id:
        document["id"] = request_id
    header = json.dumps(document).encode()
    return header + images.tobytes(), len(header)


def expected_document(request: InferenceRequest, names: list[str]) -> dict[str, object]:
    outputs = []
    for name in names:
        array = OUTPUTS[name]
        # What the encoder replaced: orjson rendering each array itself (float32 in its shortest form).
        data = array.ravel().tolist() if array.dtype == np.object_ else array.ravel()
        datatype = next(spec.datatype for spec in OUTPUT_SPECS if spec.name == name)
        outputs.append({"name": name, "datatype": datatype, "shape": list(array.shape), "data": data})
    document: dict[str, object] = {"model_name": "digits", "model_version": "3", "outputs": outputs}
    if request.id:
        document["id"] = request.id
    return document


@pytest.mark.parametrize("request_id", ["", 'req "7"'])
def test_json_response_matches_the_plain_document(request_id: str) -> None:
    encoder = ResponseEncoder("digits", "3", OUTPUT_SPECS)
    request = InferenceRequest("digits", "", [], None, request_id)
    body, json_length = encoder.encode(request, OUTPUTS)
    assert json_length is None
    document = expected_document(request, ["label", "probabilities", "names"])
    assert body == orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)


def test_binary_response_carries_the_requested_outputs_in_order() -> None:
    encoder = ResponseEncoder("digits", "3", OUTPUT_SPECS)
    request = InferenceRequest(
        "digits",
        "",
        [],
        [RequestedOutput("probabilities", {"binary_data": True}), RequestedOutput("label")],
    )
    body, json_length = encoder.encode(request, OUTPUTS)
    assert json_length is not None
    header = orjson.loads(body[:json_length])
    assert [output["name"] for output in header["outputs"]] == ["probabilities", "label"]
    probabilities, label = header["outputs"]
    assert probabilities["parameters"] == {"binary_data_size": OUTPUTS["probabilities"].nbytes}
    assert "data" not in probabilities
    assert label["data"] == [2, 0]
    raw = np.frombuffer(body[json_length:], dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(raw, OUTPUTS["probabilities"])


def test_repeated_binary_header_decodes_each_requests_own_tensor() -> None:
    decoder = RequestDecoder()
    rng = np.random.default_rng(0)
    for _ in range(3):
        images = rng.random((2, 4), dtype=np.float32)
        body, json_length = binary_body(images, request_id="same")
        request = decoder.decode(body, json_length, "digits", "")
        general = decode_request(body, json_length, "digits", "")
        np.testing.assert_array_equal(request.inputs[0].array, images)
        assert request.inputs[0].datatype == general.inputs[0].datatype == "FP32"
        assert request.outputs == general.outputs
        assert request.id == general.id == "same"


def test_remembered_header_with_wrong_binary_length_gets_the_general_error() -> None:
    decoder = RequestDecoder()
    images = np.zeros((1, 4), dtype=np.float32)
    body, json_length = binary_body(images)
    decoder.decode(body, json_length, "digits", "")
    with pytest.raises(InvalidInput, match="binary_data_size 16 runs past the end"):
        decoder.decode(body[:-4], json_length, "digits", "")
    with pytest.raises(InvalidInput, match="add up to 16"):
        decoder.decode(body + b"\0\0\0\0", json_length, "digits", "")
