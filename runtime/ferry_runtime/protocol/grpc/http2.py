"""gRPC's HTTP/2 transport for unary calls, on an asyncio protocol (uvloop), like the REST server.

Why not grpcio's server: on a small machine grpcio spends 300-500 µs of server CPU per unary call
before any handler runs (measured with an echo service, synchronous and asyncio servers alike), more
than the whole REST JSON path costs per inference. A unary gRPC call is a small, fixed exchange of
HTTP/2 frames, so this module speaks it directly: frames are parsed from one buffer per connection,
headers decoded with a per-connection HPACK decoder (`hpack.py`), and a response is written as
precomputed header bytes, one DATA frame and precomputed trailers, coalesced with the other responses
completed in the same event-loop iteration into one socket write.

What it implements (RFC 9113 and gRPC over HTTP/2): the connection preface and SETTINGS exchange,
PING replies, flow control in both directions (receive windows kept wide open and replenished; sends
wait for the peer's windows), frames split at the peer's maximum frame size, CONTINUATION, padding,
RST_STREAM from either side, GOAWAY for a graceful stop, gzip/deflate request messages, and gRPC
status, message and custom trailing metadata. Not implemented (refused with a clear status): streaming
calls (a unary method given more than one message) and TLS (the runtime serves plain-text h2c, as
grpcio's `add_insecure_port` did).
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
import zlib
from collections.abc import Callable
from typing import Final, cast
from urllib.parse import quote

import grpc

from ferry_runtime.protocol.grpc.hpack import Decoder, HpackError, encode_literal, encode_literal_indexed_name

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

# Settings identifiers.
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS = 0x1, 0x2, 0x3
INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE = 0x4, 0x5, 0x6

MAX_WINDOW: Final = 2**31 - 1
DEFAULT_WINDOW: Final = 65535
DEFAULT_FRAME_SIZE: Final = 16384
# Receiving: frames up to 1 MiB (fewer frames, so less per-frame Python work, for large tensors).
LOCAL_MAX_FRAME_SIZE: Final = 1 << 20
# Receive windows are opened fully; they are topped up once half of them is used.
_REPLENISH_AT: Final = MAX_WINDOW // 2
# The largest header block accepted (gRPC metadata is small; grpc's own default limit is 8 KiB).
MAX_HEADER_BLOCK: Final = 64 * 1024
# The longest grpc-message sent: status details must fit the peer's header-list limit (8 KiB in grpc).
_MAX_STATUS_MESSAGE: Final = 4096

Metadata = tuple[tuple[str, str], ...]


# A frame header: 24-bit length (as its top byte and lower 16 bits), type, flags, 31-bit stream id.
_FRAME_HEADER: Final = struct.Struct(">BHBBI")


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    length = len(payload)
    return _FRAME_HEADER.pack(length >> 16, length & 0xFFFF, kind, flags, stream_id) + payload


def _settings_payload(settings: dict[int, int]) -> bytes:
    return b"".join(key.to_bytes(2, "big") + value.to_bytes(4, "big") for key, value in settings.items())


_SERVER_SETTINGS: Final = frame(
    SETTINGS,
    0,
    0,
    _settings_payload(
        {ENABLE_PUSH: 0, INITIAL_WINDOW_SIZE: MAX_WINDOW, MAX_FRAME_SIZE: LOCAL_MAX_FRAME_SIZE}
    ),
) + frame(WINDOW_UPDATE, 0, 0, (MAX_WINDOW - DEFAULT_WINDOW).to_bytes(4, "big"))
_SETTINGS_ACK: Final = frame(SETTINGS, ACK, 0)

# Response headers as HPACK literals that never touch the dynamic table, so they are constant bytes.
_STATUS_200: Final = b"\x88"  # static table index 8: ":status: 200"
_CONTENT_TYPE_GRPC: Final = encode_literal_indexed_name(31, b"application/grpc")
_ACCEPT_ENCODING: Final = encode_literal(b"grpc-accept-encoding", b"identity,deflate,gzip")
RESPONSE_HEADERS: Final = _STATUS_200 + _CONTENT_TYPE_GRPC + _ACCEPT_ENCODING
_OK_TRAILERS: Final = encode_literal(b"grpc-status", b"0")
_TABLE_SIZE_ZERO: Final = b"\x20"


def status_block(code: grpc.StatusCode, message: str, metadata: Metadata = ()) -> bytes:
    """grpc-status, grpc-message (percent-encoded, as gRPC requires) and custom metadata, HPACK-coded."""
    number = cast(int, code.value[0])
    block = encode_literal(b"grpc-status", str(number).encode())
    if message:
        encoded = quote(message[:_MAX_STATUS_MESSAGE], safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~")
        block += encode_literal(b"grpc-message", encoded.encode("ascii"))
    for key, value in metadata:
        block += encode_literal(key.encode("ascii"), value.encode("ascii"))
    return block


class Call:
    """One unary call: the handler answers it exactly once, with `reply` or `fail`."""

    __slots__ = ("_connection", "_stream", "received")

    def __init__(self, connection: GrpcConnection, stream: _Stream, received: float) -> None:
        self._connection = connection
        self._stream = stream
        # When the request message was complete (for the request-duration metric).
        self.received = received

    def reply(self, message: bytes) -> None:
        self._connection.send_message(self._stream, message)

    def fail(self, code: grpc.StatusCode, message: str, metadata: Metadata = ()) -> None:
        self._connection.send_status(self._stream, code, message, metadata)


# A method handler: the request message's bytes and the call to answer.
Handler = Callable[[bytes, Call], None]


class Http2ConnectionError(Exception):
    """A violation that ends the whole HTTP/2 connection with GOAWAY."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class _Stream:
    __slots__ = (
        "body",
        "closed",
        "compressed_with",
        "id",
        "method",
        "pending",
        "received",
        "remote_done",
        "send_window",
        "trailers",
    )

    def __init__(self, stream_id: int, send_window: int) -> None:
        self.id = stream_id
        self.method: Handler | None = None
        self.compressed_with = b""
        self.body = bytearray()
        self.received = 0
        self.remote_done = False
        self.send_window = send_window
        # Response DATA waiting for flow-control window, then its trailers block.
        self.pending = b""
        self.trailers = b""
        self.closed = False


