"""The v2 REST endpoints on a small HTTP/1.1 server built directly on asyncio protocols and httptools.

Why not an ASGI stack: per-request framework overhead (scope dicts, middleware, coroutines per request)
costs more CPU than a small model's inference. Here a request is parsed by httptools' C parser, routed by
a dict lookup, and an inference completes through a future callback: no task or coroutine per request.

HTTP behaviour: keep-alive (HTTP/1.1 default, HTTP/1.0 on request); pipelined requests are answered in
order; bodies framed by Content-Length or chunked transfer coding; a declared Content-Length above the
limit is answered 413 before any body is read (and `Expect: 100-continue` is honoured, so well-behaved
clients never send it); gzip/deflate request bodies are inflated under the same limit.

What one client can cost is bounded (`HttpLimits`, docs/runtime.md "Limits"): the request target (414),
each header line and the header section (431, checked as bytes arrive, so an endless header is never
accumulated), the time to send headers (408, slowloris) and the pace of a body (408). Framing is read
strictly (RFC 9112): HTTP/1.1 needs exactly one Host, Transfer-Encoding must be exactly `chunked`
(another coding before it is 501, one after it 400), Content-Length with Transfer-Encoding is 400.
Each refusal is counted in `ferry_http_rejected_total` by reason.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import unquote

import httptools
import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ferry_runtime.auth import Authenticator, Verdict, refusal
from ferry_runtime.batching import Outcome
from ferry_runtime.dataplane import DataPlane
from ferry_runtime.errors import (
    FerryError,
    HeaderFieldsTooLarge,
    InvalidInput,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    TransferCodingNotImplemented,
    Unauthenticated,
    Unavailable,
    UnsupportedMediaType,
    UriTooLong,
)
from ferry_runtime.inference import InferenceRequest
from ferry_runtime.metrics import Metrics, RequestRecorder
from ferry_runtime.model import ModelMetadata
from ferry_runtime.protocol import openai
from ferry_runtime.protocol.rest import codec

if TYPE_CHECKING:
    from ferry_runtime.protocol.rest.generate import GenerativeApi

log = logging.getLogger(__name__)

JSON = b"application/json"
OCTET_STREAM = b"application/octet-stream"
_STATUS_LINES = {
    status.value: f"HTTP/1.1 {status.value} {status.phrase}\r\n".encode() for status in HTTPStatus
}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# Inference answers' heads up to their content length, rendered as `http_response` would render them.
_OK_JSON_HEAD = b"%scontent-type: %s\r\ncontent-length: " % (_STATUS_LINES[200], JSON)
_OK_BINARY_HEAD = b"%scontent-type: %s\r\ncontent-length: " % (_STATUS_LINES[200], OCTET_STREAM)
# Headers the server acts on; every other header is ignored without being stored.
_WANTED_HEADERS = frozenset(
    {
        b"content-length",
        b"inference-header-content-length",
        b"content-encoding",
        b"expect",
        b"transfer-encoding",
        b"host",
        b"authorization",
    }
)
# More queued pipelined requests than this on one connection and the server stops reading from it.
_MAX_PIPELINED = 64
# A body slower than the minimum rate is tolerated this long first (a client's connection warming up).
_BODY_RATE_GRACE_SECONDS = 5.0
# Longest Content-Length / Inference-Header-Content-Length value read: 18 digits cannot overflow int64.
_MAX_LENGTH_DIGITS = 18

# Why a request was refused before it reached a route: the `reason` of ferry_http_rejected_total.
REQUEST_LINE_TOO_LONG = "request_line_too_long"
HEADER_TOO_LARGE = "header_too_large"
HEADER_TIMEOUT = "header_timeout"
BODY_TIMEOUT = "body_timeout"
BODY_TOO_LARGE = "body_too_large"
MALFORMED = "malformed"
HOST = "host"
TRANSFER_CODING = "transfer_coding"
REJECTION_REASONS = (
    REQUEST_LINE_TOO_LONG,
    HEADER_TOO_LARGE,
    HEADER_TIMEOUT,
    BODY_TIMEOUT,
    BODY_TOO_LARGE,
    MALFORMED,
    HOST,
    TRANSFER_CODING,
)


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """What one HTTP/1.1 client may cost; the `http_*` settings (settings.py documents each)."""

    max_request_line_bytes: int
    max_header_line_bytes: int
    max_header_bytes: int
    header_timeout_seconds: float
    body_timeout_seconds: float
    min_body_bytes_per_second: int


class _Refusal(Exception):
    """Raised from a parser callback to stop parsing: the request is answered `error` and not read on."""

    def __init__(self, error: FerryError, reason: str) -> None:
        super().__init__(error.message)
        self.error = error
        self.reason = reason


def plain_length(value: bytes, header: str) -> int:
    """A length header's value: plain decimal digits only (no sign, `_`, spaces inside or exponent)."""
    digits = value.strip(b" \t")
    if not digits.isdigit() or len(digits) > _MAX_LENGTH_DIGITS:
        shown = value.decode("latin-1")
        raise InvalidInput(f"{header} must be a non-negative decimal integer, got {shown!r}")
    return int(digits)


