"""ONNX and ONNX Runtime operations of the pipeline: run, time, fuse, optimize the graph, quantize, rename.

Every latency in a report comes from `measure_latency`: one CPU session with fixed threads and the same
online graph optimization a serving pod applies, warmed up, then the median of timed runs.

External data: a model is its `.onnx` file and the data files its tensors name (ONNX's external data,
required above protobuf's 2 GiB). Every step that writes a model writes it with external data when its
source had any, into one file `<target name>.data` beside it, so steps in one work directory never share
a data file; `copy_model` moves a model and its data together, `size_bytes` counts both.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import statistics
import sys
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType
from onnxruntime.quantization import quantize_dynamic as _ort_quantize_dynamic
from onnxruntime.quantization import quantize_static as _ort_quantize_static

from ferry_optimizer.errors import StepError

Feeds = dict[str, np.ndarray]
# Models above this are written with external data (protobuf cannot hold more than 2 GiB).
EXTERNAL_DATA_ABOVE_BYTES = 1 << 30

_ORT_LEVELS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_NUMPY_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int | str | None, ...]
    # Fixed dimensions are ints; symbolic ones their name or None.
    dtype: np.dtype[Any]


@dataclass(frozen=True)
class Timing:
    latency_ms: float
    # Median of the timed runs.
    load_ms: float
    # Session creation (includes online graph optimization: what offline optimization saves at start).


def session(
    model: Path,
    threads: int = 1,
    level: str = "all",
    optimized_path: Path | None = None,
    external: bool = False,
) -> ort.InferenceSession:
    """`external`: write the optimized model's initializers to `<optimized name>.data`."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = _ORT_LEVELS[level]
    options.log_severity_level = 3
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
        if external:
            (optimized_path.parent / f"{optimized_path.name}.data").unlink(missing_ok=True)
            options.add_session_config_entry(
                "session.optimized_model_external_initializers_file_name", f"{optimized_path.name}.data"
            )
            options.add_session_config_entry(
                "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
            )
    try:
        return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # ORT raises its own untyped exception classes
        raise StepError(f"ONNX Runtime cannot load {model.name}: {error}") from error


def inputs_of(sess: ort.InferenceSession) -> list[TensorInfo]:
    return [_info(arg) for arg in sess.get_inputs()]


def outputs_of(sess: ort.InferenceSession) -> list[TensorInfo]:
    return [_info(arg) for arg in sess.get_outputs()]


def _info(arg: Any) -> TensorInfo:
    shape = tuple(d if isinstance(d, int) else (d if isinstance(d, str) else None) for d in arg.shape)
    return TensorInfo(name=arg.name, shape=shape, dtype=np.dtype(_NUMPY_TYPES.get(arg.type, np.float32)))


def batches(feeds: Mapping[str, np.ndarray], size: int) -> Iterator[Feeds]:
    count = len(next(iter(feeds.values())))
    for start in range(0, count, size):
        yield {name: array[start : start + size] for name, array in feeds.items()}


def fixed_batch(sess: ort.InferenceSession) -> int | None:
    """The batch size a model's inputs fix (e.g. 1 for a model exported with a static shape), if any."""
    for info in inputs_of(sess):
        if info.shape and isinstance(info.shape[0], int):
            return info.shape[0]
    return None


def run_all(
    sess: ort.InferenceSession, feeds: Mapping[str, np.ndarray], batch: int = 256
) -> list[np.ndarray]:
    """Every output over every sample, run in batches (or one by one for a fixed-batch model)."""
    size = fixed_batch(sess) or batch
    names = [info.name for info in outputs_of(sess)]
    parts: list[list[np.ndarray]] = [[] for _ in names]
    for chunk in batches(feeds, size):
        for index, value in enumerate(sess.run(names, chunk)):
            parts[index].append(np.asarray(value))
    return [np.concatenate(part) for part in parts]


def measure_latency(
    model: Path, feeds: Mapping[str, np.ndarray], threads: int, runs: int, warmup: int
) -> Timing:
    started = time.perf_counter()
    sess = session(model, threads=threads)
    load_ms = (time.perf_counter() - started) * 1000
    for _ in range(warmup):
        sess.run(None, dict(feeds))
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        sess.run(None, dict(feeds))
        samples.append((time.perf_counter() - started) * 1000)
    return Timing(latency_ms=statistics.median(samples), load_ms=load_ms)