class GrpcConnection(asyncio.Protocol):
    def __init__(self, server: GrpcTransportServer) -> None:
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._preface_seen = False
        self._decoder = Decoder()
        self._streams: dict[int, _Stream] = {}
        self._last_stream_id = 0
        self._goaway_sent = False
        self._closed = False
        # Peer settings that shape what this side sends.
        self._peer_initial_window = DEFAULT_WINDOW
        self._peer_max_frame = DEFAULT_FRAME_SIZE
        self._send_window = DEFAULT_WINDOW
        self._blocked: list[_Stream] = []
        # Bytes received since the connection window was last topped up.
        self._unacknowledged = 0
        # A header block being continued by CONTINUATION frames: (stream id, flags, fragments).
        self._continuing: tuple[int, int, list[bytes]] | None = None
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
        self._out.append(_SERVER_SETTINGS)
        if self.server.draining:
            self.goaway()
        self._flush()

    def connection_lost(self, _exc: Exception | None) -> None:
        self._closed = True
        for stream in self._streams.values():
            stream.closed = True
        self._streams.clear()
        self.server.connections.discard(self)
        self.server.connection_idle()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
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
            while available - offset >= 9:
                length_high, length_low, kind, flags, stream_id = unpack(buffer, offset)
                length = length_high << 16 | length_low
                if length > LOCAL_MAX_FRAME_SIZE:
                    raise Http2ConnectionError(FRAME_SIZE_ERROR, f"frame of {length} bytes")
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
            if not flags & ACK:
                self._settings(payload)
        elif kind == PING:
            if len(payload) != 8:
                raise Http2ConnectionError(FRAME_SIZE_ERROR, "PING payload must be 8 bytes")
            if not flags & ACK:
                self._out.append(frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            stream = self._streams.get(stream_id)
            if stream is not None:
                # The client cancelled (or gave up on a deadline): its answer is dropped.
                stream.closed = True
                self._forget(stream)
        elif kind == GOAWAY:
            # The client stops opening streams; calls in flight are still answered.
            pass
        elif kind == PUSH_PROMISE:
            raise Http2ConnectionError(PROTOCOL_ERROR, "clients must not send PUSH_PROMISE")
        # PRIORITY and unknown frame types are ignored, as RFC 9113 requires.

    def _settings(self, payload: bytes) -> None:
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
            elif key == HEADER_TABLE_SIZE:
                self._table_update = _TABLE_SIZE_ZERO
            elif key == MAX_FRAME_SIZE:
                if not DEFAULT_FRAME_SIZE <= value <= 2**24 - 1:
                    raise Http2ConnectionError(
                        PROTOCOL_ERROR, f"SETTINGS_MAX_FRAME_SIZE {value} out of range"
                    )
                self._peer_max_frame = value
        self._out.append(_SETTINGS_ACK)
        self._pump()

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise Http2ConnectionError(FRAME_SIZE_ERROR, "WINDOW_UPDATE payload must be 4 bytes")
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if stream_id == 0:
            self._send_window += increment
            if self._send_window > MAX_WINDOW:
                raise Http2ConnectionError(FLOW_CONTROL_ERROR, "connection window above 2^31-1")
        else:
            stream = self._streams.get(stream_id)
            if stream is None:
                return
            stream.send_window += increment
        self._pump()

    def _headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise Http2ConnectionError(PROTOCOL_ERROR, "HEADERS on stream 0")
        start, end = 0, len(payload)
        if flags & PADDED:
            if not payload:
                raise Http2ConnectionError(PROTOCOL_ERROR, "padded HEADERS without a pad length")
            start, end = 1, len(payload) - payload[0]
        if flags & PRIORITY_FLAG:
            start += 5
        if start > end:
            raise Http2ConnectionError(PROTOCOL_ERROR, "HEADERS padding exceeds the frame")
        fragment = payload[start:end]
        if flags & END_HEADERS:
            self._header_block(stream_id, flags, fragment)
        else:
            self._continuing = (stream_id, flags, [fragment])

    def _continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        continuing = self._continuing
        if continuing is None or continuing[0] != stream_id:
            raise Http2ConnectionError(PROTOCOL_ERROR, "CONTINUATION without a header block to continue")
        continuing[2].append(payload)
        if sum(map(len, continuing[2])) > MAX_HEADER_BLOCK:
            raise Http2ConnectionError(PROTOCOL_ERROR, f"header block larger than {MAX_HEADER_BLOCK} bytes")
        if flags & END_HEADERS:
            self._continuing = None
            self._header_block(stream_id, continuing[1], b"".join(continuing[2]))

    def _header_block(self, stream_id: int, flags: int, block: bytes) -> None:
        # Every block is decoded, even one that is then ignored: it may change the dynamic table.
        headers = self._decoder.decode(block)
        stream = self._streams.get(stream_id)
        if stream is not None:
            # Trailers from the client end its side of the stream.
            if flags & END_STREAM:
                self._end_of_request(stream)
            return
        if stream_id <= self._last_stream_id or not stream_id & 1:
            if stream_id > self._last_stream_id:
                raise Http2ConnectionError(PROTOCOL_ERROR, f"client opened even stream {stream_id}")
            return  # headers for a stream that is already closed
        self._last_stream_id = stream_id
        stream = _Stream(stream_id, self._peer_initial_window)
        if self._goaway_sent:
            self._out.append(frame(RST_STREAM, 0, stream_id, REFUSED_STREAM.to_bytes(4, "big")))
            return
        self._streams[stream_id] = stream
        path = method = content_type = b""
        for name, value in headers:
            if name == b":path":
                path = value
            elif name == b":method":
                method = value
            elif name == b"content-type":
                content_type = value
            elif name == b"grpc-encoding":
                stream.compressed_with = value
        if method != b"POST":
            self._http_error(stream, b"405")
            return
        if not content_type.startswith(b"application/grpc"):
            self._http_error(stream, b"415")
            return
        handler = self.server.methods.get(path)
        if handler is None:
            self.send_status(
                stream,
                grpc.StatusCode.UNIMPLEMENTED,
                f"Method not found: {path.decode('utf-8', 'replace')}",
            )
        else:
            stream.method = handler
        if flags & END_STREAM:
            self._end_of_request(stream)

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise Http2ConnectionError(PROTOCOL_ERROR, "DATA on stream 0")
        # Flow control counts the whole frame, padding included, whatever becomes of the stream.
        self._unacknowledged += len(payload)
        if self._unacknowledged >= _REPLENISH_AT:
            self._out.append(frame(WINDOW_UPDATE, 0, 0, self._unacknowledged.to_bytes(4, "big")))
            self._unacknowledged = 0
        stream = self._streams.get(stream_id)
        if stream is None:
            if stream_id > self._last_stream_id:
                raise Http2ConnectionError(PROTOCOL_ERROR, f"DATA on idle stream {stream_id}")
            return  # a stream this side already answered or reset
        if stream.remote_done:
            self._reset(stream, STREAM_CLOSED)
            return
        if flags & PADDED:
            if not payload or payload[0] >= len(payload):
                raise Http2ConnectionError(PROTOCOL_ERROR, "DATA padding exceeds the frame")
            payload = payload[1 : len(payload) - payload[0]]
        stream.received += len(payload)
        if stream.received >= _REPLENISH_AT:
            self._out.append(frame(WINDOW_UPDATE, 0, stream_id, stream.received.to_bytes(4, "big")))
            stream.received = 0
        if stream.method is not None:
            body = stream.body
            body += payload
            limit = self.server.max_message_bytes
            if len(body) >= 5:
                declared = int.from_bytes(body[1:5], "big")
                if declared > limit:
                    self._refuse_oversized(stream, declared, limit)
                    return
                if len(body) > 5 + declared:
                    self.send_status(
                        stream,
                        grpc.StatusCode.UNIMPLEMENTED,
                        "more than one request message on a unary method",
                    )
                    self._reset(stream, NO_ERROR)
                    return
        if flags & END_STREAM:
            self._end_of_request(stream)

    def _end_of_request(self, stream: _Stream) -> None:
        stream.remote_done = True
        handler = stream.method
        if stream.closed:
            # Answered before the request was complete (e.g. an unknown method): the stream is done.
            self._forget(stream)
            return
        if handler is None:
            return
        body = stream.body
        stream.body = bytearray()
        if len(body) < 5 or len(body) != 5 + int.from_bytes(body[1:5], "big"):
            self.send_status(
                stream, grpc.StatusCode.INTERNAL, "a unary call needs exactly one complete request message"
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
        limit = self.server.max_message_bytes
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
                grpc.StatusCode.INTERNAL, f"request message is not valid {encoding.decode()} data: {error}"
            ) from None
        if len(data) > limit or inflater.unconsumed_tail:
            raise _CallError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"Received message larger than max (it inflates beyond {limit} bytes)",
            )
        return data

    def _refuse_oversized(self, stream: _Stream, declared: int, limit: int) -> None:
        # grpcio's wording, which clients and tests already recognise.
        self.send_status(
            stream,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"Received message larger than max ({declared} vs. {limit})",
        )
        # The answer is complete; NO_ERROR tells the client to stop sending the rest of the body.
        self._reset(stream, NO_ERROR)

    # --- responses ---

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
            stream.pending = data
            stream.trailers = _OK_TRAILERS
            self._blocked.append(stream)
            self._pump()
        self._schedule_flush()

    def send_status(
        self, stream: _Stream, code: grpc.StatusCode, message: str, metadata: Metadata = ()
    ) -> None:
        """A trailers-only response: the call's status without a message."""
        if stream.closed:
            return
        block = self._block_prefix() + RESPONSE_HEADERS + status_block(code, message, metadata)
        self._out.append(frame(HEADERS, END_HEADERS | END_STREAM, stream.id, block))
        self._finish(stream)
        self._schedule_flush()

    def _http_error(self, stream: _Stream, status: bytes) -> None:
        # Not a gRPC request: a plain HTTP status (":status" is static table entry 8's name).
        block = self._block_prefix() + encode_literal_indexed_name(8, status)
        self._out.append(frame(HEADERS, END_HEADERS | END_STREAM, stream.id, block))
        self._finish(stream)

    def _block_prefix(self) -> bytes:
        update, self._table_update = self._table_update, b""
        return update

    def _finish(self, stream: _Stream) -> None:
        stream.closed = True
        if stream.remote_done:
            self._forget(stream)
        else:
            # The client may still be sending; its stream lives on until its END_STREAM.
            stream.method = None
            stream.body = bytearray()

    def _forget(self, stream: _Stream) -> None:
        self._streams.pop(stream.id, None)
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
                out.append(frame(DATA, 0, stream.id, chunk))
            if stream.pending:
                still_blocked.append(stream)
            else:
                block = self._block_prefix() + stream.trailers
                out.append(frame(HEADERS, END_HEADERS | END_STREAM, stream.id, block))
                self._finish(stream)
        self._blocked = still_blocked
        self._schedule_flush()

    def _reset(self, stream: _Stream, code: int) -> None:
        self._out.append(frame(RST_STREAM, 0, stream.id, code.to_bytes(4, "big")))
        stream.closed = True
        self._forget(stream)

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
        self.goaway(error.code, str(error))
        self.close()


class _CallError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class GrpcTransportServer:
    """Listens for h2c connections and dispatches unary calls by path (`/package.Service/Method`)."""

    def __init__(self, methods: dict[str, Handler], max_message_bytes: int) -> None:
        self.methods = {path.encode(): handler for path, handler in methods.items()}
        self.max_message_bytes = max_message_bytes
        self.loop = asyncio.get_running_loop()
        self.connections: set[GrpcConnection] = set()
        self.draining = False
        self._server: asyncio.Server | None = None
        self._idle = asyncio.Event()

    async def start(self, host: str, port: int) -> int:
        factory: Callable[[], GrpcConnection] = lambda: GrpcConnection(self)  # noqa: E731
        # No SO_REUSEPORT: two servers on one port would split traffic silently; binding fails instead.
        self._server = await self.loop.create_server(factory, host, port, reuse_address=True, backlog=1024)
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
