"""Text generation over HTTP/1.1: the OpenAI-compatible routes and the v2 generate extension.

Runs on the same event loop and connections as the tensor API (server.py). A request is parsed
(protocol/openai.py), admitted by the generative model, and answered either whole when it finishes or
as server-sent events while it runs: `text/event-stream` with chunked transfer coding (HTTP/1.0 clients
get the stream unframed and the connection closes at its end). A client that disconnects, or leaves
more than the connection's stream buffer unread, cancels its generation, which frees its batch slot
before the next decode step.
"""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson

from ferry_runtime.errors import FerryError, InvalidInput
from ferry_runtime.generative.model import Generation, GenerationRequest, GenerationResult, GenerativeModel
from ferry_runtime.metrics import GenerationRecorder, Metrics, RequestRecorder
from ferry_runtime.protocol import openai
from ferry_runtime.protocol.rest.server import JSON, HttpConnection, _Slot, error_response, http_response

log = logging.getLogger(__name__)

_EVENT_STREAM = b"text/event-stream"
_DONE = b"data: [DONE]\n\n"


def openai_error_response(error: FerryError, keep_alive: bool) -> bytes:
    return error_response(error, keep_alive, orjson.dumps(openai.error_document(error)))


class EventStream:
    """One server-sent-events response on a connection slot."""

    __slots__ = ("_chunked", "_connection", "_slot", "open")

    def __init__(self, connection: HttpConnection, slot: _Slot) -> None:
        self._connection = connection
        self._slot = slot
        self._chunked = not connection.http10
        self.open = False

    def start(self) -> bool:
        self.open = True
        framing = b"transfer-encoding: chunked\r\n" if self._chunked else b""
        close = b"" if self._chunked and self._slot.keep_alive else b"connection: close\r\n"
        # x-accel-buffering: proxies such as nginx would otherwise hold events back.
        head = (
            b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncache-control: no-cache\r\n"
            b"x-accel-buffering: no\r\n%s%s\r\n" % (_EVENT_STREAM, framing, close)
        )
        return self._connection.stream(self._slot, head)

    def send(self, data: bytes) -> bool:
        if self._chunked:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        return self._connection.stream(self._slot, data)

    def event(self, document: Any) -> bool:
        return self.send(b"data: " + orjson.dumps(document) + b"\n\n")

    def end(self) -> None:
        keep_alive = self._slot.keep_alive and self._chunked and not self._connection.draining
        self._connection.respond(self._slot, b"0\r\n\r\n" if self._chunked else b"", keep_alive)


class GenerativeApi:
    def __init__(
        self,
        model: GenerativeModel,
        metrics: Metrics,
        version: str,
        check_model: Callable[[str, str], None],
    ) -> None:
        self.model = model
        # The data plane's (name, version) check, so v2 routes answer 404 as they do for tensor models.
        self._check_model = check_model
        self.name = model.name
        self.version = version
        self.tokens = GenerationRecorder(metrics, model.name)
        self.openai_requests = RequestRecorder(metrics, model.name, "openai", "200")
        self.rest_requests = RequestRecorder(metrics, model.name, "rest", "200")
        self._models_body = orjson.dumps(openai.models_document(model.name, model.created))
        self._model_body = orjson.dumps(openai.model_document(model.name, model.created))

    def handle(
        self,
        connection: HttpConnection,
        kind: str,
        *,
        model: str,
        version: str,
        body: bytes,
        keep_alive: bool,
        received: float,
    ) -> bytes | None:
        is_openai = kind not in ("generate", "generate_stream")
        recorder = self.openai_requests if is_openai else self.rest_requests
        try:
            if kind == "openai_models":
                return http_response(200, self._models_body, JSON, keep_alive)
            if kind == "openai_model":
                openai.require_served(model, self.name)
                return http_response(200, self._model_body, JSON, keep_alive)
            document = _json(body)
            if kind in {"generate", "generate_stream"}:
                self._check_model(model, version)
                request = openai.parse_generate(document, self.model.tokenizer)
                shape: _Shape = _GenerateShape(self.name, self.version, kind == "generate_stream")
                self._start(
                    connection,
                    request,
                    keep_alive=keep_alive,
                    received=received,
                    recorder=recorder,
                    shape=shape,
                )
                return None
            parse = openai.parse_chat if kind == "chat_completions" else openai.parse_completion
            text_request = parse(document, self.name, self.model.tokenizer)
            renderer = openai.Renderer.start(kind == "chat_completions", self.name)
            self._start(
                connection,
                text_request.generation,
                keep_alive=keep_alive,
                received=received,
                recorder=recorder,
                shape=_OpenAIShape(renderer, text_request.options),
            )
            return None
        except FerryError as error:
            recorder.record(str(error.http_status), time.perf_counter() - received)
            return (
                openai_error_response(error, keep_alive) if is_openai else error_response(error, keep_alive)
            )

    # --- one request ---

    def _start(
        self,
        connection: HttpConnection,
        request: GenerationRequest,
        *,
        keep_alive: bool,
        received: float,
        recorder: RequestRecorder,
        shape: _Shape,
    ) -> None:
        slot = _Slot(keep_alive, received)
        stream = EventStream(connection, slot) if shape.streaming else None
        key = id(slot)
        generation: Generation | None = None

        def on_text(text: str, result: GenerationResult) -> None:
            finished = result.finish_reason is not None
            if stream is not None:
                if not stream.open:
                    stream.start()
                alive = shape.on_piece(stream, text, result)
                if finished:
                    shape.on_end(stream, result)
                    stream.end()
                elif not alive and generation is not None:
                    generation.cancel()  # the client is gone or not reading: stop spending CPU on it
            elif finished:
                if result.error is not None:
                    connection.respond(slot, shape.error(result.error, slot.keep_alive), slot.keep_alive)
                else:
                    body = orjson.dumps(shape.whole(result))
                    connection.respond(slot, http_response(200, body, JSON, slot.keep_alive), slot.keep_alive)
            if finished:
                connection.when_closed(key, None)
                code = str(result.error.http_status) if result.error else "200"
                recorder.record(code, time.perf_counter() - received)

        generation = self.model.start(request, on_text, self.tokens)
        connection.reserve(slot)
        connection.when_closed(key, generation.cancel)


