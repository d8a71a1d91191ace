"""The hand-written gRPC transport: HPACK against RFC 7541's examples, the response serializer against
protobuf itself, and HTTP/2 behaviour (flow control, compression, cancellation, unknown methods,
non-HTTP/2 clients) against grpcio's client talking to the real server process."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest

from conftest import RuntimeProcess, start_runtime
from ferry_runtime.inference import InferenceResponse, OutputTensor
from ferry_runtime.protocol.grpc import codec, http2
from ferry_runtime.protocol.grpc.generated import grpc_predict_v2_pb2 as pb
from ferry_runtime.protocol.grpc.hpack import (
    Decoder,
    HpackError,
    decode_integer,
    encode_integer,
    encode_literal_indexed_name,
    huffman_decode,
)
from runtime_models import DigitsModel

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"

# RFC 7541 C.3 (plain literals) and C.4 (the same requests, Huffman-coded): three requests on one
# connection, and the dynamic table size after each.
FIRST = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"www.example.com")]
SECOND = [*FIRST, (b"cache-control", b"no-cache")]
THIRD = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":path", b"/index.html"),
    (b":authority", b"www.example.com"),
    (b"custom-key", b"custom-value"),
]
RFC_REQUESTS = {
    "plain": [
        "828684410f7777772e6578616d706c652e636f6d",
        "828684be58086e6f2d6361636865",
        "828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565",
    ],
    "huffman": [
        "828684418cf1e3c2e5f23a6ba0ab90f4ff",
        "828684be5886a8eb10649cbf",
        "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
    ],
}


@pytest.mark.parametrize("coding", sorted(RFC_REQUESTS))
def test_hpack_decodes_the_rfc_request_examples(coding: str) -> None:
    decoder = Decoder()
    decoded = [decoder.decode(bytes.fromhex(block)) for block in RFC_REQUESTS[coding]]
    assert decoded == [FIRST, SECOND, THIRD]
    # Index 62 is the newest entry; a block decoded again (remembered while the table is unchanged)
    # decodes the same way.
    for _ in range(2):
        assert decoder.decode(b"\xbe\xbf") == [
            (b"custom-key", b"custom-value"),
            (b"cache-control", b"no-cache"),
        ]


def test_hpack_huffman_strings_from_the_rfc() -> None:
    assert huffman_decode(bytes.fromhex("6402")) == b"302"
    assert huffman_decode(bytes.fromhex("aec3771a4b")) == b"private"
    assert huffman_decode(bytes.fromhex("d07abe941054d444a8200595040b8166e082a62d1bff")) == (
        b"Mon, 21 Oct 2013 20:13:21 GMT"
    )
    assert huffman_decode(bytes.fromhex("9d29ad171863c78f0b97c8e9ae82ae43d3")) == b"https://www.example.com"
    with pytest.raises(HpackError, match="padding"):
        huffman_decode(b"\x00")  # '0' then three zero bits: padding must be ones


def test_hpack_integers_from_the_rfc() -> None:
    assert encode_integer(10, 5) == b"\x0a"
    assert encode_integer(1337, 5) == b"\x1f\x9a\x0a"
    assert decode_integer(b"\x1f\x9a\x0a", 0, 5) == (1337, 3)
    assert decode_integer(b"\x2a", 0, 8) == (42, 1)


def test_hpack_table_size_update_evicts_and_stale_indexes_are_refused() -> None:
    decoder = Decoder()
    decoder.decode(bytes.fromhex("828684410f7777772e6578616d706c652e636f6d"))
    assert decoder.decode(b"\xbe") == [(b":authority", b"www.example.com")]
    decoder.decode(b"\x20")  # table size update to 0: every entry is evicted
    with pytest.raises(HpackError, match="index 62"):
        decoder.decode(b"\xbe")
    with pytest.raises(HpackError, match="exceeds 4096"):
        decoder.decode(b"\x3f\xe2\x1f")  # size update to 4097, above what this side advertised


def test_response_serializer_matches_protobuf() -> None:
    outputs = [
        OutputTensor("label", "INT64", np.array([3, 7], dtype=np.int64)),
        OutputTensor("probabilities", "FP32", np.arange(20, dtype=np.float32).reshape(2, 10)),
        OutputTensor("text", "BYTES", np.array([b"a", "ünï"], dtype=np.object_)),
        OutputTensor("scalar", "FP64", np.array(2.5)),
        OutputTensor("empty", "FP32", np.zeros((0, 4), dtype=np.float32)),
    ]
    for response in (
        InferenceResponse("digits", "1", outputs, "request-7"),
        InferenceResponse("digits", "", outputs[:1]),
    ):
        expected = pb.ModelInferResponse(
            model_name=response.model_name, model_version=response.model_version, id=response.id
        )
        for tensor in response.outputs:
            expected.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.array.shape)
            expected.raw_output_contents.append(codec.encode_raw(tensor.array))
        assert codec.encode_response(response) == expected.SerializeToString()


def _infer_call(channel: grpc.Channel) -> grpc.UnaryUnaryMultiCallable:
    return channel.unary_unary(
        MODEL_INFER,
        request_serializer=pb.ModelInferRequest.SerializeToString,
        response_deserializer=pb.ModelInferResponse.FromString,
    )


def _request(images: np.ndarray) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="digits")
    request.inputs.add(name="input", datatype="FP32", shape=images.shape)
    request.raw_input_contents.append(images.astype(np.float32).tobytes())
    return request


def test_large_response_waits_for_the_clients_flow_control_window(
    digits_server: RuntimeProcess, digits: DigitsModel
) -> None:
    # 3,000 rows of probabilities are 120 kB: more than HTTP/2's initial 64 kB window.
    images = np.resize(digits.test_images, (3000, 64))
    expected = np.resize(digits.expected_labels, 3000)
    with grpc.insecure_channel(digits_server.grpc) as channel:
        response = _infer_call(channel)(_request(images), timeout=60)
    outputs = {tensor.name: index for index, tensor in enumerate(response.outputs)}
    labels = np.frombuffer(response.raw_output_contents[outputs["label"]], dtype=np.int64)
    probabilities = np.frombuffer(response.raw_output_contents[outputs["probabilities"]], dtype=np.float32)
    assert probabilities.size == 3000 * 10
    np.testing.assert_array_equal(labels, expected)


@pytest.mark.parametrize("compression", [grpc.Compression.Gzip, grpc.Compression.Deflate])
def test_compressed_request_messages_are_inflated(
    digits_server: RuntimeProcess, digits: DigitsModel, compression: grpc.Compression
) -> None:
    with grpc.insecure_channel(digits_server.grpc, compression=compression) as channel:
        response = _infer_call(channel)(_request(digits.test_images[:4]), timeout=30)
    label = next(i for i, tensor in enumerate(response.outputs) if tensor.name == "label")
    labels = np.frombuffer(response.raw_output_contents[label], dtype=np.int64)
    np.testing.assert_array_equal(labels, digits.expected_labels[:4])


def test_unknown_method_is_unimplemented(digits_server: RuntimeProcess) -> None:
    with grpc.insecure_channel(digits_server.grpc) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/RepositoryIndex")
        with pytest.raises(grpc.RpcError) as caught:
            call(b"", timeout=30)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "RepositoryIndex" in (caught.value.details() or "")


def test_a_client_that_does_not_speak_http2_is_disconnected(digits_server: RuntimeProcess) -> None:
    with socket.create_connection(("127.0.0.1", digits_server.grpc_port), timeout=30) as client:
        client.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        while chunk := client.recv(4096):
            received += chunk
    # The server's SETTINGS, then GOAWAY (type 7) with PROTOCOL_ERROR, then the connection closes.
    assert b"not an HTTP/2 connection preface" in received


def test_a_call_cancelled_by_its_deadline_leaves_the_connection_usable(
    digits: DigitsModel, log_dir: Path
) -> None:
    # A long batching delay holds each call in the server past the first call's deadline.
    server = start_runtime(
        digits.path.parent, "digits", log_dir, "--max-batch-size", "64", "--max-batch-delay-ms", "1500"
    )
    try:
        with grpc.insecure_channel(server.grpc) as channel:
            infer = _infer_call(channel)
            with pytest.raises(grpc.RpcError) as caught:
                infer(_request(digits.test_images[:1]), timeout=0.3)
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            response = infer(_request(digits.test_images[:2]), timeout=60)
        label = next(i for i, tensor in enumerate(response.outputs) if tensor.name == "label")
        labels = np.frombuffer(response.raw_output_contents[label], dtype=np.int64)
        np.testing.assert_array_equal(labels, digits.expected_labels[:2])
    finally:
        assert server.stop() == 0, server.log()


Frame = tuple[int, int, bytes]


def _read_frames_until(
    client: socket.socket, buffer: bytearray, enough: Callable[[list[Frame]], bool]
) -> list[Frame]:
    frames: list[Frame] = []
    while not enough(frames):
        chunk = client.recv(65536)
        assert chunk, "the server closed the connection"
        buffer += chunk
        while len(buffer) >= 9 and len(buffer) >= 9 + int.from_bytes(buffer[:3], "big"):
            length = int.from_bytes(buffer[:3], "big")
            frames.append((buffer[3], buffer[4], bytes(buffer[9 : 9 + length])))
            del buffer[: 9 + length]
    return frames


def _data_bytes(frames: list[Frame]) -> int:
    return sum(len(payload) for kind, _, payload in frames if kind == http2.DATA)


def _ended(frames: list[Frame]) -> bool:
    return any(kind == http2.HEADERS and flags & http2.END_STREAM for kind, flags, _ in frames)


def test_response_data_stops_at_the_peers_window_until_it_is_updated(digits_server: RuntimeProcess) -> None:
    # A hand-framed client that never raises HTTP/2's initial 65,535-byte window until it has seen the
    # server stop there (a grpcio client would raise it on its own).
    request = _request(np.zeros((3000, 64), np.float32)).SerializeToString()
    data = b"\x00" + len(request).to_bytes(4, "big") + request
    block = (
        b"\x83\x86"  # :method POST, :scheme http
        + encode_literal_indexed_name(4, MODEL_INFER.encode())
        + encode_literal_indexed_name(31, b"application/grpc")
    )
    opening = http2.PREFACE + http2.frame(http2.SETTINGS, 0, 0)
    opening += http2.frame(http2.HEADERS, http2.END_HEADERS, 1, block)
    for start in range(0, len(data), 16384):
        last = start + 16384 >= len(data)
        opening += http2.frame(http2.DATA, http2.END_STREAM if last else 0, 1, data[start : start + 16384])
    buffer = bytearray()
    with socket.create_connection(("127.0.0.1", digits_server.grpc_port), timeout=30) as client:
        client.sendall(opening)
        before = _read_frames_until(client, buffer, lambda frames: _data_bytes(frames) >= 65535)
        assert _data_bytes(before) == 65535
        assert not _ended(before)
        client.settimeout(0.5)
        with pytest.raises(TimeoutError):
            client.recv(65536)  # and nothing more arrives while the window is exhausted
        client.settimeout(30)
        more = (1 << 20).to_bytes(4, "big")
        client.sendall(
            http2.frame(http2.WINDOW_UPDATE, 0, 0, more) + http2.frame(http2.WINDOW_UPDATE, 0, 1, more)
        )
        after = _read_frames_until(client, buffer, _ended)
    data_frames = [payload for kind, _, payload in before + after if kind == http2.DATA]
    message = b"".join(data_frames)[5:]
    response = pb.ModelInferResponse.FromString(message)
    assert [tensor.name for tensor in response.outputs] == ["label", "probabilities"]
    assert _data_bytes(before + after) == len(message) + 5


def test_a_changed_header_table_size_is_acknowledged_in_the_next_header_block(
    digits_server: RuntimeProcess,
) -> None:
    request = _request(np.zeros((1, 64), np.float32)).SerializeToString()
    block = (
        b"\x83\x86"
        + encode_literal_indexed_name(4, MODEL_INFER.encode())
        + encode_literal_indexed_name(31, b"application/grpc")
    )
    table_size_zero = http2.HEADER_TABLE_SIZE.to_bytes(2, "big") + (0).to_bytes(4, "big")
    opening = http2.PREFACE + http2.frame(http2.SETTINGS, 0, 0, table_size_zero)
    opening += http2.frame(http2.HEADERS, http2.END_HEADERS, 1, block)
    opening += http2.frame(
        http2.DATA, http2.END_STREAM, 1, b"\x00" + len(request).to_bytes(4, "big") + request
    )
    buffer = bytearray()
    with socket.create_connection(("127.0.0.1", digits_server.grpc_port), timeout=30) as client:
        client.sendall(opening)
        frames = _read_frames_until(client, buffer, _ended)
    blocks = [payload for kind, _, payload in frames if kind == http2.HEADERS]
    decoder = Decoder(max_table_size=0)
    assert blocks[0].startswith(b"\x20")  # dynamic table size update to 0 before anything else
    headers = [dict(decoder.decode(block)) for block in blocks]
    assert headers[0][b":status"] == b"200"
    assert headers[-1][b"grpc-status"] == b"0"


def test_concurrent_large_messages_share_the_connection_window_without_deadlock(
    digits_server: RuntimeProcess, digits: DigitsModel
) -> None:
    # The server runs with --max-body-bytes 1000000: its connection window holds one such message beside
    # the streams' initial windows, so eight ~900 kB calls on one connection must take turns for it
    # (each reserves its size when its length prefix arrives) and every one must still complete.
    images = np.resize(digits.test_images, (3500, 64))
    expected = np.resize(digits.expected_labels, 3500)
    with grpc.insecure_channel(digits_server.grpc) as channel:
        infer = _infer_call(channel)
        futures = [infer.future(_request(images), timeout=60) for _ in range(8)]
        responses = [future.result() for future in futures]
    for response in responses:
        label = next(i for i, tensor in enumerate(response.outputs) if tensor.name == "label")
        np.testing.assert_array_equal(
            np.frombuffer(response.raw_output_contents[label], dtype=np.int64), expected
        )