def http_response(
    status: int, body: bytes, content_type: bytes, keep_alive: bool, extra_headers: bytes = b""
) -> bytes:
    return b"%scontent-type: %s\r\ncontent-length: %d\r\n%s%s\r\n%s" % (
        _STATUS_LINES[status],
        content_type,
        len(body),
        extra_headers,
        b"" if keep_alive else b"connection: close\r\n",
        body,
    )


def error_response(error: FerryError, keep_alive: bool, body: bytes | None = None) -> bytes:
    """An error's response with its status and headers (Retry-After, Allow); the body is the v2 shape
    `{"error": message}` unless a protocol gives its own (OpenAI's error JSON)."""
    extra = b""
    if isinstance(error, Unavailable):
        extra = b"retry-after: %d\r\n" % error.retry_after_seconds
    elif isinstance(error, MethodNotAllowed):
        extra = b"allow: %s\r\n" % error.allowed.encode()
    elif isinstance(error, Unauthenticated):
        extra = b"www-authenticate: %s\r\n" % error.challenge.encode()
    if body is None:
        body = orjson.dumps({"error": error.message})
    return http_response(error.http_status, body, JSON, keep_alive, extra)


@dataclass(frozen=True, slots=True)
class _Route:
    # "live", "ready", "server", "metrics", "model", "model_ready", "infer", "feedback"
    kind: str
    model: str = ""
    version: str = ""


_ROUTE_METHODS = {
    "live": b"GET",
    "ready": b"GET",
    "server": b"GET",
    "metrics": b"GET",
    "model": b"GET",
    "model_ready": b"GET",
    "infer": b"POST",
    "feedback": b"POST",
    "generate": b"POST",
    "generate_stream": b"POST",
    "openai_models": b"GET",
    "openai_model": b"GET",
    "completions": b"POST",
    "chat_completions": b"POST",
}
# Routes open to every caller when authentication is on: the probes' health endpoints, the server's own
# metadata, and /metrics (which a NetworkPolicy restricts to the scraper: --metrics-port, docs/security.md).
OPEN_ROUTES = frozenset({"live", "ready", "server", "metrics"})
# Routes answered by the generative API (protocol/rest/generate.py), when a generative model is served.
GENERATIVE_ROUTES = frozenset(
    {"generate", "generate_stream", "openai_models", "openai_model", "completions", "chat_completions"}
)
_OPENAI_ROUTES = frozenset({"openai_models", "openai_model", "completions", "chat_completions"})
_OPENAI_PATHS = {
    b"/v1/models": "openai_models",
    b"/v1/completions": "completions",
    b"/v1/chat/completions": "chat_completions",
}


_MODEL_ENDPOINTS = {
    "ready": "model_ready",
    "infer": "infer",
    "feedback": "feedback",
    "generate": "generate",
    "generate_stream": "generate_stream",
}


def parse_route(path: bytes) -> _Route:
    if path == b"/v2/health/live":
        return _Route("live")
    if path == b"/v2/health/ready":
        return _Route("ready")
    if path in (b"/v2", b"/v2/"):
        return _Route("server")
    if path == b"/metrics":
        return _Route("metrics")
    if path in _OPENAI_PATHS:
        return _Route(_OPENAI_PATHS[path])
    if path.startswith(b"/v1/models/") and len(path) > len(b"/v1/models/"):
        return _Route("openai_model", unquote(path[len(b"/v1/models/") :].decode("utf-8", "replace")))
    if path.startswith(b"/v2/models/"):
        parts = [unquote(part.decode("utf-8", "replace")) for part in path[len(b"/v2/models/") :].split(b"/")]
        version = ""
        if len(parts) >= 3 and parts[1] == "versions":
            version = parts[2]
            parts = [parts[0], *parts[3:]]
        if parts[0]:
            if len(parts) == 1:
                return _Route("model", parts[0], version)
            if len(parts) == 2 and parts[1] in _MODEL_ENDPOINTS:
                return _Route(_MODEL_ENDPOINTS[parts[1]], parts[0], version)
    raise NotFound(
        f"no endpoint at {path.decode('utf-8', 'replace')}; endpoints: /v2/health/live, /v2/health/ready, "
        f"/v2, /v2/models/{{model}}[/versions/{{version}}]"
        f"[/ready|/infer|/feedback|/generate|/generate_stream], "
        f"/v1/models, /v1/completions, /v1/chat/completions, /metrics"
    )


def metadata_document(metadata: ModelMetadata) -> dict[str, Any]:
    def tensors(specs: tuple[Any, ...]) -> list[dict[str, Any]]:
        return [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in specs]

    return {
        "name": metadata.name,
        "versions": [metadata.version],
        "platform": metadata.platform,
        "inputs": tensors(metadata.inputs),
        "outputs": tensors(metadata.outputs),
    }


