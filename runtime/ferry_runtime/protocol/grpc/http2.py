"""gRPC's HTTP/2 transport for unary calls, on an asyncio protocol (uvloop), like the REST server.

Why not grpcio's server: on a small machine grpcio spends 300-500 µs of server CPU per unary call
before any handler runs (measured with an echo service, synchronous and asyncio servers alike), more
than the whole REST JSON path costs per inference. A unary gRPC call is a small, fixed exchange of
HTTP/2 frames, so this module speaks it directly: frames are parsed from one buffer per connection,
headers decoded with a per-connection HPACK decoder (`hpack.py`), and a response is written as
precomputed header bytes, one DATA frame and precomputed trailers, coalesced with the other responses
completed in the same event-loop iteration into one socket write.

What it implements (RFC 9113 and gRPC over HTTP/2): the connection preface and SETTINGS exchange,
PING replies, stream states and the connection and stream errors RFC 9113 asks for (h2spec runs clean:
tests/runtime/test_h2spec.py), request header validation (pseudo-headers, field names and values,
connection-specific fields, content-length), flow control in both directions, frames split at the
peer's maximum frame size, CONTINUATION in both directions, padding, RST_STREAM from either side,
GOAWAY for a graceful stop, gzip/deflate request messages, and gRPC status, message and custom
trailing metadata. Not implemented (refused with a clear status): streaming calls (a unary method
given more than one message) and TLS (the runtime serves plain-text h2c, as grpcio's
`add_insecure_port` did).

What one client may cost is bounded (`Http2Limits`, docs/runtime.md "HTTP/2 limits"): concurrent
streams, the header list and header block, the bytes buffered per connection (the receive windows are a
budget that is only given back as calls take their messages), and writes (a client that does not read
its responses stops being read).
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import struct
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, cast
from urllib.parse import quote

import grpc

from ferry_runtime.protocol.grpc.hpack import (
    Decoder,
    Header,
    HeaderListTooLarge,
    HpackError,
    encode_literal,
    encode_literal_indexed_name,
)

log = logging.getLogger(__name__)

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types and flags (RFC 9113 section 6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    range(10)
)
END_STREAM: Final = 0x1
ACK: Final = 0x1
END_HEADERS: Final = 0x4
PADDED: Final = 0x8
PRIORITY_FLAG: Final = 0x20

# Error codes.
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 0x5, 0x6, 0x7, 0x8, 0x9
ENHANCE_YOUR_CALM: Final = 0xB

# Settings identifiers.
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS = 0x1, 0x2, 0x3
INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE = 0x4, 0x5, 0x6

MAX_WINDOW: Final = 2**31 - 1
DEFAULT_WINDOW: Final = 65535
DEFAULT_FRAME_SIZE: Final = 16384
# The longest grpc-message sent, in bytes once percent-encoded: status details must fit the peer's
# header-list limit (8 KiB in grpc-core) with room for the other trailers.
MAX_STATUS_MESSAGE_BYTES: Final = 4096

# Consumed request bytes are given back to the client's connection window in steps of this size, so
# small calls do not cost a WINDOW_UPDATE each (the connection window has this much slack for it).
RELEASE_THRESHOLD: Final = 1 << 20

# Request bytes one connection may have processed in one event-loop iteration before it yields to the
# others: libuv reads a readable socket up to 32 times per wake-up, so a client that floods (PINGs,
# SETTINGS, tiny frames) could otherwise hold the loop for a second per wake-up.
READ_TURN_BYTES: Final = 256 * 1024

# Why a connection or stream was refused: the `reason` label of ferry_http2_rejected_total.
REJECTION_REASONS: Final = (
    "refused_stream",  # more concurrent streams than SETTINGS_MAX_CONCURRENT_STREAMS: RST REFUSED_STREAM
    "header_list_too_large",  # decoded headers above SETTINGS_MAX_HEADER_LIST_SIZE: 431/RESOURCE_EXHAUSTED
    "header_block_too_large",  # header block (with CONTINUATION frames) above the hard cap: ENHANCE_YOUR_CALM
    "flow_control",  # the client sent more than its window: FLOW_CONTROL_ERROR
    "malformed_request",  # RFC 9113 8.1.1 malformed request headers: RST PROTOCOL_ERROR
    "stream_error",  # another stream error (stream state, frame field): RST_STREAM
    "connection_error",  # another connection error (framing, stream state, HPACK): GOAWAY
)

Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Http2Limits:
    """What one HTTP/2 connection may cost (the runtime settings `http2_*`, docs/runtime.md)."""

    max_concurrent_streams: int = 100
    max_header_list_bytes: int = 16 * 1024
    max_header_block_bytes: int = 64 * 1024
    max_frame_bytes: int = DEFAULT_FRAME_SIZE
    initial_stream_window_bytes: int = DEFAULT_WINDOW
    # The largest request message (the runtime's max_body_bytes).
    max_message_bytes: int = 64 * 1024 * 1024

    @property
    def connection_window_bytes(self) -> int:
        """The connection's receive window: the most request bytes it buffers at once.

        Every open stream may fill its initial window, and one message of the largest size must still
        fit beside them (a unary call's message is only handed over once complete), with the slack of
        consumed bytes not yet given back, so that no mix of streams can deadlock the connection; a
        client that sends more than that is refused (FLOW_CONTROL_ERROR)."""
        return min(self._initial_windows + RELEASE_THRESHOLD + 5 + self.max_message_bytes, MAX_WINDOW)

    @property
    def reservable_bytes(self) -> int:
        """What streams whose message exceeds the initial window may reserve between them."""
        return self.connection_window_bytes - self._initial_windows - RELEASE_THRESHOLD

    @property
    def _initial_windows(self) -> int:
        return self.max_concurrent_streams * max(self.initial_stream_window_bytes, DEFAULT_WINDOW)


# A frame header: 24-bit length (as its top byte and lower 16 bits), type, flags, 31-bit stream id.
_FRAME_HEADER: Final = struct.Struct(">BHBBI")


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    length = len(payload)
    return _FRAME_HEADER.pack(length >> 16, length & 0xFFFF, kind, flags, stream_id) + payload


def _settings_payload(settings: dict[int, int]) -> bytes:
    return b"".join(key.to_bytes(2, "big") + value.to_bytes(4, "big") for key, value in settings.items())


def server_preamble(limits: Http2Limits) -> bytes:
    """This side's SETTINGS and the connection window's opening WINDOW_UPDATE."""
    settings = frame(
        SETTINGS,
        0,
        0,
        _settings_payload(
            {
                ENABLE_PUSH: 0,
                MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
                INITIAL_WINDOW_SIZE: limits.initial_stream_window_bytes,
                MAX_FRAME_SIZE: limits.max_frame_bytes,
                MAX_HEADER_LIST_SIZE: limits.max_header_list_bytes,
            }
        ),
    )
    opening = limits.connection_window_bytes - DEFAULT_WINDOW
    if opening > 0:
        settings += frame(WINDOW_UPDATE, 0, 0, opening.to_bytes(4, "big"))
    return settings


_SETTINGS_ACK: Final = frame(SETTINGS, ACK, 0)

# Response headers as HPACK literals that never touch the dynamic table, so they are constant bytes.
_STATUS_200: Final = b"\x88"  # static table index 8: ":status: 200"
_CONTENT_TYPE_GRPC: Final = encode_literal_indexed_name(31, b"application/grpc")
_ACCEPT_ENCODING: Final = encode_literal(b"grpc-accept-encoding", b"identity,deflate,gzip")
RESPONSE_HEADERS: Final = _STATUS_200 + _CONTENT_TYPE_GRPC + _ACCEPT_ENCODING
_OK_TRAILERS: Final = encode_literal(b"grpc-status", b"0")
_TABLE_SIZE_ZERO: Final = b"\x20"
_CONTENT_TYPE_TEXT: Final = encode_literal_indexed_name(31, b"text/plain; charset=utf-8")
_ALLOW_POST: Final = encode_literal_indexed_name(22, b"POST")

_SAFE: Final = " !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~"


def _percent_encoded(message: str, limit: int) -> bytes:
    """grpc-message's percent-encoding, cut at a character boundary to at most `limit` bytes."""
    encoded = quote(message, safe=_SAFE).encode("ascii")
    if len(encoded) <= limit:
        return encoded
    cut = bytearray()
    for character in message:
        piece = quote(character, safe=_SAFE).encode("ascii")
        if len(cut) + len(piece) > limit:
            break
        cut += piece
    return bytes(cut)


def status_block(
    code: grpc.StatusCode, message: str, metadata: Metadata = (), limit: int = MAX_STATUS_MESSAGE_BYTES
) -> bytes:
    """grpc-status, grpc-message (percent-encoded, as gRPC requires) and custom metadata, HPACK-coded."""
    number = cast(int, code.value[0])
    block = encode_literal(b"grpc-status", str(number).encode())
    if message:
        block += encode_literal(b"grpc-message", _percent_encoded(message, limit))
    for key, value in metadata:
        block += encode_literal(key.encode("ascii"), value.encode("ascii"))
    return block


# RFC 9113 8.2.1 / RFC 9110 5.1: a field name is a lowercase token; 8.2.1: no NUL, CR or LF in a value,
# and no whitespace at either end of it.
_BAD_NAME: Final = re.compile(rb"[^!#$%&'*+\-.^_`|~0-9a-z]")
_BAD_VALUE: Final = re.compile(rb"[\x00\r\n]|^[ \t]|[ \t]$")
_CONNECTION_SPECIFIC: Final = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")
)
_REQUEST_PSEUDO: Final = frozenset((b":method", b":scheme", b":path", b":authority"))


