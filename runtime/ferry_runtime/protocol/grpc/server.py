"""The v2 gRPC service (`inference.GRPCInferenceService`) on grpc.aio, over the shared data plane.

Handlers are registered by hand with the generated message classes, so the service is fully typed and
needs no generated servicer module.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import grpc.aio
from google.protobuf.message import DecodeError

from ferry_runtime.dataplane import DataPlane
from ferry_runtime.errors import FerryError, Unavailable
from ferry_runtime.metrics import Metrics, RequestRecorder
from ferry_runtime.protocol.grpc import codec
from ferry_runtime.protocol.grpc.generated import grpc_predict_v2_pb2 as pb

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"

RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")


class InferenceService:
    def __init__(self, dataplane: DataPlane, metrics: Metrics) -> None:
        self.dataplane = dataplane
        self.recorder = RequestRecorder(metrics, dataplane.model_name, "grpc")

    async def server_live(
        self, _request: pb.ServerLiveRequest, _context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.dataplane.live)

    async def server_ready(
        self, _request: pb.ServerReadyRequest, _context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.dataplane.ready)

    async def server_metadata(
        self, _request: pb.ServerMetadataRequest, _context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**self.dataplane.server_metadata())

    async def model_ready(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ModelReadyResponse:
        try:
            return pb.ModelReadyResponse(ready=self.dataplane.model_ready(request.name, request.version))
        except FerryError as error:
            await _abort(context, error)
            raise

    async def model_metadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ModelMetadataResponse:
        try:
            metadata = self.dataplane.model_metadata(request.name, request.version)
        except FerryError as error:
            await _abort(context, error)
            raise
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=metadata.name,
            versions=[metadata.version],
            platform=metadata.platform,
            inputs=[tensor(name=s.name, datatype=s.datatype, shape=s.shape) for s in metadata.inputs],
            outputs=[tensor(name=s.name, datatype=s.datatype, shape=s.shape) for s in metadata.outputs],
        )

    async def model_infer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ModelInferResponse:
        received = time.perf_counter()
        plane = self.dataplane
        try:
            inference = codec.decode_request(request)
            plane.in_flight += 1
            try:
                response = await plane.infer(inference)
            finally:
                plane.in_flight -= 1
            message = codec.encode_response(response)
        except FerryError as error:
            self.recorder.record(error.grpc_status.name, time.perf_counter() - received)
            await _abort(context, error)
            raise
        self.recorder.record("OK", time.perf_counter() - received)
        return message


async def _abort(context: grpc.aio.ServicerContext[Any, Any], error: FerryError) -> None:
    if isinstance(error, Unavailable):
        # gRPC's standard retry pushback, and the HTTP-style hint for clients that read metadata.
        seconds = error.retry_after_seconds
        context.set_trailing_metadata(
            (("grpc-retry-pushback-ms", str(seconds * 1000)), ("retry-after", str(seconds)))
        )
    await context.abort(error.grpc_status, error.message)


def _unary(
    handler: Callable[[RequestT, grpc.aio.ServicerContext[Any, Any]], Awaitable[ResponseT]],
    request_type: Any,
) -> grpc.RpcMethodHandler:
    # The request is parsed here rather than by grpc, so undecodable bytes are the client's
    # INVALID_ARGUMENT instead of grpc's INTERNAL "Exception deserializing request!".
    async def parse_then_handle(data: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> ResponseT:
        try:
            request = request_type.FromString(data)
        except DecodeError as error:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"request is not a valid {request_type.__name__}: {error}"
            )
            raise
        return await handler(request, context)

    return grpc.unary_unary_rpc_method_handler(
        parse_then_handle,
        response_serializer=lambda message: message.SerializeToString(),
    )


class GrpcServer:
    def __init__(self, service: InferenceService, max_message_bytes: int) -> None:
        self.service = service
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", -1),
                # Two servers on one port would split traffic silently; fail to bind instead.
                ("grpc.so_reuseport", 0),
            ]
        )
        handlers = {
            "ServerLive": _unary(service.server_live, pb.ServerLiveRequest),
            "ServerReady": _unary(service.server_ready, pb.ServerReadyRequest),
            "ModelReady": _unary(service.model_ready, pb.ModelReadyRequest),
            "ServerMetadata": _unary(service.server_metadata, pb.ServerMetadataRequest),
            "ModelMetadata": _unary(service.model_metadata, pb.ModelMetadataRequest),
            "ModelInfer": _unary(service.model_infer, pb.ModelInferRequest),
        }
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        if hasattr(self._server, "add_registered_method_handlers"):
            # Registered methods skip grpc's per-call generic lookup.
            self._server.add_registered_method_handlers(SERVICE, handlers)

    async def start(self, host: str, port: int) -> int:
        bound = self._server.add_insecure_port(f"{host}:{port}")
        if bound == 0:
            raise OSError(f"cannot bind gRPC to {host}:{port}")
        await self._server.start()
        return int(bound)

    async def stop(self, grace_seconds: float) -> None:
        """New RPCs are refused at once; in-flight RPCs get `grace_seconds` to finish."""
        await self._server.stop(grace_seconds)