class RestApp:
    """Routes a complete request to the data plane and renders the response bytes."""

    def __init__(self, dataplane: DataPlane, metrics: Metrics, max_body_bytes: int) -> None:
        self.dataplane = dataplane
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.recorder = RequestRecorder(metrics, dataplane.model_name, "rest", "200")
        self._rejected = metrics.http_rejected.setdefault(
            dataplane.model_name, dict.fromkeys(REJECTION_REASONS, 0)
        )
        self._routes: dict[bytes, _Route] = {}
        self._metadata_body: bytes | None = None
        # Built on the first response: the model is attached after the listeners start.
        self._encoder: codec.ResponseEncoder | None = None
        self.decoder = codec.RequestDecoder()
        # Set by server.py when the served model generates text.
        self.generative: GenerativeApi | None = None
        # Set by server.py when --auth is on: checks the Authorization header of every route but OPEN_ROUTES.
        self.auth: Authenticator | None = None
        self._auth_decisions = metrics.auth_decisions.setdefault(dataplane.model_name, {})
        # /metrics is served here unless --metrics-port moved it (then this is that port's number).
        self.metrics_elsewhere = 0
        # True on the --metrics-port listener: only /metrics and the health endpoints.
        self.metrics_only = False

    def route(self, path: bytes) -> _Route:
        route = self._routes.get(path)
        if route is None:
            route = parse_route(path)
            # Only routes to the served model are cached, so unknown paths cannot grow the cache.
            if route.model in ("", self.dataplane.model_name) and len(self._routes) < 64:
                self._routes[path] = route
        return route

    def handle(
        self, connection: HttpConnection, method: bytes, body: bytes, keep_alive: bool, received: float
    ) -> bytes | None:
        """The response to the connection's current request (its `url` and `headers`), or None when an
        inference (or a token review) will answer later through `connection.respond`."""
        path = connection.url.partition(b"?")[0]
        route: _Route | None = None
        try:
            route = self.route(path)
            expected = _ROUTE_METHODS[route.kind]
            if method != expected and not (method == b"HEAD" and expected == b"GET"):
                raise MethodNotAllowed(
                    f"{path.decode('utf-8', 'replace')} accepts {expected.decode()}, not {method.decode()}",
                    expected.decode(),
                )
            if self.auth is not None and route.kind not in OPEN_ROUTES:
                verdict = self.auth.check(connection.headers.get(b"authorization"))
                if isinstance(verdict, asyncio.Future):
                    self._defer(
                        connection,
                        route,
                        method=method,
                        body=body,
                        keep_alive=keep_alive,
                        received=received,
                        verdict=verdict,
                    )
                    return None
                self._admit(verdict)
            return self._dispatch(
                connection, route, method=method, body=body, keep_alive=keep_alive, received=received
            )
        except FerryError as error:
            return self._error(route, path, error, keep_alive, received)
        except Exception as error:  # a bug, never a client's mistake: answered 500 and counted
            return self._internal_error(method, path, error, keep_alive, received)

    def _internal_error(
        self, method: bytes, path: bytes, error: Exception, keep_alive: bool, received: float
    ) -> bytes:
        log.exception("unexpected failure handling %s %s", method.decode("latin-1"), path[:200])
        self.recorder.record("500", time.perf_counter() - received)
        return error_response(FerryError(f"internal error: {error}"), keep_alive)

    def _dispatch(
        self,
        connection: HttpConnection,
        route: _Route,
        *,
        method: bytes,
        body: bytes,
        keep_alive: bool,
        received: float,
    ) -> bytes | None:
        if self.metrics_only and route.kind not in ("metrics", "live", "ready"):
            raise NotFound("this is the metrics port: it serves /metrics and /v2/health/{live,ready} only")
        if route.kind in GENERATIVE_ROUTES:
            return self._generative(connection, route, body, keep_alive, received)
        if route.kind == "infer":
            return self._infer(connection, route, body, keep_alive, received)
        if route.kind == "feedback":
            return self._feedback(connection, route, body, keep_alive)
        response = self._get(route, keep_alive)
        if method == b"HEAD":
            head, _, _ = response.partition(b"\r\n\r\n")
            return head + b"\r\n\r\n"
        return response

    def _error(
        self, route: _Route | None, path: bytes, error: FerryError, keep_alive: bool, received: float
    ) -> bytes:
        # Every 5xx is counted, whatever the route: it is what an error-ratio alert must see.
        if error.http_status >= 500 or route_is_infer(path):
            self.recorder.record(str(error.http_status), time.perf_counter() - received)
        if route is not None and route.kind in _OPENAI_ROUTES:
            return error_response(error, keep_alive, orjson.dumps(openai.error_document(error)))
        return error_response(error, keep_alive)

    def _admit(self, verdict: Verdict) -> None:
        """Count an authentication decision; raise the refusal unless it admits the request."""
        decisions = self._auth_decisions
        decisions[verdict.outcome] = decisions.get(verdict.outcome, 0) + 1
        assert self.auth is not None
        error = refusal(verdict, self.auth.scheme_hint)
        if error is not None:
            raise error

    def _defer(
        self,
        connection: HttpConnection,
        route: _Route,
        *,
        method: bytes,
        body: bytes,
        keep_alive: bool,
        received: float,
        verdict: asyncio.Future[Verdict],
    ) -> None:
        """Hold the request's place on the connection until its token is reviewed, then answer it as if
        it had just arrived (later pipelined requests queue behind it, so answers stay in order)."""
        gate = connection.reserve(_Slot(keep_alive, received))
        request = connection.snapshot()

        def resume(done: asyncio.Future[Verdict]) -> None:
            if connection.closed:
                return
            path = request.url.partition(b"?")[0]
            try:
                self._admit(done.result())
                with connection.replaying(gate, request):
                    response = self._dispatch(
                        connection,
                        route,
                        method=method,
                        body=body,
                        keep_alive=gate.keep_alive,
                        received=received,
                    )
            except FerryError as error:
                response = self._error(route, path, error, gate.keep_alive, received)
            except Exception as error:  # a bug, as in handle
                response = self._internal_error(method, path, error, gate.keep_alive, received)
            if response is not None:
                connection.respond(gate, response, gate.keep_alive)

        verdict.add_done_callback(resume)

    def refused(self, reason: str, status: int) -> None:
        """Count a request refused by the transport (a 5xx among them in ferry_requests_total too)."""
        self._rejected[reason] += 1
        if status >= 500:
            self.recorder.count(str(status))

    def _get(self, route: _Route, keep_alive: bool) -> bytes:
        plane = self.dataplane
        kind = route.kind
        if kind == "live":
            return http_response(200, b'{"live":true}', JSON, keep_alive)
        if kind == "ready":
            if plane.ready:
                return http_response(200, b'{"ready":true}', JSON, keep_alive)
            return http_response(503, b'{"ready":false}', JSON, keep_alive, b"retry-after: 1\r\n")
        if kind == "server":
            return http_response(200, orjson.dumps(plane.server_metadata()), JSON, keep_alive)
        if kind == "metrics":
            if self.metrics_elsewhere:
                raise NotFound(f"/metrics is served on port {self.metrics_elsewhere} (--metrics-port)")
            return http_response(
                200, generate_latest(self.metrics.registry), CONTENT_TYPE_LATEST.encode(), keep_alive
            )
        if kind == "model_ready":
            ready = plane.model_ready(route.model, route.version)
            body = orjson.dumps({"name": route.model, "ready": ready})
            return http_response(200 if ready else 503, body, JSON, keep_alive)
        metadata = plane.model_metadata(route.model, route.version)
        if self._metadata_body is None:
            self._metadata_body = orjson.dumps(metadata_document(metadata))
        return http_response(200, self._metadata_body, JSON, keep_alive)

    def _decoded(self, connection: HttpConnection, body: bytes) -> bytes:
        """The request body with its Content-Encoding (gzip, deflate) undone, under the body limit."""
        encoding = connection.headers.get(b"content-encoding")
        return body if encoding is None else inflate(body, encoding, self.max_body_bytes)

    def _generative(
        self, connection: HttpConnection, route: _Route, body: bytes, keep_alive: bool, received: float
    ) -> bytes | None:
        body = self._decoded(connection, body)
        if self.generative is None:
            return not_generative(self.dataplane, route)
        return self.generative.handle(
            connection,
            route.kind,
            model=route.model,
            version=route.version,
            body=body,
            keep_alive=keep_alive,
            received=received,
        )

    def _feedback(self, connection: HttpConnection, route: _Route, body: bytes, keep_alive: bool) -> bytes:
        body = self._decoded(connection, body)
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as error:
            raise InvalidInput(f"feedback body is not valid JSON: {error}") from None
        answer = self.dataplane.record_feedback(route.model, route.version, document)
        return http_response(200, orjson.dumps(answer), JSON, keep_alive)

    def _infer(
        self, connection: HttpConnection, route: _Route, body: bytes, keep_alive: bool, received: float
    ) -> bytes | None:
        headers = connection.headers
        body = self._decoded(connection, body)
        json_length = None
        header_length = headers.get(b"inference-header-content-length")
        if header_length is not None:
            json_length = plain_length(header_length, "Inference-Header-Content-Length")
        request = self.decoder.decode(body, json_length, route.model, route.version)
        slot = _Slot(keep_alive, received)
        plane = self.dataplane
        plane.enqueue(
            request, connection.loop, lambda outcome: self._complete(connection, slot, request, outcome)
        )
        plane.in_flight += 1
        connection.reserve(slot)
        return None

    def _complete(
        self, connection: HttpConnection, slot: _Slot, request: InferenceRequest, outcome: Outcome
    ) -> None:
        self.dataplane.in_flight -= 1
        keep_alive = slot.keep_alive and not connection.draining
        if not isinstance(outcome, BaseException):
            try:
                self.dataplane.remember(request, outcome)
                body, json_length = (self._encoder or self._make_encoder()).encode(request, outcome)
            except Exception as failure:  # an output the protocol cannot carry is a server-side fault
                log.exception("cannot encode the response of model '%s'", request.model_name)
                outcome = failure
            else:
                if json_length is None:
                    data = b"%s%d\r\n%s\r\n%s" % (
                        _OK_JSON_HEAD,
                        len(body),
                        b"" if keep_alive else b"connection: close\r\n",
                        body,
                    )
                else:
                    data = b"%s%d\r\ninference-header-content-length: %d\r\n%s\r\n%s" % (
                        _OK_BINARY_HEAD,
                        len(body),
                        json_length,
                        b"" if keep_alive else b"connection: close\r\n",
                        body,
                    )
                self.recorder.record_ok(time.perf_counter() - slot.received)
                connection.respond(slot, data, keep_alive)
                return
        error = outcome
        if not isinstance(error, FerryError):
            log.error("inference failed: %r", error)
            error = FerryError(f"internal error: {error}")
        self.recorder.record(str(error.http_status), time.perf_counter() - slot.received)
        connection.respond(slot, error_response(error, keep_alive), keep_alive)

    def _make_encoder(self) -> codec.ResponseEncoder:
        plane = self.dataplane
        if plane.model is None:
            raise RuntimeError("a response before the model was attached")
        self._encoder = codec.ResponseEncoder(
            plane.model_name, plane.model_version, plane.model.metadata.outputs
        )
        return self._encoder


