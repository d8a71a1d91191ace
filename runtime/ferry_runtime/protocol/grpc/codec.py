"""gRPC messages <-> InferenceRequest/InferenceResponse.

Inputs may arrive as typed `contents` or as `raw_input_contents`; outputs always leave as
`raw_output_contents` (one bytes field per output, no per-element protobuf encoding), which every v2
client reads and which is much cheaper to build than repeated fields.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ferry_runtime.datatypes import (
    DATATYPES,
    NUMPY_DTYPES,
    check_datatype,
    check_shape,
    decode_raw,
    element_count,
    encode_raw,
)
from ferry_runtime.errors import InvalidInput
from ferry_runtime.inference import (
    InferenceRequest,
    InferenceResponse,
    InputTensor,
    Parameters,
    RequestedOutput,
)
from ferry_runtime.model import Array
from ferry_runtime.protocol.grpc.generated import grpc_predict_v2_pb2 as pb

# Which InferTensorContents field carries each datatype (FP16 has none: it must travel raw).
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def decode_request(message: pb.ModelInferRequest) -> InferenceRequest:
    tensors = message.inputs
    raw_contents = message.raw_input_contents
    if raw_contents and len(raw_contents) != len(tensors):
        raise InvalidInput(
            f"raw_input_contents has {len(raw_contents)} entries for {len(tensors)} inputs; "
            f"give one per input, in order"
        )
    inputs: list[InputTensor] = []
    for position, tensor in enumerate(tensors):
        name = tensor.name
        if not name:
            raise InvalidInput(f"inputs[{position}] needs a name")
        datatype = tensor.datatype
        if datatype not in DATATYPES:
            check_datatype(datatype, name)  # raises, naming the input and the datatypes served
        shape = tuple(tensor.shape)
        check_shape(shape, name)
        if raw_contents:
            array = decode_raw(raw_contents[position], datatype, shape, name)
        else:
            array = _decode_contents(tensor.contents, datatype, shape, name)
        inputs.append(InputTensor(name, datatype, array))
    if not inputs:
        raise InvalidInput("request needs at least one input")
    requested = message.outputs
    outputs = (
        [RequestedOutput(output.name, _parameters(output.parameters)) for output in requested]
        if requested
        else None
    )
    return InferenceRequest(
        message.model_name,
        message.model_version,
        inputs,
        outputs,
        message.id,
        _parameters(message.parameters),
    )


def _decode_contents(
    contents: pb.InferTensorContents, datatype: str, shape: tuple[int, ...], name: str
) -> Array:
    field = _CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInput(f"input '{name}': {datatype} data must be sent in raw_input_contents")
    values: Any = getattr(contents, field)
    count = element_count(shape)
    if len(values) != count:
        raise InvalidInput(
            f"input '{name}': shape {list(shape)} needs {count} elements, {field} holds {len(values)}"
        )
    if datatype == "BYTES":
        array = np.empty(count, dtype=np.object_)
        array[:] = list(values)
        return array.reshape(shape)
    try:
        return np.array(values, dtype=NUMPY_DTYPES[datatype]).reshape(shape)
    except OverflowError as error:
        raise InvalidInput(f"input '{name}': a value does not fit {datatype}: {error}") from None


def _parameters(parameters: Any) -> Parameters:
    if not parameters:
        return {}
    decoded: Parameters = {}
    for key, value in parameters.items():
        choice = value.WhichOneof("parameter_choice")
        if choice is not None:
            decoded[key] = getattr(value, choice)
    return decoded


def encode_response(response: InferenceResponse) -> bytes:
    """The serialized ModelInferResponse, written directly in protobuf's wire format.

    Building the message object only to serialize it costs more than the rest of a small inference's
    response path. The layout is fixed (strings, packed shapes, raw bytes) and the parts that repeat
    from call to call (model name and version, each output's name, datatype and shape) are encoded
    once; a test checks the bytes equal what protobuf itself serializes.
    """
    header = _HEADERS.get((response.model_name, response.model_version))
    if header is None:
        header = _field(0x0A, response.model_name.encode()) + _field(0x12, response.model_version.encode())
        _remember(_HEADERS, (response.model_name, response.model_version), header)
    parts = [header]
    if response.id:
        parts.append(_field(0x1A, response.id.encode()))
    raw = []
    for tensor in response.outputs:
        array = tensor.array
        key = (tensor.name, tensor.datatype, array.shape)
        described = _OUTPUTS.get(key)
        if described is None:
            shape = b"".join(map(_varint, array.shape))
            inner = _field(0x0A, tensor.name.encode()) + _field(0x12, tensor.datatype.encode())
            if shape:
                inner += _field(0x1A, shape)
            described = _field(0x2A, inner)
            _remember(_OUTPUTS, key, described)
        parts.append(described)
        raw.append(_field(0x32, encode_raw(array)))
    return b"".join(parts) + b"".join(raw)


_HEADERS: dict[tuple[str, str], bytes] = {}
_OUTPUTS: dict[tuple[str, str, tuple[int, ...]], bytes] = {}
# Distinct shapes (batch sizes) are few in practice; the bound only stops a pathological client.
_MEMO_LIMIT = 512


def _remember(memo: dict[Any, bytes], key: Any, value: bytes) -> None:
    if len(memo) >= _MEMO_LIMIT:
        memo.clear()
    memo[key] = value


def _field(tag: int, value: bytes) -> bytes:
    """A length-delimited field (tag byte = field number << 3 | 2) in protobuf's wire format."""
    if not value and tag in (0x0A, 0x12):
        return b""  # proto3 omits empty strings
    return bytes((tag,)) + _varint(len(value)) + value


def _varint(value: int) -> bytes:
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