class _Malformed(Exception):
    """A malformed request (RFC 9113 8.1.1): a stream error of type PROTOCOL_ERROR."""


@dataclass(slots=True)
class _Head:
    """What a request's header block says, validated."""

    method: bytes = b""
    path: bytes = b""
    authorization: bytes | None = None
    content_type: bytes = b""
    encoding: bytes = b""
    content_length: int = -1


def _request_head(headers: list[Header]) -> _Head:
    head = _Head()
    seen: set[bytes] = set()
    regular = False
    for name, value in headers:
        if name[:1] == b":":
            if regular:
                raise _Malformed(f"pseudo-header {name.decode('latin-1')} after a regular field")
            if name not in _REQUEST_PSEUDO:
                raise _Malformed(f"{name.decode('latin-1')} is not a request pseudo-header")
            if name in seen:
                raise _Malformed(f"{name.decode('latin-1')} appears twice")
            seen.add(name)
            if name == b":method":
                head.method = value
            elif name == b":path":
                if not value:
                    raise _Malformed(":path is empty")
                head.path = value
            continue
        regular = True
        if _BAD_NAME.search(name) or not name:
            raise _Malformed(f"field name {name!r} is not a lowercase token")
        if value and _BAD_VALUE.search(value):
            raise _Malformed(f"field {name.decode()} has a value with NUL, CR, LF or surrounding whitespace")
        if name in _CONNECTION_SPECIFIC:
            raise _Malformed(f"connection-specific field {name.decode()} is not allowed in HTTP/2")
        if name == b"te":
            if value != b"trailers":
                raise _Malformed(f"te must be 'trailers', got {value.decode('latin-1')!r}")
        elif name == b"content-type":
            head.content_type = value
        elif name == b"grpc-encoding":
            head.encoding = value
        elif name == b"authorization":
            head.authorization = value
        elif name == b"content-length":
            if not value.isdigit() or (head.content_length >= 0 and int(value) != head.content_length):
                raise _Malformed(f"content-length {value.decode('latin-1')!r} is not one number")
            head.content_length = int(value)
    if head.method != b"CONNECT" and not (b":method" in seen and b":scheme" in seen and b":path" in seen):
        missing = sorted(p.decode() for p in (b":method", b":scheme", b":path") if p not in seen)
        raise _Malformed(f"request without {', '.join(missing)}")
    return head