def not_generative(plane: DataPlane, route: _Route) -> bytes:
    """A text-generation route on a server whose model takes tensors."""
    if route.model:
        plane.check_model(route.model, route.version)
    name = plane.model_name
    raise NotFound(
        f"model '{name}' is not a generative model: it has no text generation endpoints; "
        f"use POST /v2/models/{name}/infer"
    )


def route_is_infer(path: bytes) -> bool:
    return path.endswith(b"/infer")


def inflate(body: bytes, encoding: bytes, limit: int) -> bytes:
    name = encoding.strip().lower()
    if name == b"identity":
        return body
    if name not in (b"gzip", b"deflate"):
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding.decode('latin-1')!r} is not supported; use gzip, deflate or identity"
        )
    # wbits 47 accepts gzip and zlib headers alike; max_length stops a decompression bomb at the limit.
    inflater = zlib.decompressobj(47)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as error:
        raise InvalidInput(f"request body is not valid {name.decode()} data: {error}") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"request body inflates to more than the {limit}-byte limit")
    return data


def _announce_keep_alive(response: bytes) -> bytes:
    """HTTP/1.0 closes after each response unless the response says otherwise (after its status line)."""
    return response.replace(b"\r\n", b"\r\nconnection: keep-alive\r\n", 1)


class _Slot:
    """A response position on a connection, so pipelined requests are answered in order.

    A whole response is `data`; a streamed one (server-sent events) first collects `chunks`, written as
    soon as the slot is at the head of the connection's queue, and ends when `data` (its tail) is set.
    """

    __slots__ = ("announce_keep_alive", "chunks", "data", "keep_alive", "received", "streamed")

    def __init__(self, keep_alive: bool, received: float) -> None:
        self.data: bytes | None = None
        self.keep_alive = keep_alive
        # When the request was complete (for the request-duration metric).
        self.received = received
        # An HTTP/1.0 request that asked for keep-alive: the response must say so, or the client closes.
        self.announce_keep_alive = False
        self.chunks: list[bytes] = []
        # True once part of a streamed response was queued (its head is already rendered then).
        self.streamed = False


