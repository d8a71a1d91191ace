"""The runtime's error protocol: every failure a client can cause or see is a `FerryError`.

Each subclass carries its HTTP status and gRPC status code, so one handler per transport maps any of
them (REST: `{"error": message}` with the status; gRPC: the status code with the message as details).
Messages name the model, the input and what was expected and sent, because the client reads them.
"""

from __future__ import annotations

from typing import ClassVar

import grpc


class FerryError(Exception):
    """Base class: a failure with a client-facing message and its status on each transport."""

    http_status: ClassVar[int] = 500
    grpc_status: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        # The request parameter at fault, when one is (OpenAI's error JSON names it as `param`).
        self.param = param


class InvalidInput(FerryError):
    """The request is malformed or does not match the model (shape, datatype, names, data length)."""

    http_status = 400
    grpc_status = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(FerryError):
    """Unknown model, version, output or route."""

    http_status = 404
    grpc_status = grpc.StatusCode.NOT_FOUND


class Gone(FerryError):
    """Something that existed is no longer kept (a prediction evicted or expired before its feedback)."""

    http_status = 410
    grpc_status = grpc.StatusCode.NOT_FOUND


class Conflict(FerryError):
    """The request conflicts with what was already done (feedback for an already scored prediction)."""

    http_status = 409
    grpc_status = grpc.StatusCode.ALREADY_EXISTS


class MethodNotAllowed(FerryError):
    """A known route called with the wrong HTTP method."""

    http_status = 405
    grpc_status = grpc.StatusCode.UNIMPLEMENTED

    def __init__(self, message: str, allowed: str) -> None:
        super().__init__(message)
        self.allowed = allowed


class PayloadTooLarge(FerryError):
    """The request body exceeds the configured limit; refused before the body is read."""

    http_status = 413
    grpc_status = grpc.StatusCode.RESOURCE_EXHAUSTED


class RequestTimeout(FerryError):
    """The client took too long to send its request's headers or body (HTTP/1.1; slowloris)."""

    http_status = 408
    grpc_status = grpc.StatusCode.DEADLINE_EXCEEDED


class UriTooLong(FerryError):
    """The request target is longer than the HTTP/1.1 listener accepts."""

    http_status = 414
    grpc_status = grpc.StatusCode.INVALID_ARGUMENT


class HeaderFieldsTooLarge(FerryError):
    """One header line, or the header section in all, is larger than the HTTP/1.1 listener accepts."""

    http_status = 431
    grpc_status = grpc.StatusCode.RESOURCE_EXHAUSTED


class TransferCodingNotImplemented(FerryError):
    """A transfer coding the server does not implement (RFC 9112 6.1 asks for 501, a server limitation)."""

    http_status = 501
    grpc_status = grpc.StatusCode.UNIMPLEMENTED


class UnsupportedMediaType(FerryError):
    """A body encoding the server does not speak (e.g. an unknown Content-Encoding)."""

    http_status = 415
    grpc_status = grpc.StatusCode.INVALID_ARGUMENT


class Unavailable(FerryError):
    """The server cannot take the request now (queue full, model not ready, shutting down): retry later."""

    http_status = 503
    grpc_status = grpc.StatusCode.UNAVAILABLE

    def __init__(self, message: str, retry_after_seconds: int = 1) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class Unauthenticated(FerryError):
    """No credential, or one this model does not accept (auth.py): 401 with a WWW-Authenticate challenge."""

    http_status = 401
    grpc_status = grpc.StatusCode.UNAUTHENTICATED

    def __init__(self, message: str, challenge: str, invalid_token: bool) -> None:
        super().__init__(message)
        # RFC 6750 3: a request without a token gets the bare challenge; a bad token gets its error code.
        self.challenge = f'{challenge}, error="invalid_token"' if invalid_token else challenge


class PermissionDenied(FerryError):
    """An authenticated caller that is not allowed to call this model."""

    http_status = 403
    grpc_status = grpc.StatusCode.PERMISSION_DENIED


class InferenceFailed(FerryError):
    """The model itself failed on input that passed validation (a server-side fault)."""

    http_status = 500
    grpc_status = grpc.StatusCode.INTERNAL


class ModelLoadError(FerryError):
    """The model cannot be served (missing file, unsupported output types, failed warm-up)."""
