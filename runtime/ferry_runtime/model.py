"""The model contract the data plane serves: load, predict, unload, and metadata describing the tensors.

A `Model` is synchronous and thread-safe in `predict`: the batcher calls it from worker threads so the
event loop never blocks on inference. Batching is not the model's concern (see `batching.py`).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ferry_runtime.datatypes import NUMPY_DTYPES

Array = npt.NDArray[np.generic]


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output as the protocol describes it."""

    # The tensor's name in requests and responses.
    name: str
    # Open Inference Protocol datatype (FP32, INT64, BYTES, ...).
    datatype: str
    # Dimensions; -1 marks a variable-size dimension.
    shape: tuple[int, ...]
    # The model's name for each variable-size dimension ("" when fixed or unnamed): dimensions that share
    # a name (an ONNX symbolic dimension such as "batch") must have the same size in every input.
    dim_names: tuple[str, ...] = ()

    def describe(self) -> str:
        return f"{self.datatype} with shape {list(self.shape)}"


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    # The name clients address the model by.
    name: str
    # The version this server serves (the protocol allows several; Ferry serves one).
    version: str
    # The protocol's platform string, e.g. "onnxruntime_onnx".
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


class Model(abc.ABC):
    """A servable model. `load` before `predict`; `predict` may be called from several threads."""

    @property
    @abc.abstractmethod
    def metadata(self) -> ModelMetadata:
        """Valid after `load`."""

    @property
    @abc.abstractmethod
    def batchable(self) -> bool:
        """True when every input and output has a variable first (batch) dimension."""

    @abc.abstractmethod
    def load(self) -> None: ...

    @abc.abstractmethod
    def predict(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        """Every output of the model for inputs already validated against `metadata`."""

    @abc.abstractmethod
    def unload(self) -> None: ...

    def adapt_input(self, spec: TensorSpec, array: Array) -> Array:
        """Convert a validated input into the form `predict` needs; raise InvalidInput when impossible.

        Runs on the request path before queuing, so a bad input fails alone rather than its batch.
        """
        del spec
        return array

    def warm_up(self, runs: int) -> None:
        """Run `predict` on zero-filled inputs (variable dimensions set to 1) so first requests are fast."""
        inputs: dict[str, Array] = {}
        for spec in self.metadata.inputs:
            shape = tuple(1 if dim < 0 else dim for dim in spec.shape)
            if spec.datatype == "BYTES":
                inputs[spec.name] = np.full(shape, "", dtype=np.object_)
            else:
                inputs[spec.name] = np.zeros(shape, dtype=NUMPY_DTYPES[spec.datatype])
        for _ in range(runs):
            self.predict(inputs)
