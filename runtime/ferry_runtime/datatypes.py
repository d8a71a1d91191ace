"""Tensor datatypes: Open Inference Protocol names, numpy dtypes and ONNX type strings, in one place.

BYTES tensors are numpy object arrays whose elements are `bytes` (or `str`, which ONNX Runtime accepts
for string tensors and returns); on the wire they are UTF-8 text in JSON and length-prefixed in binary.
"""

from __future__ import annotations

import struct
from typing import Final

import numpy as np
import numpy.typing as npt

from ferry_runtime.errors import InvalidInput

# Every numeric dtype is little-endian because the binary tensor extension and gRPC raw contents are.
NUMPY_DTYPES: Final[dict[str, np.dtype[np.generic]]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(np.object_),
}
DATATYPES: Final[frozenset[str]] = frozenset(NUMPY_DTYPES)

_DATATYPE_BY_KIND: Final[dict[tuple[str, int], str]] = {
    (dtype.kind, dtype.itemsize): name for name, dtype in NUMPY_DTYPES.items() if name != "BYTES"
}

# ONNX Runtime's `NodeArg.type` strings for tensors; anything else (seq, map, optional) is not a tensor.
ONNX_TENSOR_TYPES: Final[dict[str, str]] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}

_LENGTH_PREFIX = struct.Struct("<I")
# A client-declared shape is refused beyond these before any array is made: numpy allows 64 dimensions
# and sizes whose bytes fit an int64, even for an empty array (`[0, 2**62]` cannot be reshaped to).
# Real tensors are far smaller; no body or message limit admits data for 2**40 elements.
MAX_RANK: Final = 32
MAX_ELEMENTS: Final = 2**40


def datatype_of(array: npt.NDArray[np.generic]) -> str:
    """The protocol datatype of an array produced by a model."""
    dtype = array.dtype
    if dtype.kind in "OUS":
        return "BYTES"
    try:
        return _DATATYPE_BY_KIND[dtype.kind, dtype.itemsize]
    except KeyError:
        raise ValueError(f"numpy dtype {dtype} has no Open Inference Protocol datatype") from None


def element_count(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def parse_shape(value: object, input_name: str) -> tuple[int, ...]:
    """A client-declared shape: a list of non-negative integers (see `check_shape`)."""
    if isinstance(value, list | tuple):
        for dim in value:
            if type(dim) is not int or dim < 0:
                break
        else:
            shape = tuple(value)
            check_shape(shape, input_name)
            return shape
    shown = repr(value) if len(repr(value)) <= 200 else repr(value)[:200] + "..."
    raise InvalidInput(f"input '{input_name}': shape must be a list of non-negative integers, got {shown}")


def check_shape(shape: tuple[int, ...], input_name: str) -> None:
    """Refuse a shape no tensor can have: a negative dimension, more than MAX_RANK dimensions, or more
    than MAX_ELEMENTS elements along its non-empty dimensions (a 0 counts as 1 there)."""
    if len(shape) > MAX_RANK:
        raise InvalidInput(
            f"input '{input_name}': shape has {len(shape)} dimensions; at most {MAX_RANK} are supported"
        )
    span = 1
    for dim in shape:
        if dim < 0:
            raise InvalidInput(
                f"input '{input_name}': shape must be a list of non-negative integers, got {list(shape)}"
            )
        span *= dim or 1
    if span > MAX_ELEMENTS:
        raise InvalidInput(
            f"input '{input_name}': shape {list(shape)} is too large: its non-zero dimensions multiply "
            f"to {span} elements, more than the {MAX_ELEMENTS} any tensor may have"
        )


def check_datatype(value: object, input_name: str) -> str:
    if value not in DATATYPES:
        raise InvalidInput(
            f"input '{input_name}': datatype {value!r} is not one of {', '.join(sorted(DATATYPES))}"
        )
    return str(value)


def decode_raw(
    raw: bytes | memoryview, datatype: str, shape: tuple[int, ...], input_name: str
) -> npt.NDArray[np.generic]:
    """Binary tensor data (REST binary extension, gRPC raw contents) as an array, without copying."""
    count = element_count(shape)
    if datatype == "BYTES":
        return decode_bytes_elements(raw, count, input_name).reshape(shape)
    dtype = NUMPY_DTYPES[datatype]
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InvalidInput(
            f"input '{input_name}': shape {list(shape)} of {datatype} needs {expected} bytes of binary "
            f"data, got {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def decode_bytes_elements(raw: bytes | memoryview, count: int, input_name: str) -> npt.NDArray[np.object_]:
    """BYTES elements serialized as (4-byte little-endian length, bytes) pairs."""
    view = memoryview(raw)
    elements: list[bytes] = []
    offset = 0
    end = len(view)
    while offset < end:
        if offset + 4 > end:
            raise InvalidInput(f"input '{input_name}': BYTES data ends inside an element's length prefix")
        (length,) = _LENGTH_PREFIX.unpack_from(view, offset)
        offset += 4
        if offset + length > end:
            raise InvalidInput(
                f"input '{input_name}': BYTES element {len(elements)} declares {length} bytes but only "
                f"{end - offset} remain"
            )
        elements.append(bytes(view[offset : offset + length]))
        offset += length
    if len(elements) != count:
        raise InvalidInput(
            f"input '{input_name}': shape needs {count} BYTES elements, binary data holds {len(elements)}"
        )
    array = np.empty(count, dtype=np.object_)
    array[:] = elements
    return array


def encode_raw(array: npt.NDArray[np.generic]) -> bytes:
    """An output array as binary tensor data (the inverse of `decode_raw`)."""
    if array.dtype.kind in "OUS":
        parts: list[bytes] = []
        for element in array.ravel().tolist():
            data = element.encode() if isinstance(element, str) else bytes(element)
            parts.append(_LENGTH_PREFIX.pack(len(data)))
            parts.append(data)
        return b"".join(parts)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return array.tobytes()  # row-major whatever the array's memory layout