def external_files(model: Path) -> list[Path]:
    """The external data files a model's tensors name (none for a self-contained .onnx file)."""
    if model.suffix != ".onnx":
        return []
    stat = model.stat()
    return [
        model.parent / location
        for location in _external_locations(str(model), stat.st_mtime_ns, stat.st_size)
    ]


@functools.lru_cache(maxsize=64)
def _external_locations(model: str, mtime_ns: int, size: int) -> tuple[str, ...]:
    """Parsed once per version of a file (keyed by its mtime and size): every measurement asks for a
    model's size, and a self-contained model's proto holds all of its weights."""
    del mtime_ns, size  # the cache key only
    proto = onnx.load(model, load_external_data=False)
    return tuple(
        sorted(
            {
                entry.value
                for tensor in _tensors(proto.graph)
                if tensor.data_location == onnx.TensorProto.EXTERNAL
                for entry in tensor.external_data
                if entry.key == "location"
            }
        )
    )


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor a graph stores: initializers and tensor attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _tensors(subgraph)


def copy_model(source: Path, target: Path) -> None:
    """Copy a model and its external data: the data into one file `<target name>.data` beside target
    (its tensors' offsets unchanged when the source kept them in one file), the graph pointing at it."""
    files = external_files(source)
    if not files:
        shutil.copyfile(source, target)
        return
    proto = onnx.load(str(source), load_external_data=False)
    if len(files) == 1:
        data = f"{target.name}.data"
        shutil.copyfile(files[0], target.parent / data)
        for tensor in _tensors(proto.graph):
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = data
    else:
        for file in files:
            shutil.copyfile(file, target.parent / file.name)
    onnx.save_model(proto, str(target))


def save_model(model: onnx.ModelProto, target: Path, external: bool) -> None:
    """Write a model, with its tensors in `<target name>.data` when `external` (or when it could not
    be one protobuf: above 2 GiB)."""
    if external or model.ByteSize() > EXTERNAL_DATA_ABOVE_BYTES:
        (target.parent / f"{target.name}.data").unlink(missing_ok=True)
        onnx.save_model(
            model,
            str(target),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=f"{target.name}.data",
        )
    else:
        onnx.save_model(model, str(target))


def size_bytes(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size + sum(file.stat().st_size for file in external_files(path))


def compressed_bytes(path: Path) -> int:
    """Size after zlib (level 6): what zeroed weights save in storage and transfer, though not in memory."""
    compressor = zlib.compressobj(6)
    total = 0
    files = (
        sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path, *external_files(path)]
    )
    for file in files:
        with file.open("rb") as stream:
            while chunk := stream.read(1 << 20):
                total += len(compressor.compress(chunk))
    return total + len(compressor.flush())


def optimize_graph(source: Path, target: Path, level: str) -> None:
    """ONNX Runtime offline graph optimization: the session writes the graph it optimized."""
    session(source, level=level, optimized_path=target, external=bool(external_files(source)))
    if not target.exists():
        raise StepError(f"ONNX Runtime wrote no optimized model at graph level {level}")


# Ops whose presence means attention is already fused: there is nothing left for the fusions to do.
_FUSED_ATTENTION = {"Attention", "MultiHeadAttention", "QAttention", "PackedAttention"}
# Ops a Softmax's input passes through between the score MatMul and the Softmax (scale, mask, bias).
_SCORE_PATH = {"Add", "Div", "Mul", "Where", "Cast", "Sub"}
# ... and between the Softmax and the MatMul with the values.
_PROBABILITY_PATH = {"Dropout", "Cast", "Identity"}


