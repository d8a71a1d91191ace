"""The v2 gRPC service (`inference.GRPCInferenceService`) over the shared data plane.

The transport is `http2.py` (unary gRPC over HTTP/2 on the event loop); this module is the service:
each method parses its request message, asks the data plane, and answers with the serialized response
message or a status. Inference completes through a future callback, with no task or coroutine per call.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from ferry_runtime.auth import Authenticator, Verdict, refusal
from ferry_runtime.batching import Outputs
from ferry_runtime.dataplane import DataPlane
from ferry_runtime.errors import FerryError, Unavailable
from ferry_runtime.inference import InferenceRequest
from ferry_runtime.metrics import Metrics, RequestRecorder
from ferry_runtime.protocol.grpc import codec
from ferry_runtime.protocol.grpc.generated import grpc_predict_v2_pb2 as pb
from ferry_runtime.protocol.grpc.http2 import Call, GrpcTransportServer, Handler, Http2Limits, Metadata

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"


def _status_metadata(error: FerryError) -> Metadata:
    if isinstance(error, Unavailable):
        # gRPC's standard retry pushback, and the HTTP-style hint for clients that read metadata.
        seconds = error.retry_after_seconds
        return (("grpc-retry-pushback-ms", str(seconds * 1000)), ("retry-after", str(seconds)))
    return ()


def fail(call: Call, error: FerryError) -> None:
    call.fail(error.grpc_status, error.message, _status_metadata(error))


def _parse(request_type: Any, data: bytes) -> Any:
    try:
        return request_type.FromString(data)
    except DecodeError as error:
        raise _Undecodable(f"request is not a valid {request_type.__name__}: {error}") from None


class _Undecodable(FerryError):
    grpc_status = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 400


# Methods open to every caller when authentication is on (as the REST port's OPEN_ROUTES).
OPEN_METHODS = frozenset({"ServerLive", "ServerReady", "ServerMetadata"})


class InferenceService:
    def __init__(self, dataplane: DataPlane, metrics: Metrics, auth: Authenticator | None = None) -> None:
        self.dataplane = dataplane
        self.recorder = RequestRecorder(metrics, dataplane.model_name, "grpc", "OK")
        self._loop = asyncio.get_running_loop()
        self.auth = auth
        self._auth_decisions = metrics.auth_decisions.setdefault(dataplane.model_name, {})

    def methods(self) -> dict[str, Handler]:
        simple: dict[str, Callable[[bytes], bytes]] = {
            "ServerLive": self.server_live,
            "ServerReady": self.server_ready,
            "ServerMetadata": self.server_metadata,
            "ModelReady": self.model_ready,
            "ModelMetadata": self.model_metadata,
        }
        handlers: dict[str, Handler] = {
            f"/{SERVICE}/{name}": _answer(method, self.recorder) for name, method in simple.items()
        }
        handlers[f"/{SERVICE}/ModelInfer"] = self.model_infer
        if self.auth is not None:
            for name, handler in handlers.items():
                if name.rpartition("/")[2] not in OPEN_METHODS:
                    handlers[name] = self._gated(handler, self.auth)
        return handlers

    def _gated(self, handler: Handler, auth: Authenticator) -> Handler:
        """`handler` behind the authenticator: UNAUTHENTICATED, PERMISSION_DENIED or UNAVAILABLE unless
        the call's authorization metadata is admitted (after a token review, when one is needed)."""

        def admit(data: bytes, call: Call, verdict: Verdict) -> None:
            decisions = self._auth_decisions
            decisions[verdict.outcome] = decisions.get(verdict.outcome, 0) + 1
            error = refusal(verdict, auth.scheme_hint)
            if error is not None:
                if error.grpc_status in _SERVER_FAULTS:
                    self.recorder.record(error.grpc_status.name, time.perf_counter() - call.received)
                fail(call, error)
                return
            try:
                handler(data, call)
            except Exception as failure:  # after a review this runs in a callback, outside the transport
                log.exception("gRPC handler failed")
                fail(call, FerryError(f"internal error: {failure}"))

        def gated(data: bytes, call: Call) -> None:
            verdict = auth.check(call.authorization)
            if isinstance(verdict, asyncio.Future):
                verdict.add_done_callback(lambda done: admit(data, call, done.result()))
            else:
                admit(data, call, verdict)

        return gated

    def server_live(self, data: bytes) -> bytes:
        _parse(pb.ServerLiveRequest, data)
        return pb.ServerLiveResponse(live=self.dataplane.live).SerializeToString()

    def server_ready(self, data: bytes) -> bytes:
        _parse(pb.ServerReadyRequest, data)
        return pb.ServerReadyResponse(ready=self.dataplane.ready).SerializeToString()

    def server_metadata(self, data: bytes) -> bytes:
        _parse(pb.ServerMetadataRequest, data)
        return pb.ServerMetadataResponse(**self.dataplane.server_metadata()).SerializeToString()

    def model_ready(self, data: bytes) -> bytes:
        request: pb.ModelReadyRequest = _parse(pb.ModelReadyRequest, data)
        ready = self.dataplane.model_ready(request.name, request.version)
        return pb.ModelReadyResponse(ready=ready).SerializeToString()

    def model_metadata(self, data: bytes) -> bytes:
        request: pb.ModelMetadataRequest = _parse(pb.ModelMetadataRequest, data)
        metadata = self.dataplane.model_metadata(request.name, request.version)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=metadata.name,
            versions=[metadata.version],
            platform=metadata.platform,
            inputs=[tensor(name=s.name, datatype=s.datatype, shape=s.shape) for s in metadata.inputs],
            outputs=[tensor(name=s.name, datatype=s.datatype, shape=s.shape) for s in metadata.outputs],
        ).SerializeToString()

    def model_infer(self, data: bytes, call: Call) -> None:
        plane = self.dataplane
        try:
            request = codec.decode_request(_parse(pb.ModelInferRequest, data))
            future = plane.submit(request, self._loop)
        except FerryError as error:
            self.recorder.record(error.grpc_status.name, time.perf_counter() - call.received)
            fail(call, error)
            return
        except Exception as failure:  # a bug, never a client's mistake: INTERNAL, and counted
            log.exception("unexpected failure decoding or validating a ModelInfer request")
            internal = FerryError(f"internal error: {failure}")
            self.recorder.record(internal.grpc_status.name, time.perf_counter() - call.received)
            fail(call, internal)
            return
        plane.in_flight += 1
        future.add_done_callback(lambda done: self._complete(call, request, done))

    def _complete(self, call: Call, request: InferenceRequest, future: asyncio.Future[Outputs]) -> None:
        plane = self.dataplane
        plane.in_flight -= 1
        error = future.exception()
        if error is None:
            try:
                message = codec.encode_response(plane.response(request, future.result()))
            except Exception as failure:  # an output the protocol cannot carry is a server-side fault
                log.exception("cannot encode the response of model '%s'", request.model_name)
                error = failure
            else:
                self.recorder.record_ok(time.perf_counter() - call.received)
                call.reply(message)
                return
        if not isinstance(error, FerryError):
            log.error("inference failed: %r", error)
            error = FerryError(f"internal error: {error}")
        self.recorder.record(error.grpc_status.name, time.perf_counter() - call.received)
        fail(call, error)


