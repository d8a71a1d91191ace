"""`Model` on ONNX Runtime: session options, execution providers and output-type handling."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from ferry_runtime.datatypes import ONNX_TENSOR_TYPES
from ferry_runtime.errors import InvalidInput, ModelLoadError
from ferry_runtime.model import Array, Model, ModelMetadata, TensorSpec

log = logging.getLogger(__name__)

GRAPH_OPTIMIZATION_LEVELS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
# Preference order when providers are "auto": accelerators first, CPU always last as the fallback.
AUTO_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
# A sequence of maps (what skl2onnx's ZipMap emits for class probabilities) becomes a 2-D tensor.
_SEQ_OF_MAPS = re.compile(r"^seq\(map\((int64|string),tensor\((float|double)\)\)\)$")
_SEQ_MAP_VALUE_DTYPES: dict[str, type[np.generic]] = {"float": np.float32, "double": np.float64}


@dataclass(frozen=True, slots=True)
class OnnxModelConfig:
    # The .onnx file.
    path: Path
    name: str
    version: str
    # Threads inside one operator; 0 = ONNX Runtime's default (one per physical core).
    intra_op_threads: int = 0
    # Threads across independent operators; 0 = ONNX Runtime's default.
    inter_op_threads: int = 0
    # Execution provider names, or ("auto",) for the best available.
    execution_providers: tuple[str, ...] = ("auto",)
    # disabled | basic | extended | all.
    graph_optimization: str = "all"


def find_model_file(model_dir: Path) -> Path:
    """DIR/model.onnx; failing that, the only .onnx file in DIR (what a single-file fetch leaves)."""
    preferred = model_dir / "model.onnx"
    if preferred.is_file():
        return preferred
    if not model_dir.is_dir():
        raise ModelLoadError(f"model directory {model_dir} does not exist")
    candidates = sorted(model_dir.glob("*.onnx"))
    if len(candidates) == 1:
        return candidates[0]
    found = ", ".join(path.name for path in candidates) or "no .onnx files"
    raise ModelLoadError(f"expected {preferred}; {model_dir} holds {found}")


def resolve_providers(requested: Sequence[str]) -> list[str]:
    available = ort.get_available_providers()
    if tuple(requested) == ("auto",):
        return [name for name in AUTO_PROVIDERS if name in available]
    missing = [name for name in requested if name not in available]
    if missing:
        raise ModelLoadError(
            f"execution provider(s) {', '.join(missing)} not available in this onnxruntime build; "
            f"available: {', '.join(available)}"
        )
    return list(requested)


def _dims(shape: Sequence[Any] | None) -> tuple[int, ...]:
    # ONNX Runtime reports symbolic dimensions as strings and unknown ones as None.
    return tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in shape or ())


def _dim_names(shape: Sequence[Any] | None) -> tuple[str, ...]:
    return tuple(dim if isinstance(dim, str) else "" for dim in shape or ())


class OnnxModel(Model):
    def __init__(self, config: OnnxModelConfig) -> None:
        self.config = config
        self._session: ort.InferenceSession | None = None
        self._metadata: ModelMetadata | None = None
        self._batchable = False
        # Output name -> numpy dtype of the values, for outputs that arrive as a sequence of maps.
        self._seq_map_outputs: dict[str, type[np.generic]] = {}
        self.providers: list[str] = []

    @property
    def metadata(self) -> ModelMetadata:
        if self._metadata is None:
            raise RuntimeError(f"model '{self.config.name}' is not loaded")
        return self._metadata

    @property
    def batchable(self) -> bool:
        return self._batchable

    def load(self) -> None:
        config = self.config
        if config.graph_optimization not in GRAPH_OPTIMIZATION_LEVELS:
            raise ModelLoadError(
                f"graph optimization {config.graph_optimization!r} is not one of "
                f"{', '.join(GRAPH_OPTIMIZATION_LEVELS)}"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = config.intra_op_threads
        options.inter_op_num_threads = config.inter_op_threads
        options.graph_optimization_level = GRAPH_OPTIMIZATION_LEVELS[config.graph_optimization]
        # Spinning threads would burn the cores the event loop needs for I/O between requests.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self.providers = resolve_providers(config.execution_providers)
        try:
            session = ort.InferenceSession(str(config.path), sess_options=options, providers=self.providers)
        except Exception as error:
            raise ModelLoadError(f"ONNX Runtime cannot load {config.path}: {error}") from error
        inputs = tuple(self._input_spec(node) for node in session.get_inputs())
        outputs = tuple(self._output_spec(node) for node in session.get_outputs())
        self._session = session
        self._metadata = ModelMetadata(
            name=config.name,
            version=config.version,
            platform="onnxruntime_onnx",
            inputs=inputs,
            outputs=outputs,
        )
        self._batchable = all(spec.shape[:1] == (-1,) for spec in inputs + outputs)
        log.info(
            "loaded %s as model '%s' version %s on %s (batchable: %s)",
            config.path,
            config.name,
            config.version,
            ", ".join(self.providers),
            self._batchable,
        )

    def _input_spec(self, node: Any) -> TensorSpec:
        datatype = ONNX_TENSOR_TYPES.get(node.type)
        if datatype is None:
            raise ModelLoadError(
                f"model '{self.config.name}' input '{node.name}' has type {node.type}, which the Open "
                f"Inference Protocol cannot express; only tensor inputs can be served"
            )
        return TensorSpec(node.name, datatype, _dims(node.shape), _dim_names(node.shape))

    def _output_spec(self, node: Any) -> TensorSpec:
        datatype = ONNX_TENSOR_TYPES.get(node.type)
        if datatype is not None:
            return TensorSpec(node.name, datatype, _dims(node.shape))
        seq_of_maps = _SEQ_OF_MAPS.match(node.type.replace(" ", ""))
        if seq_of_maps:
            value_type = seq_of_maps.group(2)
            self._seq_map_outputs[node.name] = _SEQ_MAP_VALUE_DTYPES[value_type]
            return TensorSpec(node.name, "FP32" if value_type == "float" else "FP64", (-1, -1))
        raise ModelLoadError(
            f"model '{self.config.name}' output '{node.name}' has type {node.type}, which the Open "
            f"Inference Protocol cannot express; export it as a tensor (for scikit-learn classifiers "
            f"converted with skl2onnx: options={{'zipmap': False}})"
        )

    def adapt_input(self, spec: TensorSpec, array: Array) -> Array:
        # ONNX Runtime's Python binding feeds string tensors from `str` only (bytes become "b'...'").
        if spec.datatype != "BYTES":
            return array
        flat = array.ravel()
        if not any(isinstance(element, bytes) for element in flat):
            return array
        text = np.empty(flat.shape, dtype=np.object_)
        for index, element in enumerate(flat):
            try:
                text[index] = element.decode() if isinstance(element, bytes) else element
            except UnicodeDecodeError:
                raise InvalidInput(
                    f"model '{self.config.name}' input '{spec.name}': BYTES element {index} is not UTF-8 "
                    f"text, which ONNX string tensors require"
                ) from None
        return text.reshape(array.shape)

    def predict(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        session = self._session
        if session is None:
            raise RuntimeError(f"model '{self.config.name}' is not loaded")
        values = session.run(None, dict(inputs))
        outputs = {spec.name: value for spec, value in zip(self.metadata.outputs, values, strict=True)}
        for name, dtype in self._seq_map_outputs.items():
            outputs[name] = _maps_to_matrix(outputs[name], dtype)
        return outputs

    def unload(self) -> None:
        self._session = None


def _maps_to_matrix(rows: Sequence[Mapping[Any, float]], dtype: type[np.generic]) -> Array:
    # Columns in the maps' key order, which for ZipMap is the classifier's class order.
    if not rows:
        return np.zeros((0, 0), dtype=dtype)
    return np.array([list(row.values()) for row in rows], dtype=dtype)
