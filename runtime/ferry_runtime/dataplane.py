"""The transport-agnostic data plane: health, metadata and inference, shared by REST and gRPC.

It resolves the model and version, validates inputs against the model's metadata (names, datatypes,
shapes) with messages that say what was expected and what was sent, and hands the inputs to the batcher.
Model-quality hooks sit here too, so both transports feed them: validated inputs are offered to the drift
monitor, answered predictions that carry a request id are retained for feedback.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ferry_runtime import __version__
from ferry_runtime.batching import Batcher, Deliver, Outputs
from ferry_runtime.drift import DriftMonitor
from ferry_runtime.errors import InvalidInput, NotFound, Unavailable
from ferry_runtime.feedback import FeedbackStore, parse_feedback
from ferry_runtime.inference import InferenceRequest, InferenceResponse, OutputTensor, RequestedOutput
from ferry_runtime.model import Array, Model, ModelMetadata, TensorSpec

SERVER_NAME = "ferry-runtime"
# Protocol extensions this server implements, as Triton names them.
EXTENSIONS = ("binary_tensor_data",)


class DataPlane:
    def __init__(self, model_name: str, model_version: str, max_request_id_bytes: int = 1024) -> None:
        self.model_name = model_name
        self.model_version = model_version
        # Request ids are echoed and kept for feedback: a long one would cost memory per prediction.
        self.max_request_id_bytes = max_request_id_bytes
        self.model: Model | None = None
        # Set for a generative model instead of `model`: its metadata (text in, text out).
        self.generative_metadata: ModelMetadata | None = None
        self.batcher: Batcher | None = None
        self._ready = False
        # Requests accepted and not yet answered, across transports (read by the in-flight gauge).
        self.in_flight = 0
        self._inputs: tuple[TensorSpec, ...] = ()
        self._input_names: frozenset[str] = frozenset()
        self._outputs: dict[str, TensorSpec] = {}
        # Input name -> (axis, size) of each dimension the model fixes (the others are -1: any size).
        self._fixed_dims: dict[str, tuple[tuple[int, int], ...]] = {}
        # Dimension name -> the (input, axis) pairs that carry it, for names shared by several inputs.
        self._shared_dims: dict[str, tuple[tuple[str, int], ...]] = {}
        # Set by server.py once the model is loaded, when enabled.
        self.feedback: FeedbackStore | None = None
        self.drift: DriftMonitor | None = None

    # --- lifecycle (driven by server.py) ---

    def attach(self, model: Model, batcher: Batcher) -> None:
        self.model = model
        self.batcher = batcher
        self._inputs = model.metadata.inputs
        self._input_names = frozenset(spec.name for spec in self._inputs)
        self._outputs = {spec.name: spec for spec in model.metadata.outputs}
        self._fixed_dims = {
            spec.name: tuple((axis, size) for axis, size in enumerate(spec.shape) if size != -1)
            for spec in self._inputs
        }
        uses: dict[str, list[tuple[str, int]]] = {}
        for spec in self._inputs:
            for axis, dim_name in enumerate(spec.dim_names):
                if dim_name:
                    uses.setdefault(dim_name, []).append((spec.name, axis))
        self._shared_dims = {name: tuple(pairs) for name, pairs in uses.items() if len(pairs) > 1}

    def attach_generative(self, metadata: ModelMetadata) -> None:
        self.generative_metadata = metadata

    def set_ready(self, ready: bool) -> None:
        """What health probes report; a draining server reports not ready yet still answers requests."""
        self._ready = ready and (self.model is not None or self.generative_metadata is not None)

    # --- health and metadata ---

    @property
    def live(self) -> bool:
        return True

    @property
    def ready(self) -> bool:
        return self._ready

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}

    def check_model(self, name: str, version: str) -> None:
        """Raise NotFound naming what exists when (name, version) is not the served model."""
        if name != self.model_name:
            raise NotFound(f"unknown model '{name}'; this server serves model '{self.model_name}'")
        if version and version != self.model_version:
            raise NotFound(
                f"model '{name}' has no version '{version}'; available versions: {self.model_version}"
            )

    def model_ready(self, name: str, version: str) -> bool:
        self.check_model(name, version)
        return self._ready

    def model_metadata(self, name: str, version: str) -> ModelMetadata:
        self.check_model(name, version)
        if self.generative_metadata is not None:
            return self.generative_metadata
        if self.model is None:
            raise Unavailable(f"model '{name}' is still loading; its metadata is not known yet")
        return self.model.metadata

    # --- inference ---

    def submit(self, request: InferenceRequest, loop: asyncio.AbstractEventLoop) -> asyncio.Future[Outputs]:
        """Validate and queue a request; the future resolves with every output of the model."""
        feed = self._feed(request)
        future = self._batcher().submit(feed, loop)
        self._observe(feed)
        return future

    def enqueue(self, request: InferenceRequest, loop: asyncio.AbstractEventLoop, deliver: Deliver) -> None:
        """Validate and queue a request; `deliver` gets every output of the model (or the error) on `loop`."""
        feed = self._feed(request)
        self._batcher().enqueue(feed, loop, deliver)
        self._observe(feed)

    def _batcher(self) -> Batcher:
        if self.batcher is None:
            raise Unavailable(f"model '{self.model_name}' is still loading")
        return self.batcher

    def _feed(self, request: InferenceRequest) -> dict[str, Array]:
        """The validated model inputs of a request for the served model."""
        self.check_model(request.model_name, request.model_version)
        self.check_request_id(request.id)
        if self.generative_metadata is not None:
            raise InvalidInput(
                f"model '{self.model_name}' generates text: use POST /v2/models/{self.model_name}/generate "
                "or the OpenAI-compatible /v1/completions and /v1/chat/completions"
            )
        if self.model is None:
            raise Unavailable(f"model '{self.model_name}' is still loading")
        feed = self._validate_inputs(self.model, request)
        if request.outputs is not None:
            self._validate_outputs(request.outputs)
        return feed

    def check_request_id(self, request_id: str) -> None:
        # A character is 1 to 4 bytes of UTF-8: only an id of more than a quarter of the limit in
        # characters is encoded to measure it (most requests carry a short id or none).
        limit = self.max_request_id_bytes
        if len(request_id) * 4 > limit and (
            len(request_id) > limit or len(request_id.encode("utf-8", "surrogatepass")) > limit
        ):
            raise InvalidInput(
                f"request 'id' is {len(request_id.encode('utf-8', 'surrogatepass'))} bytes; "
                f"at most {self.max_request_id_bytes} are accepted (--max-request-id-bytes)"
            )

    def _observe(self, feed: dict[str, Array]) -> None:
        # Only accepted requests count towards drift (not those refused as overload).
        if self.drift is not None:
            self.drift.observe(feed)

    def remember(self, request: InferenceRequest, outputs: Outputs) -> None:
        """Retain an answered prediction that carries a request id, for feedback."""
        if request.id and self.feedback is not None:
            self.feedback.remember(request.id, outputs)

    def response(self, request: InferenceRequest, outputs: Outputs) -> InferenceResponse:
        self.remember(request, outputs)
        if request.outputs is None:
            tensors = [
                OutputTensor(name, spec.datatype, outputs[name]) for name, spec in self._outputs.items()
            ]
        else:
            tensors = [
                OutputTensor(wanted.name, self._outputs[wanted.name].datatype, outputs[wanted.name])
                for wanted in request.outputs
            ]
        return InferenceResponse(self.model_name, self.model_version, tensors, request.id)

    def record_feedback(self, name: str, version: str, document: Any) -> dict[str, Any]:
        """Score a retained prediction against ground truth (see feedback.py); the answer's body."""
        self.check_model(name, version)
        if self.model is None:
            raise Unavailable(f"model '{name}' is still loading; it takes feedback once it is ready")
        if self.feedback is None:
            raise NotFound(f"model '{name}' takes no feedback: this server runs with --feedback-capacity 0")
        request_id, truth = parse_feedback(document, name)
        self.check_request_id(request_id)
        verdict = self.feedback.score(request_id, truth)
        return {
            "model": name,
            "id": request_id,
            "samples": verdict.rows,
            "correct": verdict.correct,
            "windowAccuracy": verdict.window_accuracy,
            "windowSamples": self.feedback.window_samples,
        }

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        outputs = await self.submit(request, asyncio.get_running_loop())
        return self.response(request, outputs)

    def _validate_inputs(self, model: Model, request: InferenceRequest) -> dict[str, Array]:
        given = {tensor.name: tensor for tensor in request.inputs}
        if len(given) != len(request.inputs):
            names = [tensor.name for tensor in request.inputs]
            duplicated = sorted({name for name in names if names.count(name) > 1})
            raise InvalidInput(
                f"model '{self.model_name}': input(s) {', '.join(duplicated)} given more than once"
            )
        feed: dict[str, Array] = {}
        for spec in self._inputs:
            tensor = given.get(spec.name)
            if tensor is None:
                raise InvalidInput(
                    f"model '{self.model_name}' needs input '{spec.name}' ({spec.describe()}); "
                    f"the request has: {', '.join(given) or 'no inputs'}"
                )
            shape = tensor.array.shape
            if tensor.datatype != spec.datatype:
                raise InvalidInput(
                    f"model '{self.model_name}' input '{spec.name}' expects {spec.describe()}; "
                    f"got {tensor.datatype} with shape {list(shape)}"
                )
            if len(shape) != len(spec.shape) or any(
                shape[axis] != size for axis, size in self._fixed_dims[spec.name]
            ):
                raise InvalidInput(
                    f"model '{self.model_name}' input '{spec.name}' expects {spec.describe()}; "
                    f"got {tensor.datatype} with shape {list(shape)}"
                )
            feed[spec.name] = model.adapt_input(spec, tensor.array)
        for dim_name, pairs in self._shared_dims.items():
            sizes = {given[input_name].array.shape[axis] for input_name, axis in pairs}
            if len(sizes) > 1:
                described = ", ".join(
                    f"'{input_name}' has {given[input_name].array.shape[axis]} (axis {axis})"
                    for input_name, axis in pairs
                )
                raise InvalidInput(
                    f"model '{self.model_name}': inputs disagree on dimension '{dim_name}', which must "
                    f"be the same size in each: {described}"
                )
        if len(given) > len(feed):
            extra = [name for name in given if name not in self._input_names]
            raise InvalidInput(
                f"model '{self.model_name}' has no input(s) {', '.join(map(repr, extra))}; "
                f"its inputs are: {', '.join(spec.name for spec in self._inputs)}"
            )
        return feed

    def _validate_outputs(self, requested: list[RequestedOutput]) -> None:
        for wanted in requested:
            if wanted.name not in self._outputs:
                raise InvalidInput(
                    f"model '{self.model_name}' has no output '{wanted.name}'; "
                    f"its outputs are: {', '.join(self._outputs)}"
                )