# gRPC codes that are the server's fault (HTTP's 5xx): counted in ferry_requests_total on every method.
_SERVER_FAULTS = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE})


def _answer(method: Callable[[bytes], bytes], recorder: RequestRecorder) -> Handler:
    def handle(data: bytes, call: Call) -> None:
        try:
            response = method(data)
        except FerryError as error:
            if error.grpc_status in _SERVER_FAULTS:
                recorder.record(error.grpc_status.name, time.perf_counter() - call.received)
            fail(call, error)
            return
        except Exception as failure:
            log.exception("unexpected failure answering a gRPC call")
            internal = FerryError(f"internal error: {failure}")
            recorder.record(internal.grpc_status.name, time.perf_counter() - call.received)
            fail(call, internal)
            return
        call.reply(response)

    return handle


class GrpcServer:
    def __init__(self, service: InferenceService, limits: Http2Limits, metrics: Metrics) -> None:
        self.service = service
        self._transport = GrpcTransportServer(service.methods(), limits, metrics.http2_rejected)
        metrics.http2_read_pauses = self._transport.read_pauses

    async def start(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> int:
        return await self._transport.start(host, port, tls)

    async def stop(self, grace_seconds: float) -> None:
        """New RPCs are refused at once; in-flight RPCs get `grace_seconds` to finish."""
        await self._transport.stop(grace_seconds)
