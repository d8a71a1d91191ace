"""Property-based fuzzing (hypothesis) of the HPACK decoder and the HTTP/2 frame parser.

The decoder, given any bytes, returns headers or raises HpackError / HeaderListTooLarge, never
anything else, and never returns more than its header-list limit. The connection, given any sequence
of frames after the preface, lets no exception escape `data_received`, and is either still serving
(no GOAWAY with an error code) or has sent a GOAWAY with one of RFC 9113's error codes and closed.
The connection runs in-process on a recording transport (a real socket would make 200 examples take
minutes; the real-socket behaviour is h2spec's and the attack suite's job)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import attacks_http2
from ferry_runtime.protocol.grpc import http2
from ferry_runtime.protocol.grpc.hpack import Decoder, HeaderListTooLarge, HpackError, encode_integer

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CONNECTION_ERRORS = {
    http2.PROTOCOL_ERROR,
    http2.FLOW_CONTROL_ERROR,
    http2.STREAM_CLOSED,
    http2.FRAME_SIZE_ERROR,
    http2.COMPRESSION_ERROR,
    http2.ENHANCE_YOUR_CALM,
}

# HPACK building blocks that reach every branch of the decoder: indexed fields (static and dynamic,
# valid and not), literals of each kind with Huffman or plain strings, table size updates.
_hpack_piece = st.one_of(
    st.integers(0, 130).map(lambda index: encode_integer(index, 7, 0x80)),
    st.tuples(st.integers(0, 70), st.binary(max_size=40), st.booleans()).map(
        lambda t: (
            encode_integer(t[0], 6, 0x40)
            + (b"" if t[0] else encode_integer(3, 7) + b"abc")
            + encode_integer(len(t[1]), 7, 0x80 if t[2] else 0)
            + t[1]
        )
    ),
    st.tuples(st.sampled_from([0x00, 0x10]), st.binary(max_size=40)).map(
        lambda t: bytes((t[0],)) + encode_integer(4, 7) + b"name" + encode_integer(len(t[1]), 7) + t[1]
    ),
    st.integers(0, 5000).map(lambda size: encode_integer(size, 5, 0x20)),
    st.binary(max_size=16),
)
_hpack_block = st.lists(_hpack_piece, max_size=12).map(b"".join)


@FUZZ
@given(blocks=st.lists(_hpack_block, min_size=1, max_size=6))
def test_hpack_decoder_returns_headers_or_a_compression_error(blocks: list[bytes]) -> None:
    decoder = Decoder(max_list_size=512)
    for block in blocks:
        oversized = 0
        try:
            headers = decoder.decode(block)
        except HeaderListTooLarge as error:
            oversized, headers = error.size, error.headers
        except HpackError:
            return  # a connection error: the decoder is not used again
        assert oversized == 0 or oversized > 512
        assert sum(len(name) + len(value) + 32 for name, value in headers) <= 512
        assert all(isinstance(name, bytes) and isinstance(value, bytes) for name, value in headers)


def test_hpack_references_to_one_large_entry_cannot_become_a_large_header_list() -> None:
    # A 4 KiB entry added once, then referenced 4,000 times (one byte each): 16 MB decoded.
    decoder = Decoder(max_list_size=16384)
    block = b"\x40" + encode_integer(3, 7) + b"big" + encode_integer(4000, 7) + b"v" * 4000 + b"\xbe" * 4000
    with pytest.raises(HeaderListTooLarge) as caught:
        decoder.decode(block)
    assert caught.value.size > 16_000_000
    assert len(caught.value.headers) <= 4


class _RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    event_loop = asyncio.new_event_loop()
    yield event_loop
    event_loop.close()


def _echo(message: bytes, call: http2.Call) -> None:
    call.reply(message)


_stream_ids = st.sampled_from([0, 1, 2, 3, 5, 7, 9, 0x7FFFFFFF])
_request = st.sampled_from(
    [
        attacks_http2.request_block(b"/echo"),
        attacks_http2.request_block(b"/unknown"),
        attacks_http2.request_block(b"/echo", attacks_http2.literal(b"content-length", b"7")),
        b"\x82\x86\x84",  # GET http /
    ]
)
_payload = st.one_of(
    st.binary(max_size=48),
    _request,
    _hpack_block,
    st.integers(0, 2**32 - 1).map(lambda n: n.to_bytes(4, "big")),  # WINDOW_UPDATE / RST_STREAM
    st.binary(min_size=6, max_size=6).map(lambda setting: setting * 2),  # SETTINGS
    st.binary(max_size=20).map(lambda message: b"\x00" + len(message).to_bytes(4, "big") + message),
)
_frame = st.builds(
    attacks_http2.frame,
    st.integers(0, 11),
    st.sampled_from([0, 0x1, 0x4, 0x5, 0x8, 0x20, 0x25, 0xFF]),
    _stream_ids,
    _payload,
)


def _server_frames(data: bytes) -> list[tuple[int, bytes]]:
    frames = []
    offset = 0
    while len(data) - offset >= 9:
        length = int.from_bytes(data[offset : offset + 3], "big")
        frames.append((data[offset + 3], data[offset + 9 : offset + 9 + length]))
        offset += 9 + length
    assert offset == len(data), "the server wrote a truncated frame"
    return frames


@FUZZ
@given(frames=st.lists(_frame, max_size=12), split=st.integers(1, 64))
def test_frame_parser_serves_or_closes_with_an_rfc_error_code(
    loop: asyncio.AbstractEventLoop, frames: list[bytes], split: int
) -> None:
    async def make() -> http2.GrpcConnection:
        server = http2.GrpcTransportServer({"/echo": _echo}, http2.Http2Limits(max_message_bytes=1 << 20))
        return http2.GrpcConnection(server)

    connection = loop.run_until_complete(make())
    transport = _RecordingTransport()
    connection.connection_made(transport)
    data = http2.PREFACE + b"".join(frames)
    # Delivered in pieces of `split` bytes: frames cut across reads must parse the same way.
    for start in range(0, len(data), split):
        connection.data_received(data[start : start + split])
        if transport.closed:
            break
    loop.run_until_complete(asyncio.sleep(0))
    written = _server_frames(bytes(transport.written))
    assert written[0][0] == http2.SETTINGS
    errors = [
        int.from_bytes(payload[4:8], "big")
        for kind, payload in written
        if kind == http2.GOAWAY and payload[4:8] != b"\x00\x00\x00\x00"
    ]
    if transport.closed:
        assert errors, "closed without a GOAWAY that says why"
        assert errors[-1] in CONNECTION_ERRORS
    else:
        assert not errors, "a GOAWAY with an error code must close the connection"
    connection.connection_lost(None)
