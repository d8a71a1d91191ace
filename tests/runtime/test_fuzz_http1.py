"""Property-based fuzzing (hypothesis) of a real ferry-runtime's HTTP/1.1 request parser and of its v2
JSON and binary codecs: whatever a client sends, it is served or refused with a 4xx (or RFC 9112's 501
for a transfer coding the server does not implement) or its connection is closed; nothing escapes as a
500, and the server keeps answering. Examples are bounded (a couple of hundred per property, no
deadline) so the module takes seconds.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import attacks
import runtime_models
from conftest import RuntimeProcess, start_runtime

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
DATATYPES = ["BOOL", "INT8", "INT32", "INT64", "UINT8", "UINT64", "FP16", "FP32", "FP64", "BYTES", "FLOAT"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    model_dir = runtime_models.build_pair_model(tmp_path_factory.mktemp("pair")).parent
    runtime = start_runtime(
        model_dir, "pair", tmp_path_factory.mktemp("fuzz-logs"), "--max-body-bytes", "1000000"
    )
    yield runtime
    # The property of the whole module: no request the fuzzers sent was counted as a server error
    # other than 501 (RFC 9112's answer to a transfer coding the server does not implement).
    errors = attacks.server_errors(runtime.http_port)
    assert set(errors) <= {"501"}, errors
    assert runtime.stop() == 0, runtime.log()


def exchange(server: RuntimeProcess, raw: bytes, *, half_close: bool) -> bytes:
    """Send raw bytes and read until the server closes (or 10 s pass). `half_close` ends the sending
    side, so a request the bytes leave incomplete ends at once (the server closes on end of input, so
    an answer still being computed is not sent then)."""
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as client:
        try:
            client.sendall(raw)
            if half_close:
                client.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = b""
        try:
            while chunk := client.recv(65536):
                data += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    return data


def statuses(data: bytes) -> list[int]:
    """The status codes of the responses in `data` (each head starts with the status line)."""
    found = []
    for line in data.split(b"\r\n"):
        if line.startswith(b"HTTP/1.1 ") and line[9:12].isdigit():
            found.append(int(line[9:12]))
    return found


def assert_no_server_error(data: bytes) -> None:
    for status in statuses(data):
        assert status < 500 or status == 501, data[:2000]


# --- the HTTP/1.1 request parser ------------------------------------------------------------------

TOKENS = st.sampled_from(
    [b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"PRI", b"G\x00T", b"", b"post"]
)
TARGETS = st.one_of(
    st.sampled_from(
        [
            b"/v2/health/ready",
            b"/v2/models/pair/infer",
            b"/v2/models/pair",
            b"/v2/models/pair/versions/1/infer",
            b"/v2/models/pair/feedback",
            b"/metrics",
            b"*",
            b"http://x/v2",
            b"/v2/models/%ff%fe/infer",
        ]
    ),
    st.binary(max_size=64),
)
VERSIONS = st.sampled_from(
    [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1 ", b"HTTP/9.9", b"http/1.1", b""]
)
HEADER_NAMES = st.sampled_from(
    [
        b"Host",
        b"Content-Length",
        b"Transfer-Encoding",
        b"Inference-Header-Content-Length",
        b"Content-Encoding",
        b"Expect",
        b"Connection",
        b"Upgrade",
        b"X-Anything",
        b"Bad Name",
        b"",
    ]
)
HEADER_VALUES = st.one_of(
    st.sampled_from(
        [
            b"chunked",
            b"gzip, chunked",
            b"chunked, gzip",
            b"0",
            b"5",
            b"-1",
            b"+5",
            b"1_0",
            b"99999999999999999999999",
            b"gzip",
            b"100-continue",
            b"close",
            b"keep-alive",
            b"h2c",
            b"x",
        ]
    ),
    st.integers(min_value=0, max_value=2000).map(lambda n: str(n).encode()),
    st.binary(max_size=40),
)
HEADERS = st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=8)
BODIES = st.one_of(
    st.just(b""),
    st.just(b'{"inputs":[{"name":"a","datatype":"FP32","shape":[1,3],"data":[1,2,3]}]}'),
    st.just(b"5\r\nhello\r\n0\r\n\r\n"),
    st.binary(max_size=200),
)


@st.composite
def http_requests(draw: st.DrawFn) -> bytes:
    request = b"%s %s %s\r\n" % (draw(TOKENS), draw(TARGETS), draw(VERSIONS))
    for name, value in draw(HEADERS):
        request += b"%s: %s\r\n" % (name, value)
    request += b"\r\n" + draw(BODIES)
    # Now and then a byte flipped, dropped or doubled anywhere, framing included.
    mutations = draw(st.lists(st.tuples(st.integers(0, len(request)), st.binary(max_size=2)), max_size=3))
    for position, replacement in mutations:
        request = request[:position] + replacement + request[position + 1 :]
    return request


@FUZZ
@given(raw=http_requests(), pipelined=st.integers(min_value=1, max_value=3))
def test_http_parser_serves_or_refuses(server: RuntimeProcess, raw: bytes, pipelined: int) -> None:
    assert_no_server_error(exchange(server, raw * pipelined, half_close=True))


# --- the v2 JSON and binary codecs ----------------------------------------------------------------

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=6), st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=30,
)
SHAPES = st.one_of(
    st.lists(st.integers(min_value=0, max_value=4), max_size=4),
    # Dimensions at the edges: empty, huge, past int64, negative; and very many of them.
    st.lists(st.sampled_from([0, 1, 3, 2**31, 2**62, 2**63 - 1, 2**64, -1]), max_size=4),
    st.lists(st.sampled_from([0, 1]), min_size=30, max_size=70),
    JSON_VALUES,
)
TENSOR_DATA = st.one_of(
    st.just([]),
    st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32), max_size=6),
    st.lists(st.lists(st.integers(-3, 300), max_size=3), max_size=3),
    JSON_VALUES,
)


ITEM_SIZES = {"BOOL": 1, "INT8": 1, "INT32": 4, "INT64": 8, "UINT8": 1, "UINT64": 8, "FP16": 2, "FP32": 4}
ITEM_SIZES |= {"FP64": 8}


@st.composite
def v2_inputs(draw: st.DrawFn, binary: bool) -> tuple[dict[str, Any], bytes]:
    if draw(st.booleans()):
        return draw(consistent_inputs(binary))
    entry: dict[str, Any] = {
        "name": draw(st.sampled_from(["a", "b", "c", ""]) | JSON_SCALARS),
        "datatype": draw(st.sampled_from(DATATYPES) | JSON_SCALARS),
        "shape": draw(SHAPES),
    }
    raw = b""
    if binary and draw(st.booleans()):
        raw = draw(st.one_of(st.binary(max_size=64), _bytes_elements()))
        entry["parameters"] = {
            "binary_data_size": draw(st.one_of(st.just(len(raw)), st.integers(-2, 100), JSON_SCALARS))
        }
    elif draw(st.integers(0, 4)):
        entry["data"] = draw(TENSOR_DATA)
    if draw(st.integers(0, 9)) == 0:
        entry[draw(st.sampled_from(["parameters", "data", "shape", "extra"]))] = draw(JSON_VALUES)
    return entry, raw


@st.composite
def consistent_inputs(draw: st.DrawFn, binary: bool) -> tuple[dict[str, Any], bytes]:
    """An input whose data matches its shape and datatype, so the example gets past the codec into the
    data plane and the model: what is left to be wrong is the shape, the datatype or the other inputs."""
    name = draw(st.sampled_from(["a", "b"]))
    datatype = draw(st.sampled_from(DATATYPES[:-1]))
    shape = draw(
        st.lists(st.integers(0, 4), max_size=3)
        | st.lists(st.sampled_from([0, 1, 3, 2**31, 2**62, 2**63 - 1]), max_size=4)
    )
    count = 1
    for dim in shape:
        count *= dim
    count = count if count <= 64 else 0
    entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
    if binary:
        if datatype == "BYTES":
            raw = b"".join(struct.pack("<I", 1) + b"x" for _ in range(count))
        else:
            raw = draw(
                st.binary(min_size=count * ITEM_SIZES[datatype], max_size=count * ITEM_SIZES[datatype])
            )
        entry["parameters"] = {"binary_data_size": len(raw)}
        return entry, raw
    if datatype == "BYTES":
        entry["data"] = draw(st.lists(st.text(max_size=4), min_size=count, max_size=count))
    else:
        entry["data"] = draw(st.lists(st.integers(0, 1), min_size=count, max_size=count))
    return entry, b""


def _bytes_elements() -> st.SearchStrategy[bytes]:
    """BYTES tensor data: (4-byte little-endian length, bytes) pairs, sometimes lying about a length."""
    element = st.tuples(st.binary(max_size=8), st.integers(-2, 2)).map(
        lambda pair: struct.pack("<I", max(0, len(pair[0]) + pair[1])) + pair[0]
    )
    return st.lists(element, max_size=4).map(b"".join)


@st.composite
def v2_bodies(draw: st.DrawFn, binary: bool) -> tuple[bytes, int | None]:
    inputs = draw(st.lists(v2_inputs(binary), max_size=3))
    document: dict[str, Any] = {"inputs": [entry for entry, _ in inputs]}
    if draw(st.booleans()):
        document["id"] = draw(st.one_of(st.text(max_size=20), JSON_SCALARS))
    if draw(st.booleans()):
        document["outputs"] = draw(
            st.one_of(
                st.lists(
                    st.fixed_dictionaries(
                        {"name": st.sampled_from(["sum", "x"])},
                        optional={"parameters": st.dictionaries(st.just("binary_data"), JSON_SCALARS)},
                    ),
                    max_size=2,
                ),
                JSON_VALUES,
            )
        )
    if draw(st.booleans()):
        document["parameters"] = draw(
            st.one_of(st.dictionaries(st.just("binary_data_output"), JSON_SCALARS), JSON_VALUES)
        )
    header = json.dumps(document).encode()
    if not binary:
        return header, None
    blob = b"".join(raw for _, raw in inputs)
    length = draw(st.one_of(st.just(len(header)), st.integers(0, len(header) + len(blob) + 2)))
    return header + blob, length


def infer(server: RuntimeProcess, body: bytes, header_length: int | None) -> bytes:
    extra = b"" if header_length is None else b"Inference-Header-Content-Length: %d\r\n" % header_length
    raw = b"POST /v2/models/pair/infer HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n"
    raw += b"Content-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)
    return exchange(server, raw, half_close=False)


@FUZZ
@given(request=v2_bodies(binary=False))
def test_json_codec_serves_or_refuses(server: RuntimeProcess, request: tuple[bytes, int | None]) -> None:
    data = infer(server, *request)
    assert statuses(data), data[:500]
    assert_no_server_error(data)


@FUZZ
@given(request=v2_bodies(binary=True))
def test_binary_codec_serves_or_refuses(server: RuntimeProcess, request: tuple[bytes, int | None]) -> None:
    data = infer(server, *request)
    assert statuses(data), data[:500]
    assert_no_server_error(data)


@FUZZ
@given(document=st.one_of(st.fixed_dictionaries({"id": JSON_SCALARS, "label": JSON_VALUES}), JSON_VALUES))
def test_feedback_serves_or_refuses(server: RuntimeProcess, document: Any) -> None:
    body = json.dumps(document).encode()
    raw = b"POST /v2/models/pair/feedback HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n"
    data = exchange(server, raw + b"Content-Length: %d\r\n\r\n%s" % (len(body), body), half_close=False)
    assert statuses(data), data[:500]
    assert_no_server_error(data)
