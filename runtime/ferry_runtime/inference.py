"""Transport-agnostic inference requests and responses: what the REST and gRPC codecs decode into."""

from __future__ import annotations

from dataclasses import dataclass, field

from ferry_runtime.model import Array

# Request/output parameters are JSON-like scalars (the protocol's InferParameter: bool, int, str, float).
Parameters = dict[str, bool | int | float | str]


@dataclass(slots=True)
class InputTensor:
    name: str
    # The datatype the client declared; the data plane checks it against the model.
    datatype: str
    # Already shaped as the client declared.
    array: Array


@dataclass(slots=True)
class RequestedOutput:
    name: str
    # Transport options, e.g. REST's `binary_data`.
    parameters: Parameters = field(default_factory=dict)


@dataclass(slots=True)
class InferenceRequest:
    model_name: str
    # "" = the version the server chooses.
    model_version: str
    inputs: list[InputTensor]
    # None = every output of the model.
    outputs: list[RequestedOutput] | None = None
    id: str = ""
    parameters: Parameters = field(default_factory=dict)


@dataclass(slots=True)
class OutputTensor:
    name: str
    datatype: str
    array: Array


@dataclass(slots=True)
class InferenceResponse:
    model_name: str
    model_version: str
    outputs: list[OutputTensor]
    id: str = ""
