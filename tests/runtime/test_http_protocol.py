"""HTTP/1.1 behaviour of the REST server: keep-alive, pipelining, chunked bodies, 100-continue, HTTP/1.0."""

from __future__ import annotations

import json
import socket

from conftest import RuntimeProcess

ROW = ",".join(["1.0"] * 64)
BODY = (
    f'{{"inputs":[{{"name":"input","datatype":"FP32","shape":[1,64],"data":[{ROW}]}}],'
    f'"outputs":[{{"name":"label"}}]}}'
).encode()


def infer_request(body: bytes = BODY, extra: bytes = b"") -> bytes:
    return b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n%s\r\n%s" % (
        len(body),
        extra,
        body,
    )


def read_responses(client: socket.socket, count: int) -> list[tuple[bytes, bytes]]:
    """(head, body) of `count` responses framed by Content-Length."""
    data = b""
    responses = []
    while len(responses) < count:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            head = data[:end]
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            if len(data) >= end + 4 + length:
                responses.append((head, data[end + 4 : end + 4 + length]))
                data = data[end + 4 + length :]
                continue
        chunk = client.recv(65536)
        assert chunk, f"connection closed after {len(responses)} responses"
        data += chunk
    return responses


def connect(server: RuntimeProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.http_port), timeout=30)


def test_pipelined_requests_are_answered_in_order(digits_server: RuntimeProcess) -> None:
    with connect(digits_server) as client:
        # An inference, a cheap GET, another inference with an id and a bad request, in one write.
        second = BODY.replace(b'"inputs"', b'"id":"second","inputs"')
        client.sendall(
            infer_request()
            + b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n"
            + infer_request(second)
            + infer_request(b"{not json")
        )
        responses = read_responses(client, 4)
    assert [head.split(b" ")[1] for head, _ in responses] == [b"200", b"200", b"200", b"400"]
    assert json.loads(responses[0][1])["outputs"][0]["name"] == "label"
    assert json.loads(responses[1][1]) == {"live": True}
    assert json.loads(responses[2][1])["id"] == "second"
    assert "not valid JSON" in json.loads(responses[3][1])["error"]


def test_keep_alive_serves_many_requests_on_one_connection(digits_server: RuntimeProcess) -> None:
    with connect(digits_server) as client:
        for _ in range(20):
            client.sendall(infer_request())
            ((head, _),) = read_responses(client, 1)
            assert head.startswith(b"HTTP/1.1 200")
            assert b"connection: close" not in head


def test_chunked_request_body(digits_server: RuntimeProcess) -> None:
    chunks = [BODY[:50], BODY[50:200], BODY[200:]]
    encoded = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks) + b"0\r\n\r\n"
    with connect(digits_server) as client:
        client.sendall(
            b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            + encoded
        )
        ((head, body),) = read_responses(client, 1)
    assert head.startswith(b"HTTP/1.1 200")
    assert json.loads(body)["outputs"][0]["name"] == "label"


def test_expect_100_continue(digits_server: RuntimeProcess) -> None:
    with connect(digits_server) as client:
        client.sendall(
            b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: t\r\n"
            b"Content-Length: %d\r\nExpect: 100-continue\r\n\r\n" % len(BODY)
        )
        assert client.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        client.sendall(BODY)
        ((head, _),) = read_responses(client, 1)
    assert head.startswith(b"HTTP/1.1 200")


def test_http_1_0_closes_unless_asked_to_keep_alive(digits_server: RuntimeProcess) -> None:
    with connect(digits_server) as client:
        client.sendall(b"GET /v2/health/live HTTP/1.0\r\n\r\n")
        ((head, _),) = read_responses(client, 1)
        assert b"connection: close" in head.lower()
        assert client.recv(10) == b""
    with connect(digits_server) as client:
        client.sendall(b"GET /v2/health/live HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" * 2)
        responses = read_responses(client, 2)
        assert all(b"connection: keep-alive" in head.lower() for head, _ in responses)


def test_http_1_0_keep_alive_inference(digits_server: RuntimeProcess) -> None:
    """Inference answers after the request has been handed to the model (on another thread), unlike the
    health endpoints; an HTTP/1.0 client that asked for keep-alive must still be told the connection stays."""
    request = infer_request(extra=b"Connection: keep-alive\r\n").replace(b"HTTP/1.1", b"HTTP/1.0", 1)
    with connect(digits_server) as client:
        for _ in range(3):
            client.sendall(request)
            ((head, body),) = read_responses(client, 1)
            assert head.startswith(b"HTTP/1.1 200"), head
            assert head.lower().count(b"connection: keep-alive") == 1, head
            assert json.loads(body)["outputs"][0]["name"] == "label"
        # pipelined: responses queue behind one another and each carries the header once
        client.sendall(request * 2)
        responses = read_responses(client, 2)
        assert [head.lower().count(b"connection: keep-alive") for head, _ in responses] == [1, 1]


def test_connection_close_is_honoured(digits_server: RuntimeProcess) -> None:
    with connect(digits_server) as client:
        client.sendall(infer_request(extra=b"Connection: close\r\n"))
        ((head, _),) = read_responses(client, 1)
        assert b"connection: close" in head
        assert client.recv(10) == b""


def test_head_and_get_endpoints(digits_server: RuntimeProcess) -> None:
    with connect(digits_server) as client:
        client.sendall(
            b"HEAD /v2/health/ready HTTP/1.1\r\nHost: t\r\n\r\n"
            b"GET /v2/models/digits/versions/1/ready HTTP/1.1\r\nHost: t\r\n\r\n"
            b"GET /v2/models/digits/versions/1 HTTP/1.1\r\nHost: t\r\n\r\n"
            b"GET /v2 HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        head_only = client.recv(4096).split(b"\r\n\r\n", 1)
        assert head_only[0].startswith(b"HTTP/1.1 200")
        assert b"content-length: 14" in head_only[0]
        remaining = head_only[1]
        # The three GET responses follow the HEAD response, which has no body.
        client.settimeout(30)
        responses = _parse_all(remaining, client, 3)
    assert json.loads(responses[0]) == {"name": "digits", "ready": True}
    assert json.loads(responses[1])["versions"] == ["1"]
    assert json.loads(responses[2])["name"] == "ferry-runtime"


def _parse_all(data: bytes, client: socket.socket, count: int) -> list[bytes]:
    bodies = []
    while len(bodies) < count:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            head = data[:end].lower()
            length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
            if len(data) >= end + 4 + length:
                bodies.append(data[end + 4 : end + 4 + length])
                data = data[end + 4 + length :]
                continue
        data += client.recv(65536)
    return bodies


def test_malformed_http_gets_400_and_close(digits_server: RuntimeProcess) -> None:
    with connect(digits_server) as client:
        client.sendall(b"THIS IS NOT HTTP\r\n\r\n")
        data = client.recv(4096)
    assert data.startswith(b"HTTP/1.1 400")
    assert b"malformed HTTP request" in data