@dataclass(frozen=True, slots=True)
class _RequestHead:
    """What `RestApp.handle` reads of a request from its connection, kept for a deferred answer."""

    url: bytes
    headers: dict[bytes, bytes]
    http10: bool


# Where a connection is in reading its current request; each phase has its own deadline (see `expire`).
_FRESH = 0  # connected, no byte of a request yet: the header timeout runs from connection_made
_IDLE = 1  # between keep-alive requests: the keep-alive timeout applies (RestServer._sweep)
_HEADERS = 2  # the request line and headers are arriving: the header timeout runs from their first byte
_BODY = 3  # the body is arriving: the body timeout (between reads) and the minimum rate apply


class HttpConnection(asyncio.Protocol):
    def __init__(self, app: RestApp, server: RestServer) -> None:
        self.app = app
        self.server = server
        self.limits = server.limits
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.draining = False
        self.last_active = self.loop.time()
        # The request being parsed: its target and the headers the server acts on.
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self._body: list[bytes] = []
        self._body_size = 0
        self._slots: deque[_Slot] = deque()
        self._rejected = False
        self._closed = False
        self._reading_paused = False
        self._paused_at = 0.0
        self._received = 0.0
        # Reading state: the phase, when it began, and the header bytes counted so far (see data_received).
        self._phase = _FRESH
        self._phase_since = self.last_active
        self._header_bytes = 0
        self._header_lines_bytes = 0
        self._hosts = 0
        # Called once when the connection ends (a generation stops when its client goes away).
        self._on_close: dict[int, Callable[[], None]] = {}
        # While a deferred request is answered: the slot it holds and its head (see `replaying`).
        self._replay: tuple[_Slot, _RequestHead] | None = None

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.server.connections.add(self)
        self.draining = self.server.draining

    def connection_lost(self, _exc: Exception | None) -> None:
        self._closed = True
        self.server.connections.discard(self)
        callbacks, self._on_close = self._on_close, {}
        for callback in callbacks.values():
            callback()

    def data_received(self, data: bytes) -> None:
        if self._rejected:
            return  # discarding the rest of a refused request until the client closes
        self.last_active = self.loop.time()
        began = self._phase == _HEADERS
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as error:
            cause = error.__context__
            if isinstance(cause, _Refusal):
                self._reject(cause.error, cause.reason)
            elif isinstance(cause, FerryError):
                self._reject(cause, MALFORMED)
            else:  # a bug in a callback: answered 500, counted, and the connection is not read on
                log.error("unexpected failure parsing a request", exc_info=cause)
                self.app.recorder.count("500")
                self._reject(FerryError(f"internal error: {cause}"), MALFORMED)
            return
        except httptools.HttpParserUpgrade:
            self._reject(InvalidInput("protocol upgrades are not supported; speak HTTP/1.1"), MALFORMED)
            return
        except httptools.HttpParserError as error:
            self._reject(InvalidInput(f"malformed HTTP request: {error}"), MALFORMED)
            return
        # httptools hands a header over only once it is complete, accumulating it by concatenation (so
        # an endless header costs quadratic time): the bytes of every chunk read while still inside one
        # request's headers are counted here, so that is refused once it passes the limit. The chunk in
        # which the request began is not counted (part of it may be the previous request), so the limit
        # holds to within one read; `on_header` checks each line exactly.
        if began and self._phase == _HEADERS:
            self._header_bytes += len(data)
            if self._header_bytes > self.limits.max_header_bytes:
                self._reject(self._headers_too_large(), HEADER_TOO_LARGE)

    def pause_writing(self) -> None:
        self._pause_reading()

    def resume_writing(self) -> None:
        self._resume_reading()

    # --- httptools callbacks ---

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = {}
        self._body = []
        self._body_size = 0
        self._phase = _HEADERS
        self._phase_since = self.last_active
        self._header_bytes = 0
        self._header_lines_bytes = 0
        self._hosts = 0

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.limits.max_request_line_bytes:
            limit = self.limits.max_request_line_bytes
            raise _Refusal(
                UriTooLong(f"request target is longer than the {limit}-byte limit; starts {self.url[:64]!r}"),
                REQUEST_LINE_TOO_LONG,
            )

    def on_header(self, name: bytes, value: bytes) -> None:
        line = len(name) + len(value) + 4  # "name: value\r\n"
        if line > self.limits.max_header_line_bytes:
            shown = name[:64].decode("latin-1")
            raise _Refusal(
                HeaderFieldsTooLarge(
                    f"header {shown!r} is {line} bytes; the limit for one header line is "
                    f"{self.limits.max_header_line_bytes}"
                ),
                HEADER_TOO_LARGE,
            )
        self._header_lines_bytes += line
        if self._header_lines_bytes > self.limits.max_header_bytes:
            raise _Refusal(self._headers_too_large(), HEADER_TOO_LARGE)
        name = name.lower()
        if name in _WANTED_HEADERS:
            if name == b"host":
                self._hosts += 1
            elif name == b"transfer-encoding" and name in self.headers:
                value = self.headers[name] + b", " + value  # field lines combine into one list
            self.headers[name] = value

    def on_headers_complete(self) -> None:
        headers = self.headers
        if self._hosts != 1 and self.parser.get_http_version() == "1.1":
            raise _Refusal(
                InvalidInput(
                    "an HTTP/1.1 request needs exactly one Host header (RFC 9112 3.2), "
                    f"this one has {self._hosts}"
                ),
                HOST,
            )
        coding = headers.get(b"transfer-encoding")
        if coding is not None:
            self._check_transfer_coding(coding)
        self._phase = _BODY
        self._phase_since = self.last_active
        length = headers.get(b"content-length")
        if length is not None:
            declared = plain_length(length, "Content-Length")  # the parser already refused anything else
            if declared > self.app.max_body_bytes:
                raise _Refusal(
                    PayloadTooLarge(
                        f"request body of {declared} bytes exceeds the {self.app.max_body_bytes}-byte limit"
                    ),
                    BODY_TOO_LARGE,
                )
        if headers.get(b"expect", b"").lower() == b"100-continue" and self.transport is not None:
            self.transport.write(_CONTINUE)

    def _check_transfer_coding(self, value: bytes) -> None:
        codings = [coding.strip().lower() for coding in value.split(b",")]
        shown = value.decode("latin-1")
        if codings[-1] != b"chunked":
            # RFC 9112 6.3: without chunked last the body's length cannot be known: 400 and close.
            raise _Refusal(
                InvalidInput(f"Transfer-Encoding {shown!r}: chunked must be the final transfer coding"),
                TRANSFER_CODING,
            )
        if len(codings) > 1:
            # RFC 9112 6.1: a transfer coding the server does not implement is answered 501.
            raise _Refusal(
                TransferCodingNotImplemented(
                    f"Transfer-Encoding {shown!r} is not supported: send the body with 'chunked' alone "
                    f"(compress it with Content-Encoding: gzip instead)"
                ),
                TRANSFER_CODING,
            )

    def _headers_too_large(self) -> HeaderFieldsTooLarge:
        return HeaderFieldsTooLarge(
            f"request header section is larger than the {self.limits.max_header_bytes}-byte limit"
        )

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self.app.max_body_bytes:
            raise _Refusal(
                PayloadTooLarge(f"request body exceeds the {self.app.max_body_bytes}-byte limit"),
                BODY_TOO_LARGE,
            )
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._phase = _IDLE
        received = time.perf_counter()
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        keep_alive = self.parser.should_keep_alive() and not self.draining
        method = self.parser.get_method()
        try:
            response = self.app.handle(self, method, body, keep_alive, received)
        except FerryError as error:
            response = error_response(error, keep_alive)
        except Exception as error:
            log.exception("unexpected failure handling %s %s", method, self.url)
            self.app.recorder.record("500", time.perf_counter() - received)
            response = error_response(FerryError(f"internal error: {error}"), keep_alive)
        if response is not None:
            if not self._slots:
                if keep_alive and self.parser.get_http_version() == "1.0":
                    response = _announce_keep_alive(response)
                self._write(response, keep_alive)
                return
            self.respond(self.reserve(_Slot(keep_alive, received)), response, keep_alive)
        elif len(self._slots) >= _MAX_PIPELINED:
            self._pause_reading()

    # --- deadlines ---

    def expire(self, now: float) -> None:
        """Close a connection whose client is too slow sending its request (called by the sweep)."""
        if self._reading_paused or self._rejected or self._closed:
            return  # the server, not the client, is holding the request up
        phase, elapsed, limits = self._phase, now - self._phase_since, self.limits
        if phase == _FRESH:
            if elapsed > limits.header_timeout_seconds:
                self._rejected = True
                self.app.refused(HEADER_TIMEOUT, RequestTimeout.http_status)
                self.close()  # nothing was asked, so nothing is answered
        elif phase == _HEADERS:
            if elapsed > limits.header_timeout_seconds:
                self._time_out(
                    f"the request's headers took longer than {limits.header_timeout_seconds:g} s",
                    HEADER_TIMEOUT,
                )
        elif phase == _BODY:
            if now - self.last_active > limits.body_timeout_seconds:
                self._time_out(f"no request body data for {limits.body_timeout_seconds:g} s", BODY_TIMEOUT)
            elif (
                limits.min_body_bytes_per_second
                and elapsed > _BODY_RATE_GRACE_SECONDS
                and self._body_size < limits.min_body_bytes_per_second * elapsed
            ):
                self._time_out(
                    f"the request body arrives at {self._body_size / elapsed:.0f} bytes/s, slower than "
                    f"the minimum of {limits.min_body_bytes_per_second} bytes/s",
                    BODY_TIMEOUT,
                )

    def _time_out(self, message: str, reason: str) -> None:
        error = RequestTimeout(f"{message}; closing the connection")
        self._rejected = True
        self.app.refused(reason, error.http_status)
        self._write(error_response(error, keep_alive=False), keep_alive=False)

    # --- responses ---

    def reserve(self, slot: _Slot) -> _Slot:
        """Queue a response position behind those of earlier requests on this connection (called while
        the request's own message is the parser's current one, so its HTTP version is known; for a
        deferred request, the position it already holds)."""
        if self._replay is not None:
            gate, head = self._replay
            self._replay = None
            slot.announce_keep_alive = head.http10
            if gate in self._slots:
                self._slots[self._slots.index(gate)] = slot
            return slot
        slot.announce_keep_alive = self.parser.get_http_version() == "1.0"
        self._slots.append(slot)
        return slot

    def snapshot(self) -> _RequestHead:
        return _RequestHead(self.url, self.headers, self.parser.get_http_version() == "1.0")

    @contextmanager
    def replaying(self, gate: _Slot, head: _RequestHead) -> Iterator[None]:
        """Answer a deferred request now: its url, headers and HTTP version stand in for the parser's
        current ones, and a slot it reserves takes the place `gate` kept in the queue."""
        saved = self.url, self.headers
        self.url, self.headers, self._replay = head.url, head.headers, (gate, head)
        try:
            yield
        finally:
            self.url, self.headers = saved
            self._replay = None

    @property
    def closed(self) -> bool:
        return self._closed

    def respond(self, slot: _Slot, data: bytes, keep_alive: bool) -> None:
        """Complete a slot's response (a whole response, or the tail of a streamed one)."""
        slot.data = data
        slot.keep_alive = keep_alive
        self._flush()

    def stream(self, slot: _Slot, data: bytes) -> bool:
        """Queue part of a streamed response; False when the client is gone or reads too slowly (more
        than `max_stream_buffer` bytes unread), so the producer should stop."""
        if self._closed:
            return False
        slot.streamed = True
        slot.chunks.append(data)
        self._flush()
        transport = self.transport
        return transport is not None and transport.get_write_buffer_size() <= self.server.max_stream_buffer

    def when_closed(self, key: int, callback: Callable[[], None] | None) -> None:
        """Register (or, with None, drop) a callback for when the connection ends."""
        if callback is None:
            self._on_close.pop(key, None)
        elif self._closed:
            callback()
        else:
            self._on_close[key] = callback

    @property
    def http10(self) -> bool:
        if self._replay is not None:
            return self._replay[1].http10
        return self.parser.get_http_version() == "1.0"

    def _flush(self) -> None:
        slots = self._slots
        while slots:
            head = slots[0]
            if head.chunks:
                for chunk in head.chunks:
                    self._write(chunk, True)
                head.chunks.clear()
            if head.data is None:
                break
            slots.popleft()
            if head.keep_alive and head.announce_keep_alive and not head.streamed:
                head.data = _announce_keep_alive(head.data)
            self._write(head.data, head.keep_alive)
        if self._reading_paused and len(slots) < _MAX_PIPELINED // 2:
            self._resume_reading()

    def _write(self, data: bytes, keep_alive: bool) -> None:
        self.last_active = self.loop.time()
        transport = self.transport
        if self._closed or transport is None:
            return
        transport.write(data)
        if not keep_alive:
            self._closed = True
            transport.close()

    def idle(self) -> bool:
        return not self._slots

    def close(self) -> None:
        if self.transport is not None and not self._closed:
            self._closed = True
            self.transport.close()

    def _reject(self, error: FerryError, reason: str) -> None:
        """Answer a request that will not be read on, then stop reading from this connection."""
        self._rejected = True
        self.app.refused(reason, error.http_status)
        data = error_response(error, keep_alive=False)
        if self._slots:
            self.respond(self.reserve(_Slot(False, 0.0)), data, keep_alive=False)
            return
        transport = self.transport
        if transport is None or self._closed:
            return
        transport.write(data)
        # Half-close and keep discarding input for a moment: closing with unread data in the socket
        # makes the kernel send RST, which can destroy the 413 before the client reads it.
        if transport.can_write_eof():
            transport.write_eof()
        self.loop.call_later(2.0, self.close)

    def _pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None and not self._closed:
            self._reading_paused = True
            self._paused_at = self.loop.time()
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None and not self._closed:
            self._reading_paused = False
            # Time spent paused by the server does not count against the client's deadlines.
            now = self.loop.time()
            self._phase_since += now - self._paused_at
            self.last_active = now
            self.transport.resume_reading()