class Call:
    """One unary call: the handler answers it exactly once, with `reply` or `fail`."""

    __slots__ = ("_connection", "_stream", "received")

    def __init__(self, connection: GrpcConnection, stream: _Stream, received: float) -> None:
        self._connection = connection
        self._stream = stream
        # When the request message was complete (for the request-duration metric).
        self.received = received

    @property
    def authorization(self) -> bytes | None:
        return self._stream.authorization

    def reply(self, message: bytes) -> None:
        self._connection.send_message(self._stream, message)

    def fail(self, code: grpc.StatusCode, message: str, metadata: Metadata = ()) -> None:
        self._connection.send_status(self._stream, code, message, metadata)


# A method handler: the request message's bytes and the call to answer.
Handler = Callable[[bytes, Call], None]


class Http2ConnectionError(Exception):
    """A violation that ends the whole HTTP/2 connection with GOAWAY."""

    def __init__(self, code: int, message: str, reason: str = "connection_error") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


# How a stream that is no longer open ended, as far as frames that arrive for it later are concerned.
_RESET_HERE, _RESET_BY_PEER, _ENDED = 0, 1, 2


class _Stream:
    __slots__ = (
        "authorization",
        "body",
        "closed",
        "compressed_with",
        "content_length",
        "data_received",
        "end_block",
        "id",
        "method",
        "pending",
        "recv_window",
        "remote_done",
        "reserved",
        "send_window",
    )

    def __init__(self, stream_id: int, send_window: int, recv_window: int) -> None:
        self.id = stream_id
        self.method: Handler | None = None
        # The request's authorization metadata, for the service's authenticator.
        self.authorization: bytes | None = None
        self.compressed_with = b""
        self.body = bytearray()
        self.remote_done = False
        self.send_window = send_window
        # What the client may still send on this stream.
        self.recv_window = recv_window
        # Bytes of the connection's reservable budget this stream holds (its whole message's size).
        self.reserved = 0
        self.content_length = -1
        self.data_received = 0
        # Response DATA waiting for flow-control window, then the block that ends the stream
        # (trailers; None: the last DATA frame ends it).
        self.pending = b""
        self.end_block: bytes | None = None
        # This side has sent (or queued) its END_STREAM or RST_STREAM.
        self.closed = False