def transformer_type(model: Path) -> str | None:
    """ "bert" when the graph is a transformer encoder ONNX Runtime's fusions apply to, else None.

    The sign is unfused self-attention (a Softmax fed from a MatMul through scale/mask ops and feeding a
    MatMul) next to layer normalization (the LayerNormalization op, or its ReduceMean decomposition).
    """
    graph = onnx.load(str(model), load_external_data=False).graph
    ops = {node.op_type for node in graph.node}
    if ops & _FUSED_ATTENTION or not ({"LayerNormalization", "ReduceMean"} & ops):
        return None
    producers = {output: node for node in graph.node for output in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def fed_by_matmul(name: str, hops: int = 4) -> bool:
        node = producers.get(name)
        if node is None or hops == 0:
            return False
        if node.op_type == "MatMul":
            return True
        return node.op_type in _SCORE_PATH and any(fed_by_matmul(i, hops - 1) for i in node.input)

    def feeds_matmul(name: str, hops: int = 3) -> bool:
        for node in consumers.get(name, []):
            if node.op_type == "MatMul":
                return True
            if hops and node.op_type in _PROBABILITY_PATH and feeds_matmul(node.output[0], hops - 1):
                return True
        return False

    for node in graph.node:
        if node.op_type == "Softmax" and fed_by_matmul(node.input[0]) and feeds_matmul(node.output[0]):
            return "bert"
    return None


def fuse_transformer(source: Path, target: Path, model_type: str) -> dict[str, int]:
    """ONNX Runtime's transformer fusions (attention, layer norms, GELU, embeddings) into its fused ops.

    Run before quantization, so the quantizer sees one Attention op (QAttention) instead of its dozen
    float ops, and fewer float ops remain around the INT8 MatMuls. Heads and hidden size are detected from
    the graph. Returns the count of each fused op (those that matched).
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions(model_type)
    # Symbolic shape inference needs sympy, which Ferry does not ship; the encoder fusions match without
    # it (they then keep a few Cast and Reshape nodes shape inference would have proven useless).
    options.enable_shape_inference = False
    try:
        # The fusions print progress to stdout, which carries the CLI's report table.
        with contextlib.redirect_stdout(sys.stderr):
            fused = optimize_model(
                str(source),
                model_type=model_type,
                num_heads=0,
                hidden_size=0,
                optimization_options=options,
                opt_level=0,  # only the fusions: the graph step runs ONNX Runtime's own passes
                use_gpu=False,
            )
            counts = {op: int(n) for op, n in fused.get_fused_operator_statistics().items() if n}
            fused.save_model_to_file(str(target), use_external_data_format=bool(external_files(source)))
    except Exception as error:  # the fusions raise bare Exceptions and assertion errors
        raise StepError(f"transformer fusion ({model_type}) failed: {error}") from error
    return counts


def quantize_dynamic(source: Path, target: Path) -> None:
    # Per-channel with 7-bit weights (reduce_range): accurate on x86 CPUs without VNNI, where 8-bit
    # products saturate, and still correct on CPUs with it; the serving node's CPU is not known here.
    # DefaultTensorType: ONNX shape inference knows no types for the outputs of ONNX Runtime's fused ops
    # (com.microsoft domain); they are float in every graph the transformer fusions write.
    try:
        _ort_quantize_dynamic(
            source,
            target,
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=True,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            use_external_data_format=bool(external_files(source)),
        )
    except Exception as error:  # the quantizer raises bare Exceptions and assertion errors
        raise StepError(f"dynamic quantization failed: {error}") from error


class _Calibration(CalibrationDataReader):  # type: ignore[misc]  # untyped base class
    """Feeds calibration samples one batch at a time."""

    def __init__(self, feeds: Mapping[str, np.ndarray], batch: int) -> None:
        self._batches = iter(list(batches(feeds, batch)))

    def get_next(self) -> Feeds | None:
        return next(self._batches, None)


def quantize_static(source: Path, target: Path, feeds: Mapping[str, np.ndarray], batch: int) -> None:
    reader = _Calibration(feeds, batch)
    try:
        _ort_quantize_static(
            source,
            target,
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            use_external_data_format=bool(external_files(source)),
        )
    except Exception as error:  # the quantizer raises bare Exceptions and assertion errors
        raise StepError(f"static quantization failed: {error}") from error


def convert_fp16(source: Path, target: Path) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    # keep_io_types: inputs and outputs stay float32, so clients and the serving contract do not change.
    try:
        converted = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    except Exception as error:  # the converter raises bare Exceptions
        raise StepError(f"fp16 conversion failed: {error}") from error
    save_model(converted, target, external=bool(external_files(source)))


def rename_outputs(path: Path, names: Sequence[str]) -> None:
    """Give a converted graph's outputs the source model's output names (tf2onnx names them Identity:0)."""
    # The graph alone: external data, if any, stays where it is.
    model = onnx.load(str(path), load_external_data=False)
    if len(names) != len(model.graph.output):
        return
    renames = {out.name: new for out, new in zip(model.graph.output, names, strict=True) if out.name != new}
    if not renames:
        return
    for node in model.graph.node:
        node.output[:] = [renames.get(name, name) for name in node.output]
        node.input[:] = [renames.get(name, name) for name in node.input]
    for out in model.graph.output:
        out.name = renames.get(out.name, out.name)
    onnx.save(model, str(path))


def onnxruntime_version() -> str:
    return str(ort.__version__)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return os.uname().machine