class RestServer:
    def __init__(self, app: RestApp, keepalive_timeout: float, limits: HttpLimits) -> None:
        self.app = app
        self.keepalive_timeout = keepalive_timeout
        self.limits = limits
        self.loop = asyncio.get_running_loop()
        self.connections: set[HttpConnection] = set()
        self.draining = False
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        # A streamed response stops when its client leaves more than this unread (slow-reader bound).
        self.max_stream_buffer = 1024 * 1024
        # The sweep runs often enough that a connection outlives its deadline by at most a quarter of it.
        self._sweep_every = min(1.0, limits.header_timeout_seconds / 4, limits.body_timeout_seconds / 4)

    async def start(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> int:
        factory: Callable[[], HttpConnection] = lambda: HttpConnection(self.app, self)  # noqa: E731
        self._server = await self.loop.create_server(
            factory, host, port, reuse_address=True, backlog=1024, ssl=tls
        )
        self._sweep()
        sockets = self._server.sockets
        return int(sockets[0].getsockname()[1]) if sockets else port

    def _sweep(self) -> None:
        # One timer for all connections instead of one per request: close keep-alive connections idle
        # past the timeout (or, while draining, idle for a moment after their last response), and those
        # whose client is too slow sending a request.
        now = self.loop.time()
        limit = 0.25 if self.draining else self.keepalive_timeout
        for connection in list(self.connections):
            if connection.idle() and now - connection.last_active > limit:
                connection.close()
            else:
                connection.expire(now)
        self._sweeper = self.loop.call_later(0.05 if self.draining else self._sweep_every, self._sweep)

    async def drain(self, grace_seconds: float) -> None:
        """Stop accepting connections, let in-flight requests finish (answered with Connection: close)."""
        self.draining = True
        for connection in self.connections:
            connection.draining = True
        if self._server is not None:
            self._server.close()
        deadline = self.loop.time() + grace_seconds
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.02)
        for connection in list(self.connections):
            connection.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