def _json(body: bytes) -> Any:
    if not body:
        raise InvalidInput("the request body is empty; send a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise InvalidInput(f"the request body is not valid JSON: {error}") from None


class _Shape(abc.ABC):
    """How one protocol renders a generation: whole, as stream events, and its errors."""

    # True when the client asked for server-sent events.
    streaming: bool

    @abc.abstractmethod
    def whole(self, result: GenerationResult) -> Any:
        """The response document of a finished generation."""

    @abc.abstractmethod
    def on_piece(self, stream: EventStream, text: str, result: GenerationResult) -> bool:
        """Send new text (or the error) as events; False when the client stopped reading."""

    @abc.abstractmethod
    def on_end(self, stream: EventStream, result: GenerationResult) -> None:
        """The protocol's closing events (finish reason, usage, [DONE])."""

    @abc.abstractmethod
    def error(self, error: FerryError, keep_alive: bool) -> bytes:
        """A whole error response in the protocol's shape."""


class _OpenAIShape(_Shape):
    def __init__(self, renderer: openai.Renderer, options: openai.StreamOptions) -> None:
        self.renderer = renderer
        self.options = options
        self.streaming = options.stream
        self._first = True

    def whole(self, result: GenerationResult) -> Any:
        return self.renderer.complete(result)

    def on_piece(self, stream: EventStream, text: str, result: GenerationResult) -> bool:
        if result.error is not None:
            return stream.event(openai.error_document(result.error))
        alive = True
        if text or self._first:
            alive = stream.event(self.renderer.chunk(text, None, self._first, self.options.include_usage))
            self._first = False
        return alive

    def on_end(self, stream: EventStream, result: GenerationResult) -> None:
        if result.error is None:
            stream.event(
                self.renderer.chunk("", openai.finish_reason(result), False, self.options.include_usage)
            )
            if self.options.include_usage:
                stream.event(self.renderer.usage_chunk(result))
        stream.send(_DONE)

    def error(self, error: FerryError, keep_alive: bool) -> bytes:
        return openai_error_response(error, keep_alive)


class _GenerateShape(_Shape):
    def __init__(self, name: str, version: str, streaming: bool) -> None:
        self.name = name
        self.version = version
        self.streaming = streaming

    def _document(self, text: str, result: GenerationResult) -> dict[str, Any]:
        document: dict[str, Any] = {
            "model_name": self.name,
            "model_version": self.version,
            "text_output": text,
        }
        if result.finish_reason is not None:
            document["finish_reason"] = openai.finish_reason(result)
            document["usage"] = openai.usage(result)
        return document

    def whole(self, result: GenerationResult) -> Any:
        return self._document(result.text, result)

    def on_piece(self, stream: EventStream, text: str, result: GenerationResult) -> bool:
        if result.error is not None:
            return stream.event({"error": result.error.message})
        if text and result.finish_reason is None:
            return stream.event(self._document(text, result))
        if result.finish_reason is not None:
            return stream.event(self._document(text, result))
        return True

    def on_end(self, stream: EventStream, result: GenerationResult) -> None:
        del stream, result

    def error(self, error: FerryError, keep_alive: bool) -> bytes:
        return error_response(error, keep_alive)
