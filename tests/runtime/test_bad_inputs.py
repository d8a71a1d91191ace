"""Every client mistake gets a 4xx (REST) or a non-INTERNAL status (gRPC) naming what was wrong."""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any

import grpc
import numpy as np
import pytest

from conftest import RuntimeProcess
from ferry_runtime.protocol.grpc.generated import grpc_predict_v2_pb2 as pb

ROW = [0.5] * 64


def post(
    server: RuntimeProcess, path: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    connection = http.client.HTTPConnection(server.http, timeout=30)
    connection.request("POST", path, body=body, headers=headers or {})
    reply = connection.getresponse()
    data = reply.read()
    connection.close()
    return reply.status, {k.lower(): v for k, v in reply.getheaders()}, json.loads(data) if data else None


def infer_body(inputs: list[dict[str, Any]], **extra: Any) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


def good_input(**overrides: Any) -> dict[str, Any]:
    return {"name": "input", "datatype": "FP32", "shape": [1, 64], "data": ROW} | overrides


REST_CASES = {
    "wrong shape": (
        "/v2/models/digits/infer",
        infer_body([good_input(shape=[1, 63], data=ROW[:63])]),
        {},
        400,
        ["model 'digits' input 'input'", "FP32 with shape [-1, 64]", "[1, 63]"],
    ),
    "wrong rank": (
        "/v2/models/digits/infer",
        infer_body([good_input(shape=[64])]),
        {},
        400,
        ["input 'input'", "[-1, 64]", "got FP32 with shape [64]"],
    ),
    "wrong dtype": (
        "/v2/models/digits/infer",
        infer_body([good_input(datatype="FP64")]),
        {},
        400,
        ["input 'input' expects FP32", "got FP64"],
    ),
    "unknown datatype": (
        "/v2/models/digits/infer",
        infer_body([good_input(datatype="FLOAT")]),
        {},
        400,
        ["input 'input'", "'FLOAT' is not one of", "FP32"],
    ),
    "missing input": (
        "/v2/models/digits/infer",
        infer_body([good_input(name="pixels")]),
        {},
        400,
        ["needs input 'input'", "FP32 with shape [-1, 64]", "the request has: pixels"],
    ),
    "extra input": (
        "/v2/models/digits/infer",
        infer_body([good_input(), good_input(name="extra")]),
        {},
        400,
        ["has no input(s) 'extra'", "its inputs are: input"],
    ),
    "duplicate input": (
        "/v2/models/digits/infer",
        infer_body([good_input(), good_input()]),
        {},
        400,
        ["input(s) input given more than once"],
    ),
    "data length": (
        "/v2/models/digits/infer",
        infer_body([good_input(shape=[2, 64])]),
        {},
        400,
        ["input 'input'", "shape [2, 64] needs 128 elements, data holds 64"],
    ),
    "ragged data": (
        "/v2/models/digits/infer",
        infer_body([good_input(data=[[1.0, 2.0], [3.0]])]),
        {},
        400,
        ["input 'input'", "cannot be read as FP32"],
    ),
    "non-numeric data": (
        "/v2/models/digits/infer",
        infer_body([good_input(data=["a"] * 64)]),
        {},
        400,
        ["input 'input'", "cannot be read as FP32"],
    ),
    "no data": (
        "/v2/models/digits/infer",
        infer_body([{"name": "input", "datatype": "FP32", "shape": [1, 64]}]),
        {},
        400,
        ["input 'input' has neither 'data' nor a binary_data_size"],
    ),
    "negative shape": (
        "/v2/models/digits/infer",
        infer_body([good_input(shape=[-1, 64])]),
        {},
        400,
        ["input 'input'", "non-negative integers", "[-1, 64]"],
    ),
    "no inputs": ("/v2/models/digits/infer", b'{"inputs": []}', {}, 400, ["'inputs' list"]),
    "malformed JSON": ("/v2/models/digits/infer", b'{"inputs": [', {}, 400, ["not valid JSON"]),
    "JSON not an object": ("/v2/models/digits/infer", b"[1, 2]", {}, 400, ["must be a JSON object"]),
    "unknown output": (
        "/v2/models/digits/infer",
        infer_body([good_input()], outputs=[{"name": "logits"}]),
        {},
        400,
        ["has no output 'logits'", "label", "probabilities"],
    ),
    "unknown model": (
        "/v2/models/mnist/infer",
        infer_body([good_input()]),
        {},
        404,
        ["unknown model 'mnist'", "serves model 'digits'"],
    ),
    "unknown version": (
        "/v2/models/digits/versions/7/infer",
        infer_body([good_input()]),
        {},
        404,
        ["model 'digits' has no version '7'", "available versions: 1"],
    ),
    "binary size mismatch": (
        "/v2/models/digits/infer",
        (
            header := json.dumps(
                {
                    "inputs": [
                        {
                            "name": "input",
                            "datatype": "FP32",
                            "shape": [1, 64],
                            "parameters": {"binary_data_size": 12},
                        }
                    ]
                }
            ).encode()
        )
        + b"\0" * 12,
        {"Inference-Header-Content-Length": str(len(header))},
        400,
        ["input 'input'", "needs 256 bytes", "got 12"],
    ),
    "binary header past the body": (
        "/v2/models/digits/infer",
        infer_body([good_input()]),
        {"Inference-Header-Content-Length": "999999"},
        400,
        ["Inference-Header-Content-Length is 999999"],
    ),
    "unused binary data": (
        "/v2/models/digits/infer",
        (header2 := infer_body([good_input()])) + b"trailing",
        {"Inference-Header-Content-Length": str(len(header2))},
        400,
        ["8 bytes of binary tensor data", "add up to 0"],
    ),
    "unsupported encoding": (
        "/v2/models/digits/infer",
        infer_body([good_input()]),
        {"Content-Encoding": "br"},
        415,
        ["Content-Encoding 'br' is not supported"],
    ),
    "corrupt gzip": (
        "/v2/models/digits/infer",
        b"not gzip at all",
        {"Content-Encoding": "gzip"},
        400,
        ["not valid gzip data"],
    ),
    "unknown endpoint": ("/v2/model/digits/infer", b"{}", {}, 404, ["no endpoint at /v2/model/digits/infer"]),
    "wrong method": ("/v2/health/live", b"", {}, 405, ["/v2/health/live accepts GET, not POST"]),
}


@pytest.mark.parametrize("case", sorted(REST_CASES))
def test_rest_bad_input(digits_server: RuntimeProcess, case: str) -> None:
    path, body, headers, status, fragments = REST_CASES[case]
    got_status, reply_headers, document = post(digits_server, path, body, headers)
    assert got_status == status, document
    assert reply_headers["content-type"] == "application/json"
    for fragment in fragments:
        assert fragment in document["error"], document["error"]


def test_rest_server_still_serves_after_bad_inputs(digits_server: RuntimeProcess) -> None:
    status, _, document = post(digits_server, "/v2/models/digits/infer", infer_body([good_input()]))
    assert status == 200
    assert document["outputs"][0]["name"] == "label"


def test_oversized_body_is_refused_before_it_is_sent(digits_server: RuntimeProcess) -> None:
    # The server answers 413 from the headers alone; the client never sends the body.
    with socket.create_connection(("127.0.0.1", digits_server.http_port), timeout=30) as client:
        client.sendall(
            b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 50000000\r\n\r\n"
        )
        reply = _read_response(client)
    assert reply.startswith(b"HTTP/1.1 413 ")
    assert b"50000000 bytes exceeds the 1000000-byte limit" in reply


def test_oversized_chunked_body_is_refused(digits_server: RuntimeProcess) -> None:
    with socket.create_connection(("127.0.0.1", digits_server.http_port), timeout=30) as client:
        client.sendall(
            b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"x" * 100_000
        try:
            for _ in range(20):
                client.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = _read_response(client)
    assert reply.startswith(b"HTTP/1.1 413 ")


def _read_response(client: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        chunk = client.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


# --- gRPC ----------------------------------------------------------------------------------------


def grpc_infer(server: RuntimeProcess, request: pb.ModelInferRequest | bytes) -> grpc.RpcError:
    with grpc.insecure_channel(server.grpc) as channel:
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=lambda message: (
                message if isinstance(message, bytes) else message.SerializeToString()
            ),
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as caught:
            call(request, timeout=30)
    return caught.value


def grpc_request(
    *,
    model: str = "digits",
    version: str = "",
    name: str = "input",
    datatype: str = "FP32",
    shape: tuple[int, ...] = (1, 64),
    raw: bytes | None = None,
    contents: list[float] | None = None,
    extra_input: bool = False,
    outputs: tuple[str, ...] = (),
) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name=model, model_version=version)
    tensor = message.inputs.add(name=name, datatype=datatype, shape=shape)
    if contents is not None:
        tensor.contents.fp32_contents.extend(contents)
    else:
        message.raw_input_contents.append(raw if raw is not None else np.zeros(shape, np.float32).tobytes())
    if extra_input:
        message.inputs.add(name="extra", datatype="FP32", shape=(1, 64))
        message.raw_input_contents.append(np.zeros((1, 64), np.float32).tobytes())
    for output in outputs:
        message.outputs.add(name=output)
    return message


GRPC_CASES = {
    "wrong shape": (
        grpc_request(shape=(1, 63), raw=b"\0" * 252),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["input 'input'", "[-1, 64]", "[1, 63]"],
    ),
    "wrong dtype": (
        grpc_request(datatype="FP64", raw=b"\0" * 512),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["expects FP32", "got FP64"],
    ),
    "missing input": (grpc_request(name="pixels"), grpc.StatusCode.INVALID_ARGUMENT, ["needs input 'input'"]),
    "extra input": (
        grpc_request(extra_input=True),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["has no input(s) 'extra'"],
    ),
    "raw length": (
        grpc_request(raw=b"\0" * 100),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["input 'input'", "needs 256 bytes", "got 100"],
    ),
    "contents length": (
        grpc_request(contents=[1.0] * 10),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["input 'input'", "needs 64 elements", "fp32_contents holds 10"],
    ),
    "FP16 without raw": (
        grpc_request(datatype="FP16", contents=[]),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["FP16 data must be sent in raw_input_contents"],
    ),
    "unknown output": (
        grpc_request(outputs=("logits",)),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["has no output 'logits'"],
    ),
    "unknown model": (
        grpc_request(model="mnist"),
        grpc.StatusCode.NOT_FOUND,
        ["unknown model 'mnist'", "digits"],
    ),
    "unknown version": (
        grpc_request(version="7"),
        grpc.StatusCode.NOT_FOUND,
        ["no version '7'", "available versions: 1"],
    ),
    "undecodable message": (
        b"\xff\xff\xff",
        grpc.StatusCode.INVALID_ARGUMENT,
        ["not a valid ModelInferRequest"],
    ),
    "oversized message": (
        grpc_request(shape=(5000, 64), raw=b"\0" * (5000 * 256)),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        ["larger than max"],
    ),
}


@pytest.mark.parametrize("case", sorted(GRPC_CASES))
def test_grpc_bad_input(digits_server: RuntimeProcess, case: str) -> None:
    request, code, fragments = GRPC_CASES[case]
    error = grpc_infer(digits_server, request)
    assert error.code() == code, error.details()
    for fragment in fragments:
        assert fragment in (error.details() or ""), error.details()


def test_grpc_raw_contents_count_must_match_inputs(digits_server: RuntimeProcess) -> None:
    message = grpc_request()
    message.raw_input_contents.append(b"")
    error = grpc_infer(digits_server, message)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "raw_input_contents has 2 entries for 1 inputs" in (error.details() or "")


def test_grpc_metadata_of_unknown_model(digits_server: RuntimeProcess) -> None:
    with grpc.insecure_channel(digits_server.grpc) as channel:
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelMetadata",
            request_serializer=pb.ModelMetadataRequest.SerializeToString,
            response_deserializer=pb.ModelMetadataResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as caught:
            call(pb.ModelMetadataRequest(name="mnist"), timeout=30)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "unknown model 'mnist'" in (caught.value.details() or "")