class GrpcConnection(asyncio.Protocol):
    def __init__(self, server: GrpcTransportServer) -> None:
        self.server = server
        self.loop = server.loop
        limits = server.limits
        self.limits = limits
        self._rejected = server.rejected
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._preface_seen = False
        self._decoder = Decoder(max_list_size=limits.max_header_list_bytes)
        self._streams: dict[int, _Stream] = {}
        # Streams no longer open, newest last (bounded): how frames that arrive late for them are met.
        self._ended: OrderedDict[int, int] = OrderedDict()
        self._last_stream_id = 0
        self._goaway_sent = False
        self._closed = False
        self._write_paused = False
        # Bytes processed in this event-loop iteration; past READ_TURN_BYTES reading waits for the next.
        self._turn_bytes = 0
        self._turn_over = False
        self._reading_paused = False
        # Peer settings that shape what this side sends.
        self._peer_initial_window = DEFAULT_WINDOW
        self._peer_max_frame = DEFAULT_FRAME_SIZE
        self._peer_max_header_list = 1 << 62
        self._send_window = DEFAULT_WINDOW
        self._blocked: list[_Stream] = []
        # Receiving: what the client may still send on the connection, bytes consumed (handed to a
        # handler or discarded) and not yet given back with WINDOW_UPDATE, and the reservable budget.
        self._recv_window = max(limits.connection_window_bytes, DEFAULT_WINDOW)
        self._released = 0
        self._reservable = limits.reservable_bytes
        self._initial_window = limits.initial_stream_window_bytes
        self._block_cap = limits.max_header_block_bytes
        self._ended_cap = 2 * limits.max_concurrent_streams + 16
        self._waiting_for_reservation: list[_Stream] = []
        # Until the client acknowledges this side's SETTINGS it may still use the default window.
        self._stream_window = max(limits.initial_stream_window_bytes, DEFAULT_WINDOW)
        # A header block being continued by CONTINUATION frames: (stream id, flags, fragments, size).
        self._continuing: tuple[int, int, list[bytes]] | None = None
        self._continuing_size = 0
        # Validated heads of recently seen header blocks (the decoder returns the same list object for
        # a block it remembers), so a client's repeated calls are validated once.
        self._heads: dict[int, tuple[list[Header], _Head]] = {}
        self._out: list[bytes] = []
        self._flush_scheduled = False
        # Set when the client changes SETTINGS_HEADER_TABLE_SIZE: HPACK then wants the next header block
        # this side sends to start with a table size update (to 0: this side never indexes).
        self._table_update = b""

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.server.connections.add(self)
        self._out.append(self.server.preamble)
        if self.server.draining:
            self.goaway()
        self._flush()

    def connection_lost(self, _exc: Exception | None) -> None:
        self._closed = True
        for stream in self._streams.values():
            stream.closed = True
        self._streams.clear()
        self._blocked.clear()
        self._waiting_for_reservation.clear()
        self.server.connections.discard(self)
        self.server.connection_idle()

    def pause_writing(self) -> None:
        # The client is not reading what this side writes: stop reading it (and stop working through
        # what was already read) until it does, so its requests cannot pile up responses here.
        self._write_paused = True
        self.server.read_pauses[0] += 1
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()
        if not self._closed:
            self.data_received(b"")

    def _update_reading(self) -> None:
        paused = self._write_paused or self._turn_over
        if paused != self._reading_paused and self.transport is not None and not self._closed:
            self._reading_paused = paused
            if paused:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def _next_turn(self) -> None:
        self._turn_bytes = 0
        self._turn_over = False
        self._update_reading()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        self._turn_bytes += len(data)
        if self._turn_bytes > READ_TURN_BYTES and not self._turn_over:
            self._turn_over = True
            self._update_reading()
            self.loop.call_soon(self._next_turn)
        try:
            if not self._preface_seen:
                if len(buffer) < len(PREFACE):
                    if not PREFACE.startswith(bytes(buffer)):
                        raise Http2ConnectionError(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                    return
                if buffer[: len(PREFACE)] != PREFACE:
                    raise Http2ConnectionError(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                del buffer[: len(PREFACE)]
                self._preface_seen = True
            offset = 0
            available = len(buffer)
            unpack = _FRAME_HEADER.unpack_from
            max_frame = self.limits.max_frame_bytes
            while available - offset >= 9 and not self._write_paused:
                length_high, length_low, kind, flags, stream_id = unpack(buffer, offset)
                length = length_high << 16 | length_low
                if length > max_frame:
                    raise Http2ConnectionError(
                        FRAME_SIZE_ERROR,
                        f"frame of {length} bytes exceeds SETTINGS_MAX_FRAME_SIZE ({max_frame})",
                    )
                end = offset + 9 + length
                if end > available:
                    break
                stream_id &= 0x7FFFFFFF
                payload = bytes(buffer[offset + 9 : end])
                offset = end
                self._frame(kind, flags, stream_id, payload)
                if self._closed:
                    return
            del buffer[:offset]
        except Http2ConnectionError as error:
            self._fail_connection(error)
        except HpackError as error:
            self._fail_connection(Http2ConnectionError(COMPRESSION_ERROR, str(error)))
        self._flush()

    # --- frames ---

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._continuing is not None and kind != CONTINUATION:
            raise Http2ConnectionError(PROTOCOL_ERROR, "header block interrupted before END_HEADERS")
        if kind == DATA:
            self._data(flags, stream_id, payload)
        elif kind == HEADERS:
            self._headers(flags, stream_id, payload)
        elif kind == CONTINUATION:
            self._continuation(flags, stream_id, payload)
        elif kind == WINDOW_UPDATE:
            self._window_update(stream_id, payload)
        elif kind == SETTINGS:
            self._settings(flags, stream_id, payload)
        elif kind == PING:
            if stream_id:
                raise Http2ConnectionError(PROTOCOL_ERROR, "PING on a stream")
            if len(payload) != 8:
                raise Http2ConnectionError(FRAME_SIZE_ERROR, "PING payload must be 8 bytes")
            if not flags & ACK:
                self._out.append(frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            self._rst_stream(stream_id, payload)
        elif kind == PRIORITY:
            self._priority(stream_id, payload)
        elif kind == GOAWAY:
            if stream_id:
                raise Http2ConnectionError(PROTOCOL_ERROR, "GOAWAY on a stream")
            if len(payload) < 8:
                raise Http2ConnectionError(FRAME_SIZE_ERROR, "GOAWAY payload shorter than 8 bytes")
            # The client stops opening streams; calls in flight are still answered.
        elif kind == PUSH_PROMISE:
            raise Http2ConnectionError(PROTOCOL_ERROR, "clients must not send PUSH_PROMISE")
        # Unknown frame types are ignored, as RFC 9113 requires.

    def _idle(self, stream_id: int) -> bool:
        # Even ids are the server's, and this side never opens a stream: they are always idle.
        return stream_id > self._last_stream_id or not stream_id & 1

    def _settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise Http2ConnectionError(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise Http2ConnectionError(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            self._stream_window = self.limits.initial_stream_window_bytes
            return
        if len(payload) % 6:
            raise Http2ConnectionError(FRAME_SIZE_ERROR, "SETTINGS payload is not a multiple of 6 bytes")
        for position in range(0, len(payload), 6):
            key = int.from_bytes(payload[position : position + 2], "big")
            value = int.from_bytes(payload[position + 2 : position + 6], "big")
            if key == INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise Http2ConnectionError(FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE too large")
                delta = value - self._peer_initial_window
                self._peer_initial_window = value
                for stream in self._streams.values():
                    stream.send_window += delta
                    if stream.send_window > MAX_WINDOW:
                        raise Http2ConnectionError(FLOW_CONTROL_ERROR, "a stream window above 2^31-1")
            elif key == HEADER_TABLE_SIZE:
                self._table_update = _TABLE_SIZE_ZERO
            elif key == ENABLE_PUSH:
                if value > 1:
                    raise Http2ConnectionError(PROTOCOL_ERROR, f"SETTINGS_ENABLE_PUSH {value} is not 0 or 1")
            elif key == MAX_FRAME_SIZE:
                if not DEFAULT_FRAME_SIZE <= value <= 2**24 - 1:
                    raise Http2ConnectionError(
                        PROTOCOL_ERROR, f"SETTINGS_MAX_FRAME_SIZE {value} out of range"
                    )
                self._peer_max_frame = value
            elif key == MAX_HEADER_LIST_SIZE:
                self._peer_max_header_list = value
        self._out.append(_SETTINGS_ACK)
        self._pump()

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise Http2ConnectionError(FRAME_SIZE_ERROR, "WINDOW_UPDATE payload must be 4 bytes")
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if stream_id == 0:
            if not increment:
                raise Http2ConnectionError(PROTOCOL_ERROR, "WINDOW_UPDATE with an increment of 0")
            self._send_window += increment
            if self._send_window > MAX_WINDOW:
                raise Http2ConnectionError(FLOW_CONTROL_ERROR, "connection window above 2^31-1")
        else:
            stream = self._streams.get(stream_id)
            if stream is None:
                if self._idle(stream_id):
                    raise Http2ConnectionError(PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {stream_id}")
                return  # a closed stream: the update may have crossed this side's END_STREAM
            if not increment:
                self._stream_error(stream, PROTOCOL_ERROR, "stream_error")
                return
            stream.send_window += increment
            if stream.send_window > MAX_WINDOW:
                self._stream_error(stream, FLOW_CONTROL_ERROR, "flow_control")
                return
        self._pump()

    def _rst_stream(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise Http2ConnectionError(FRAME_SIZE_ERROR, "RST_STREAM payload must be 4 bytes")
        if stream_id == 0:
            raise Http2ConnectionError(PROTOCOL_ERROR, "RST_STREAM on stream 0")
        stream = self._streams.get(stream_id)
        if stream is None:
            if self._idle(stream_id):
                raise Http2ConnectionError(PROTOCOL_ERROR, f"RST_STREAM on idle stream {stream_id}")
            return
        # The client cancelled (or gave up on a deadline): its answer is dropped.
        stream.closed = True
        self._forget(stream, _RESET_BY_PEER)

    def _priority(self, stream_id: int, payload: bytes) -> None:
        # Priorities are advisory and this side ignores them, but the frame's fields are still checked.
        if stream_id == 0:
            raise Http2ConnectionError(PROTOCOL_ERROR, "PRIORITY on stream 0")
        if len(payload) != 5:
            self._refuse_stream_id(stream_id, FRAME_SIZE_ERROR, "stream_error")
            return
        if int.from_bytes(payload[:4], "big") & 0x7FFFFFFF == stream_id:
            self._refuse_stream_id(stream_id, PROTOCOL_ERROR, "stream_error")

    def _refuse_stream_id(self, stream_id: int, code: int, reason: str) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None:
            self._stream_error(stream, code, reason)
            return
        self._rejected[reason] += 1
        self._out.append(frame(RST_STREAM, 0, stream_id, code.to_bytes(4, "big")))
        self._remember(stream_id, _RESET_HERE)

    def _headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise Http2ConnectionError(PROTOCOL_ERROR, "HEADERS on stream 0")
        if flags & (PADDED | PRIORITY_FLAG | END_HEADERS) == END_HEADERS:
            # The usual request: one whole block, no padding or priority.
            if len(payload) + 9 > self._block_cap:
                self._block_too_large()
            self._header_block(stream_id, flags, payload)
            return
        start, end = 0, len(payload)
        if flags & PADDED:
            if not payload:
                raise Http2ConnectionError(FRAME_SIZE_ERROR, "padded HEADERS without a pad length")
            start, end = 1, len(payload) - payload[0]
        depends_on_itself = False
        if flags & PRIORITY_FLAG:
            if start + 5 > len(payload):
                raise Http2ConnectionError(FRAME_SIZE_ERROR, "HEADERS too short for its priority fields")
            depends_on_itself = int.from_bytes(payload[start : start + 4], "big") & 0x7FFFFFFF == stream_id
            start += 5
        if start > end:
            raise Http2ConnectionError(PROTOCOL_ERROR, "HEADERS padding exceeds the frame")
        fragment = payload[start:end]
        # From here on the priority flag means "depends on itself" (a stream error once it is open).
        flags = flags | PRIORITY_FLAG if depends_on_itself else flags & ~PRIORITY_FLAG
        self._continuing_size = len(fragment) + 9
        if self._continuing_size > self._block_cap:
            self._block_too_large()
        if flags & END_HEADERS:
            self._header_block(stream_id, flags, fragment)
        else:
            self._continuing = (stream_id, flags, [fragment])

    def _block_too_large(self) -> None:
        # Each frame's 9-byte header counts too, so a flood of empty CONTINUATION frames reaches the
        # cap as surely as one large block does (and each costs constant work until then).
        raise Http2ConnectionError(
            ENHANCE_YOUR_CALM,
            f"header block of more than {self._block_cap} bytes (frame headers included)",
            "header_block_too_large",
        )

    def _continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        continuing = self._continuing
        if continuing is None or continuing[0] != stream_id:
            raise Http2ConnectionError(PROTOCOL_ERROR, "CONTINUATION without a header block to continue")
        continuing[2].append(payload)
        self._continuing_size += len(payload) + 9
        if self._continuing_size > self._block_cap:
            self._block_too_large()
        if flags & END_HEADERS:
            self._continuing = None
            self._header_block(stream_id, continuing[1], b"".join(continuing[2]))

    def _header_block(self, stream_id: int, flags: int, block: bytes) -> None:
        # Every block is decoded, even one that is then refused: it may change the dynamic table.
        too_large: HeaderListTooLarge | None = None
        try:
            headers = self._decoder.decode(block)
        except HeaderListTooLarge as error:
            too_large, headers = error, error.headers
        stream = self._streams.get(stream_id)
        if stream is not None:
            self._trailers(stream, flags, headers)
            return
        if not stream_id & 1:
            raise Http2ConnectionError(PROTOCOL_ERROR, f"client used even stream id {stream_id}")
        if stream_id <= self._last_stream_id:
            ended = self._ended.get(stream_id)
            if ended == _RESET_HERE:
                return  # frames the client sent before it saw this side's RST_STREAM
            if ended is None:
                raise Http2ConnectionError(
                    PROTOCOL_ERROR, f"stream {stream_id} is lower than stream {self._last_stream_id}"
                )
            raise Http2ConnectionError(STREAM_CLOSED, f"HEADERS on closed stream {stream_id}")
        self._last_stream_id = stream_id
        if self._goaway_sent:
            self._refuse_stream_id(stream_id, REFUSED_STREAM, "refused_stream")
            return
        if len(self._streams) >= self.limits.max_concurrent_streams:
            self._refuse_stream_id(stream_id, REFUSED_STREAM, "refused_stream")
            return
        stream = _Stream(stream_id, self._peer_initial_window, self._stream_window)
        self._streams[stream_id] = stream
        if flags & PRIORITY_FLAG:
            self._stream_error(stream, PROTOCOL_ERROR, "stream_error")
            return
        if flags & END_STREAM:
            stream.remote_done = True
        cached = self._heads.get(id(headers))
        if cached is not None and cached[0] is headers:
            head = cached[1]
        else:
            try:
                head = _request_head(headers)
            except _Malformed as error:
                log.debug("stream %d: malformed request: %s", stream_id, error)
                self._stream_error(stream, PROTOCOL_ERROR, "malformed_request")
                return
            if too_large is None:
                if len(self._heads) >= 64:
                    self._heads.clear()
                self._heads[id(headers)] = (headers, head)
        stream.content_length = head.content_length
        grpc_request = head.content_type.startswith(b"application/grpc")
        if too_large is not None:
            self._rejected["header_list_too_large"] += 1
            message = (
                f"request headers of {too_large.size} bytes exceed this server's limit of "
                f"{too_large.limit} bytes (SETTINGS_MAX_HEADER_LIST_SIZE)"
            )
            if grpc_request:
                self.send_status(stream, grpc.StatusCode.RESOURCE_EXHAUSTED, message)
            else:
                self._http_error(stream, b"431", message)
            return
        if head.method != b"POST":
            shown = head.method.decode("latin-1")
            self._http_error(
                stream,
                b"405",
                f"this is a gRPC endpoint: requests are POST with content-type application/grpc; got {shown}",
            )
            return
        if not grpc_request:
            shown = head.content_type.decode("latin-1") or "none"
            self._http_error(
                stream,
                b"415",
                f"this is a gRPC endpoint: content-type must be application/grpc; got {shown}",
            )
            return
        handler = self.server.methods.get(head.path)
        stream.compressed_with = head.encoding
        stream.authorization = head.authorization
        if handler is None:
            self.send_status(
                stream,
                grpc.StatusCode.UNIMPLEMENTED,
                f"Method not found: {head.path.decode('utf-8', 'replace')}",
            )
        else:
            stream.method = handler
        if stream.remote_done:
            self._end_of_request(stream)

    def _trailers(self, stream: _Stream, flags: int, headers: list[Header]) -> None:
        if stream.remote_done:
            self._stream_error(stream, STREAM_CLOSED, "stream_error")
            return
        if not flags & END_STREAM or any(name[:1] == b":" for name, _ in headers):
            # Trailers end the request and carry no pseudo-headers (RFC 9113 8.1).
            self._stream_error(stream, PROTOCOL_ERROR, "malformed_request")
            return
        self._end_of_request(stream)

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise Http2ConnectionError(PROTOCOL_ERROR, "DATA on stream 0")
        length = len(payload)
        # Flow control counts the whole frame, padding included, whatever becomes of the stream.
        if length > self._recv_window:
            raise Http2ConnectionError(
                FLOW_CONTROL_ERROR,
                f"DATA of {length} bytes exceeds the connection's receive window ({self._recv_window})",
                "flow_control",
            )
        self._recv_window -= length
        stream = self._streams.get(stream_id)
        if stream is None:
            self._release(length)
            if self._idle(stream_id):
                raise Http2ConnectionError(PROTOCOL_ERROR, f"DATA on idle stream {stream_id}")
            if self._ended.get(stream_id) != _RESET_HERE:
                self._refuse_stream_id(stream_id, STREAM_CLOSED, "stream_error")
            return
        if length > stream.recv_window:
            self._release(length)
            self._stream_error(stream, FLOW_CONTROL_ERROR, "flow_control")
            return
        stream.recv_window -= length
        if stream.remote_done:
            self._release(length)
            self._stream_error(stream, STREAM_CLOSED, "stream_error")
            return
        if flags & PADDED:
            if not payload or payload[0] >= length:
                raise Http2ConnectionError(PROTOCOL_ERROR, "DATA padding exceeds the frame")
            padding = payload[0] + 1
            payload = payload[1 : length - payload[0]]
            # Padding is consumed at once: its window is given back on the stream and the connection.
            self._release(padding)
            self._grant(stream, padding)
        stream.data_received += len(payload)
        if 0 <= stream.content_length < stream.data_received:
            self._release(len(payload))  # not in the body yet; the body is released with the stream
            self._stream_error(stream, PROTOCOL_ERROR, "malformed_request")
            return
        if stream.method is None:
            # Nothing will read this body (the stream was answered already): it is discarded.
            self._release(len(payload))
            self._grant(stream, len(payload))
        else:
            body = stream.body
            body += payload
            if len(body) >= 5 and not stream.reserved:
                declared = int.from_bytes(body[1:5], "big")
                limit = self.limits.max_message_bytes
                if declared > limit:
                    self._refuse_oversized(stream, declared, limit)
                    return
                if len(body) > 5 + declared:
                    self._release(len(body))
                    stream.body = bytearray()
                    self.send_status(
                        stream,
                        grpc.StatusCode.UNIMPLEMENTED,
                        "more than one request message on a unary method",
                    )
                    self._reset(stream, NO_ERROR)
                    return
                if 5 + declared <= self._initial_window:
                    stream.reserved = -5 - declared  # fits the initial window: nothing to reserve
                else:
                    self._reserve(stream, 5 + declared)
            elif stream.reserved and len(body) > abs(stream.reserved):
                self._release(len(body))
                stream.body = bytearray()
                self.send_status(
                    stream, grpc.StatusCode.UNIMPLEMENTED, "more than one request message on a unary method"
                )
                self._reset(stream, NO_ERROR)
                return
        if flags & END_STREAM:
            stream.remote_done = True
            self._end_of_request(stream)

    # --- receive windows ---

    def _release(self, size: int) -> None:
        """Request bytes consumed (handed to a handler or discarded): window the client may use again."""
        self._released += size
        if self._released >= RELEASE_THRESHOLD:
            self._recv_window += self._released
            self._out.append(frame(WINDOW_UPDATE, 0, 0, self._released.to_bytes(4, "big")))
            self._released = 0

    def _grant(self, stream: _Stream, size: int) -> None:
        if size > 0 and not stream.remote_done:
            stream.recv_window += size
            self._out.append(frame(WINDOW_UPDATE, 0, stream.id, size.to_bytes(4, "big")))

    def _reserve(self, stream: _Stream, need: int) -> None:
        """A message larger than the initial stream window gets its whole size from the reservable
        budget before the client may send more than that window: streams that could not all complete
        never share the connection's window (first come, first served)."""
        stream.reserved = need
        if self._waiting_for_reservation or need > self._reservable:
            self._waiting_for_reservation.append(stream)
            return
        self._reservable -= need
        self._grant(stream, need - stream.data_received - stream.recv_window)

    def _unreserve(self, stream: _Stream) -> None:
        if stream.reserved <= self._initial_window:
            stream.reserved = 0  # held nothing of the reservable budget: nobody waiting can move up
            return
        if stream in self._waiting_for_reservation:
            self._waiting_for_reservation.remove(stream)
        else:
            self._reservable += stream.reserved
        stream.reserved = 0
        while self._waiting_for_reservation:
            waiting = self._waiting_for_reservation[0]
            if waiting.reserved > self._reservable:
                break
            self._waiting_for_reservation.pop(0)
            self._reservable -= waiting.reserved
            self._grant(waiting, waiting.reserved - waiting.data_received - waiting.recv_window)

    def _end_of_request(self, stream: _Stream) -> None:
        stream.remote_done = True
        if 0 <= stream.content_length != stream.data_received:
            self._stream_error(stream, PROTOCOL_ERROR, "malformed_request")  # releases the body
            return
        handler = stream.method
        body = stream.body
        stream.body = bytearray()
        self._release(len(body))
        self._unreserve(stream)
        if stream.closed:
            # Answered before the request was complete (e.g. an unknown method): the stream is done.
            if not stream.pending:
                self._forget(stream, _ENDED)
            return
        if handler is None:
            return
        if len(body) < 5 or len(body) != 5 + int.from_bytes(body[1:5], "big"):
            self.send_status(
                stream,
                grpc.StatusCode.INVALID_ARGUMENT,
                "a unary call needs exactly one complete request message",
            )
            return
        message = bytes(body[5:])
        if body[0]:
            try:
                message = self._inflate(message, stream.compressed_with)
            except _CallError as error:
                self.send_status(stream, error.code, error.message)
                return
        call = Call(self, stream, time.perf_counter())
        try:
            handler(message, call)
        except Exception as error:
            log.exception("gRPC handler failed")
            self.send_status(stream, grpc.StatusCode.INTERNAL, f"internal error: {error}")

    def _inflate(self, message: bytes, encoding: bytes) -> bytes:
        limit = self.limits.max_message_bytes
        if encoding not in (b"gzip", b"deflate"):
            shown = encoding.decode("latin-1") or "identity"
            raise _CallError(
                grpc.StatusCode.UNIMPLEMENTED,
                f"message compressed with {shown!r}; this server accepts identity, deflate and gzip",
            )
        # wbits 47 accepts gzip and zlib headers alike; max_length stops a decompression bomb.
        inflater = zlib.decompressobj(47)
        try:
            data = inflater.decompress(message, limit + 1)
        except zlib.error as error:
            raise _CallError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"request message is not valid {encoding.decode()} data: {error}",
            ) from None
        if len(data) > limit or inflater.unconsumed_tail:
            raise _CallError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"Received message larger than max (it inflates beyond {limit} bytes)",
            )
        return data

    def _refuse_oversized(self, stream: _Stream, declared: int, limit: int) -> None:
        self._release(len(stream.body))
        stream.body = bytearray()
        # grpcio's wording, which clients and tests already recognise.
        self.send_status(
            stream,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"Received message larger than max ({declared} vs. {limit})",
        )
        # The answer is complete; NO_ERROR tells the client to stop sending the rest of the body.
        self._reset(stream, NO_ERROR)

    # --- responses ---

    def _header_frames(self, stream_id: int, block: bytes, end_stream: bool) -> None:
        """A header block as HEADERS (and CONTINUATION frames past the peer's maximum frame size)."""
        flags = END_STREAM if end_stream else 0
        size = self._peer_max_frame
        if len(block) <= size:
            self._out.append(frame(HEADERS, flags | END_HEADERS, stream_id, block))
            return
        self._out.append(frame(HEADERS, flags, stream_id, block[:size]))
        for position in range(size, len(block), size):
            last = position + size >= len(block)
            self._out.append(
                frame(CONTINUATION, END_HEADERS if last else 0, stream_id, block[position : position + size])
            )

    def send_message(self, stream: _Stream, message: bytes) -> None:
        if stream.closed:
            return
        data = b"\x00" + len(message).to_bytes(4, "big") + message
        stream_id = stream.id
        size = len(data)
        out = self._out
        out.append(frame(HEADERS, END_HEADERS, stream_id, self._block_prefix() + RESPONSE_HEADERS))
        if size <= self._send_window and size <= stream.send_window and size <= self._peer_max_frame:
            self._send_window -= size
            out.append(frame(DATA, 0, stream_id, data))
            out.append(frame(HEADERS, END_HEADERS | END_STREAM, stream_id, _OK_TRAILERS))
            self._finish(stream)
        else:
            self._queue(stream, data, _OK_TRAILERS)
        self._schedule_flush()

    def send_status(
        self, stream: _Stream, code: grpc.StatusCode, message: str, metadata: Metadata = ()
    ) -> None:
        """A trailers-only response: the call's status without a message."""
        if stream.closed:
            return
        limit = min(MAX_STATUS_MESSAGE_BYTES, self._peer_max_header_list // 2)
        block = self._block_prefix() + RESPONSE_HEADERS + status_block(code, message, metadata, limit)
        self._header_frames(stream.id, block, end_stream=True)
        self._finish(stream)
        self._schedule_flush()

    def _http_error(self, stream: _Stream, status: bytes, message: str) -> None:
        # Not a gRPC request: a plain HTTP status (":status" is static table entry 8's name) that says
        # what this endpoint expects, as a text body.
        block = self._block_prefix() + encode_literal_indexed_name(8, status) + _CONTENT_TYPE_TEXT
        if status == b"405":
            block += _ALLOW_POST
        self._header_frames(stream.id, block, end_stream=False)
        self._queue(stream, message.encode() + b"\n", None)
        self._schedule_flush()

    def _queue(self, stream: _Stream, data: bytes, end_block: bytes | None) -> None:
        stream.pending = data
        stream.end_block = end_block
        self._blocked.append(stream)
        self._pump()

    def _block_prefix(self) -> bytes:
        update, self._table_update = self._table_update, b""
        return update

    def _finish(self, stream: _Stream) -> None:
        stream.closed = True
        if stream.remote_done:
            self._forget(stream, _ENDED)
        else:
            # The client may still be sending; its stream lives on until its END_STREAM.
            stream.method = None
            self._release(len(stream.body))
            stream.body = bytearray()
            self._unreserve(stream)

    def _remember(self, stream_id: int, how: int) -> None:
        ended = self._ended
        ended[stream_id] = how
        if len(ended) > self._ended_cap:
            ended.popitem(last=False)

    def _forget(self, stream: _Stream, how: int) -> None:
        if self._streams.pop(stream.id, None) is None:
            return
        self._remember(stream.id, how)
        if stream.body:
            self._release(len(stream.body))
            stream.body = bytearray()
        if stream.reserved:
            self._unreserve(stream)
        if self._goaway_sent and not self._streams:
            self.server.connection_idle()

    def _pump(self) -> None:
        """Send blocked response data as far as the flow-control windows allow."""
        if not self._blocked:
            return
        still_blocked: list[_Stream] = []
        out = self._out
        for stream in self._blocked:
            if self._closed or stream.id not in self._streams:
                continue
            while stream.pending:
                room = min(self._send_window, stream.send_window, self._peer_max_frame)
                if room <= 0:
                    break
                chunk, stream.pending = stream.pending[:room], stream.pending[room:]
                self._send_window -= len(chunk)
                stream.send_window -= len(chunk)
                last = not stream.pending and stream.end_block is None
                out.append(frame(DATA, END_STREAM if last else 0, stream.id, chunk))
            if stream.pending:
                still_blocked.append(stream)
            else:
                if stream.end_block is not None:
                    self._header_frames(stream.id, self._block_prefix() + stream.end_block, end_stream=True)
                self._finish(stream)
        self._blocked = still_blocked
        self._schedule_flush()

    def _reset(self, stream: _Stream, code: int) -> None:
        self._out.append(frame(RST_STREAM, 0, stream.id, code.to_bytes(4, "big")))
        stream.closed = True
        self._forget(stream, _RESET_HERE)

    def _stream_error(self, stream: _Stream, code: int, reason: str) -> None:
        self._rejected[reason] += 1
        self._reset(stream, code)

    # --- writing and closing ---

    def _schedule_flush(self) -> None:
        # Responses completed in one event-loop iteration (a batch) leave in one write.
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._out:
            return
        data = b"".join(self._out)
        self._out.clear()
        if self.transport is not None and not self._closed:
            self.transport.write(data)

    def goaway(self, code: int = NO_ERROR, message: str = "") -> None:
        """No new streams on this connection; those already open are still answered."""
        if self._goaway_sent:
            return
        self._goaway_sent = True
        payload = self._last_stream_id.to_bytes(4, "big") + code.to_bytes(4, "big") + message.encode()
        self._out.append(frame(GOAWAY, 0, 0, payload))
        self._schedule_flush()

    def idle(self) -> bool:
        return not self._streams

    def close(self) -> None:
        self._flush()
        if self.transport is not None and not self._closed:
            self._closed = True
            self.transport.close()

    def _fail_connection(self, error: Http2ConnectionError) -> None:
        log.info("closing a gRPC connection: %s", error)
        self._rejected[error.reason] += 1
        self._goaway_sent = False  # a graceful GOAWAY may precede this one; the error is still sent
        self.goaway(error.code, str(error))
        self.close()


class _CallError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class GrpcTransportServer:
    """Listens for h2c connections and dispatches unary calls by path (`/package.Service/Method`)."""

    def __init__(
        self, methods: dict[str, Handler], limits: Http2Limits, rejected: dict[str, int] | None = None
    ) -> None:
        self.methods = {path.encode(): handler for path, handler in methods.items()}
        self.limits = limits
        self.preamble = server_preamble(limits)
        # Refusals by reason (ferry_http2_rejected_total) and read pauses (ferry_http2_read_pauses_total).
        self.rejected = rejected if rejected is not None else {}
        for reason in REJECTION_REASONS:
            self.rejected.setdefault(reason, 0)
        self.read_pauses = [0]
        self.loop = asyncio.get_running_loop()
        self.connections: set[GrpcConnection] = set()
        self.draining = False
        self._server: asyncio.Server | None = None
        self._idle = asyncio.Event()

    async def start(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> int:
        factory: Callable[[], GrpcConnection] = lambda: GrpcConnection(self)  # noqa: E731
        # No SO_REUSEPORT: two servers on one port would split traffic silently; binding fails instead.
        self._server = await self.loop.create_server(
            factory, host, port, reuse_address=True, backlog=1024, ssl=tls
        )
        sockets = self._server.sockets
        return int(sockets[0].getsockname()[1]) if sockets else port

    def connection_idle(self) -> None:
        if self.draining and all(connection.idle() for connection in self.connections):
            self._idle.set()

    async def stop(self, grace_seconds: float) -> None:
        """New calls are refused at once (GOAWAY); calls in flight get `grace_seconds` to finish."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        for connection in self.connections:
            connection.goaway()
        self.connection_idle()
        try:
            await asyncio.wait_for(self._idle.wait(), grace_seconds)
        except TimeoutError:
            log.warning("gRPC calls still in flight after %.1f s; closing their connections", grace_seconds)
        for connection in list(self.connections):
            connection.close()
