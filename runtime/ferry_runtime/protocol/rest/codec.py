"""REST bodies <-> InferenceRequest/InferenceResponse: JSON, plus Triton's binary tensor data extension.

Binary extension (as Triton's clients use it): the body is a JSON header of `Inference-Header-Content-Length`
bytes followed by raw tensors. An input with `parameters.binary_data_size` takes its bytes from there, in
input order. An output is returned binary when it asks for `parameters.binary_data` or the request sets
`parameters.binary_data_output`; the response then carries the same header and layout.
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from ferry_runtime.batching import Outputs
from ferry_runtime.datatypes import (
    NUMPY_DTYPES,
    check_datatype,
    decode_raw,
    element_count,
    encode_raw,
    parse_shape,
)
from ferry_runtime.errors import InvalidInput
from ferry_runtime.inference import (
    InferenceRequest,
    InputTensor,
    Parameters,
    RequestedOutput,
)
from ferry_runtime.model import Array, TensorSpec

_SERIALIZE_NUMPY = orjson.OPT_SERIALIZE_NUMPY


# Longest JSON header of a binary request whose layout is remembered, and how many layouts.
_LAYOUT_HEADER_LIMIT = 4096
_LAYOUT_CACHE_SIZE = 64


@dataclass(frozen=True, slots=True)
class _BinaryInput:
    name: str
    datatype: str
    shape: tuple[int, ...]
    size: int
    # None for BYTES, whose elements are length-prefixed.
    dtype: np.dtype[np.generic] | None


@dataclass(frozen=True, slots=True)
class _BinaryLayout:
    """A decoded binary request minus its tensor bytes: what its (byte-identical) JSON header says."""

    inputs: tuple[_BinaryInput, ...]
    binary_size: int
    outputs: list[RequestedOutput] | None
    id: str
    parameters: Parameters


class RequestDecoder:
    """Decodes REST inference bodies for one server.

    A client of the binary extension sends the same JSON header with every request (only the tensor
    bytes after it change), so the decoded layout of such a header is remembered, keyed by its bytes:
    a repeated binary request then costs a dict lookup plus one `frombuffer` per input, with no JSON
    parsing and no validation of what was already validated. Requests with JSON data are decoded fully.
    """

    def __init__(self) -> None:
        self._layouts: dict[bytes, _BinaryLayout] = {}

    def decode(
        self, body: bytes, json_length: int | None, model_name: str, model_version: str
    ) -> InferenceRequest:
        if json_length is None or json_length > _LAYOUT_HEADER_LIMIT:
            return decode_request(body, json_length, model_name, model_version)
        layout = self._layouts.get(body[:json_length])
        if layout is None or len(body) - json_length != layout.binary_size:
            request, layout = _decode(body, json_length, model_name, model_version)
            if layout is not None:
                if len(self._layouts) >= _LAYOUT_CACHE_SIZE:
                    self._layouts.clear()  # e.g. a client sending a new request id each time
                self._layouts[body[:json_length]] = layout
            return request
        view = memoryview(body)
        offset = json_length
        inputs: list[InputTensor] = []
        for spec in layout.inputs:
            end = offset + spec.size
            if spec.dtype is None:
                array = decode_raw(view[offset:end], spec.datatype, spec.shape, spec.name)
            else:  # the size was checked against shape and dtype when the layout was first decoded
                array = np.frombuffer(view[offset:end], dtype=spec.dtype).reshape(spec.shape)
            inputs.append(InputTensor(spec.name, spec.datatype, array))
            offset = end
        return InferenceRequest(
            model_name, model_version, inputs, layout.outputs, layout.id, layout.parameters
        )


def decode_request(
    body: bytes, json_length: int | None, model_name: str, model_version: str
) -> InferenceRequest:
    return _decode(body, json_length, model_name, model_version)[0]


def _decode(
    body: bytes, json_length: int | None, model_name: str, model_version: str
) -> tuple[InferenceRequest, _BinaryLayout | None]:
    """The request and, when all its tensors are binary, its layout."""
    if json_length is None:
        header_bytes: bytes | memoryview = body
        binary = memoryview(b"")
    else:
        if json_length > len(body):
            raise InvalidInput(
                f"Inference-Header-Content-Length is {json_length} but the body holds only {len(body)} bytes"
            )
        view = memoryview(body)
        header_bytes, binary = view[:json_length], view[json_length:]
    try:
        document = orjson.loads(header_bytes)
    except orjson.JSONDecodeError as error:
        raise InvalidInput(f"request body is not valid JSON: {error}") from None
    if type(document) is not dict:
        raise InvalidInput(f"request body must be a JSON object, got {type(document).__name__}")
    raw_inputs = document.get("inputs")
    if type(raw_inputs) is not list or not raw_inputs:
        raise InvalidInput("request needs an 'inputs' list with at least one input")
    offset = 0
    inputs: list[InputTensor] = []
    binary_inputs: list[_BinaryInput] = []
    for position, raw in enumerate(raw_inputs):
        if type(raw) is not dict:
            raise InvalidInput(f"inputs[{position}] must be an object with name, datatype, shape and data")
        tensor, size = _decode_input(raw, position, binary, offset)
        inputs.append(tensor)
        if size >= 0:
            offset += size
            dtype = None if tensor.datatype == "BYTES" else NUMPY_DTYPES[tensor.datatype]
            binary_inputs.append(_BinaryInput(tensor.name, tensor.datatype, tensor.array.shape, size, dtype))
    if offset != len(binary):
        raise InvalidInput(
            f"the body carries {len(binary)} bytes of binary tensor data but the inputs' binary_data_size "
            f"add up to {offset}"
        )
    raw_outputs = document.get("outputs")
    outputs = None if raw_outputs is None else _decode_outputs(raw_outputs)
    raw_parameters = document.get("parameters")
    parameters = {} if raw_parameters is None else _parameters(raw_parameters, "request")
    request_id = document.get("id", "")
    if type(request_id) is not str:
        request_id = str(request_id)
    request = InferenceRequest(model_name, model_version, inputs, outputs, request_id, parameters)
    layout = None
    if json_length is not None and len(binary_inputs) == len(inputs):
        layout = _BinaryLayout(tuple(binary_inputs), offset, outputs, request_id, parameters)
    return request, layout


def _decode_input(
    raw: dict[str, Any], position: int, binary: memoryview, offset: int
) -> tuple[InputTensor, int]:
    """The input and how many bytes of binary data it took (-1: its data was JSON)."""
    name = raw.get("name")
    if type(name) is not str or not name:
        raise InvalidInput(f"inputs[{position}] needs a 'name' string")
    datatype = check_datatype(raw.get("datatype"), name)
    shape = parse_shape(raw.get("shape"), name)
    parameters = raw.get("parameters")
    binary_size = parameters.get("binary_data_size") if type(parameters) is dict else None
    if binary_size is not None:
        if type(binary_size) is not int or binary_size < 0:
            raise InvalidInput(f"input '{name}': binary_data_size must be a non-negative integer")
        if offset + binary_size > len(binary):
            raise InvalidInput(
                f"input '{name}': binary_data_size {binary_size} runs past the end of the binary data "
                f"({len(binary) - offset} bytes left)"
            )
        array = decode_raw(binary[offset : offset + binary_size], datatype, shape, name)
        return InputTensor(name, datatype, array), binary_size
    if "data" not in raw:
        raise InvalidInput(f"input '{name}' has neither 'data' nor a binary_data_size parameter")
    return InputTensor(name, datatype, _decode_json_data(raw["data"], datatype, shape, name)), -1


def _decode_json_data(data: Any, datatype: str, shape: tuple[int, ...], name: str) -> Array:
    if not isinstance(data, list):
        data = [data]
    try:
        if datatype == "BYTES":
            array = _json_bytes(data, name)
        else:
            array = np.asarray(data, dtype=NUMPY_DTYPES[datatype])
    except (ValueError, TypeError, OverflowError) as error:
        raise InvalidInput(f"input '{name}': data cannot be read as {datatype}: {error}") from None
    count = element_count(shape)
    if array.size != count:
        raise InvalidInput(
            f"input '{name}': shape {list(shape)} needs {count} elements, data holds {array.size}"
        )
    return array.reshape(shape)


def _json_bytes(data: list[Any], name: str) -> Array:
    flat: list[Any] = []
    stack = [data]
    # Nested lists are flattened in row-major order without recursion limits.
    while stack:
        current = stack.pop()
        for index in range(len(current) - 1, -1, -1):
            element = current[index]
            if isinstance(element, list):
                stack.append(element)
            elif isinstance(element, str):
                flat.append(element)
            else:
                raise InvalidInput(f"input '{name}': BYTES data must be strings, got {element!r}")
    flat.reverse()
    array = np.empty(len(flat), dtype=np.object_)
    array[:] = flat
    return array


def _decode_outputs(raw: Any) -> list[RequestedOutput] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise InvalidInput("'outputs' must be a list of {name, parameters} objects")
    outputs: list[RequestedOutput] = []
    for position, entry in enumerate(raw):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise InvalidInput(f"outputs[{position}] needs a 'name' string")
        outputs.append(RequestedOutput(entry["name"], _parameters(entry.get("parameters"), entry["name"])))
    return outputs


def _parameters(raw: Any, owner: str) -> Parameters:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidInput(f"parameters of {owner} must be a JSON object")
    return raw


class ResponseEncoder:
    """Renders the REST response bodies of one model.

    The JSON around each tensor (model name and version, each output's name and datatype) is the same in
    every response, so it is rendered once; a response is then those bytes joined with each tensor's
    shape and data, with no intermediate document of dicts and lists.
    """

    def __init__(self, model_name: str, model_version: str, outputs: Sequence[TensorSpec]) -> None:
        self._prefix = b'{"model_name":%s,"model_version":%s,"outputs":[' % (
            orjson.dumps(model_name),
            orjson.dumps(model_version),
        )
        self._datatypes = {spec.name: spec.datatype for spec in outputs}
        self._all = tuple(self._datatypes)
        # Output name -> its entry up to the shape's value.
        self._heads = {
            spec.name: b'{"name":%s,"datatype":%s,"shape":'
            % (orjson.dumps(spec.name), orjson.dumps(spec.datatype))
            for spec in outputs
        }

    def encode(self, request: InferenceRequest, outputs: Outputs) -> tuple[bytes, int | None]:
        """The response body and, when it carries binary tensors, the length of its JSON header."""
        all_binary = bool(request.parameters.get("binary_data_output", False))
        wanted = request.outputs
        names: Sequence[str]
        if wanted is None:
            names = self._all
            binary_names: Container[str] = names if all_binary else ()
        else:
            names = [output.name for output in wanted]
            binary_names = {
                output.name for output in wanted if output.parameters.get("binary_data", all_binary)
            }
        heads = self._heads
        entries: list[bytes] = []
        chunks: list[bytes] = []
        for name in names:
            array = outputs[name]
            if name in binary_names:
                raw = encode_raw(array)
                entry = b'%s%s,"parameters":{"binary_data_size":%d}}' % (
                    heads[name],
                    orjson.dumps(array.shape),
                    len(raw),
                )
                chunks.append(raw)
            elif self._datatypes[name] == "BYTES":
                data = orjson.dumps([_text(element) for element in array.ravel().tolist()])
                entry = b'%s%s,"data":%s}' % (heads[name], orjson.dumps(array.shape), data)
            else:
                data = orjson.dumps(np.ascontiguousarray(array).reshape(-1), option=_SERIALIZE_NUMPY)
                entry = b'%s%s,"data":%s}' % (heads[name], orjson.dumps(array.shape), data)
            entries.append(entry)
        tail = b'],"id":%s}' % orjson.dumps(request.id) if request.id else b"]}"
        header = b"%s%s%s" % (self._prefix, b",".join(entries), tail)
        if not chunks:
            return header, None
        return b"".join([header, *chunks]), len(header)


def _text(element: Any) -> str:
    if isinstance(element, bytes):
        return element.decode("utf-8", errors="replace")
    return str(element)
