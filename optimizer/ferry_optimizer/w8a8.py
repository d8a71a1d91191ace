"""W8A8: a decoder's float MatMuls as int8 weights times int8 activations quantized per token at run time.

Weight-only int4/int8 (MatMulNBits) halves or quarters the bytes a decode step reads, but its CPU kernel
computes in fp32 or with int8 blocks on AVX-512 VNNI and never uses AMX: prefill and batched decode are
bound by it (on the ~113M benchmark Llama, 2.3 ms of 2 cores per prefill token). ONNX Runtime's integer
GEMM (`MatMulInteger`, MLAS QGEMM) runs u8 x s8 on AMX tiles and AVX-512/AVX VNNI, 3-4x faster at 16-128
rows on an AMX Xeon. What it lacks is a per-token scale: its dynamic quantization (`DynamicQuantizeLinear`)
takes one scale for the whole input, so one sequence's outlier would coarsen every other sequence's
activations and a reply would depend on what else is in the batch. So each MatMul `x @ W` becomes:

* W: int8 holding 7 bits (|Wq| <= 63), symmetric, one scale per output column (`W ~ Wq * ws`);
* x: per row (token), `m = max|x|`, `xq = round(127 x / m) + 128` as uint8 (`QuantizeLinear` of `x / m`
  with scale 1/127 and zero point 128 does the rounding and saturation);
* `y = MatMulIntegerToFloat(xq, Wq, 1/127, ws, 128) * m`.

Five small operators per distinct input and two per MatMul: at one row their dispatch is most of what
W8A8 adds, so none is spent that folding can save.

The integer product is exact, and every row's scale is its own, so a row's result does not depend on
the other rows: greedy decoding gives the same tokens alone or in any batch. MatMuls that share an input
(gate and up projections) share its quantization.

CPUs without VNNI (AVX2 only) run u8 x s8 with a saturating 16-bit multiply-add over pairs of products
(255 x 127 x 2 > 32767), which clipped large products there (a 0.107 relative error on the AMD EPYC
where VNNI/AMX nodes gave < 0.05). Weights therefore use 7 bits (|Wq| <= 63, ONNX Runtime's
reduce_range): 255 x 63 x 2 fits, so every CPU computes the same exact integer product.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Weight levels per side: 7 bits, so no u8 x s8 pair sum saturates 16 bits on AVX2 (see above).
WEIGHT_LEVELS = 63
PREFIX = "ferry_w8a8"


@dataclass(frozen=True)
class Rewritten:
    """What a rewrite changed: MatMuls made W8A8, and activations quantized (one per distinct input)."""

    matmuls: int
    activations: int


def quantize(model: onnx.ModelProto) -> Rewritten:
    """Rewrite, in place, every MatMul whose second input is a 2-D float initializer (weights in the
    model, external data loaded); other MatMuls (attention's, activations times activations) stay."""
    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        raise ValueError(f"W8A8 needs ONNX opset 13 or later (QuantizeLinear); the model has {opset}")
    added: list[onnx.TensorProto] = []

    def constant(name: str, value: np.ndarray) -> str:
        added.append(numpy_helper.from_array(value, f"{PREFIX}/{name}"))
        return f"{PREFIX}/{name}"

    zero_point = constant("zero_point", np.array(128, np.uint8))
    step_size = constant("step_size", np.array(1 / 127, np.float32))
    smallest = constant("smallest_magnitude", np.array(1e-30, np.float32))
    axes = constant("last_axis", np.array([-1], np.int64)) if opset >= 18 else ""
    nodes: list[onnx.NodeProto] = []
    # input name -> (quantized activation, its per-row scale)
    quantized: dict[str, tuple[str, str]] = {}
    matmuls = 0
    for node in graph.node:
        is_matmul = node.op_type == "MatMul" and node.domain in ("", "ai.onnx") and len(node.input) == 2
        weight = initializers.get(node.input[1]) if is_matmul else None
        if (
            weight is None
            or len(weight.dims) != 2
            or weight.data_type not in (TensorProto.FLOAT, TensorProto.FLOAT16)
        ):
            nodes.append(node)
            continue
        values = numpy_helper.to_array(weight).astype(np.float32)
        scales = np.maximum(np.abs(values).max(axis=0) / WEIGHT_LEVELS, 1e-12).astype(np.float32)
        integers = np.clip(np.round(values / scales), -WEIGHT_LEVELS, WEIGHT_LEVELS).astype(np.int8)
        name = f"{PREFIX}/{matmuls}"
        matmuls += 1
        source = node.input[0]
        if source not in quantized:
            step = f"{PREFIX}/activation{len(quantized)}"
            reduce_inputs = [f"{step}/abs", axes] if axes else [f"{step}/abs"]
            reduce_attributes = {"keepdims": 1} if axes else {"keepdims": 1, "axes": [-1]}
            nodes += [
                helper.make_node("Abs", [source], [f"{step}/abs"]),
                helper.make_node("ReduceMax", reduce_inputs, [f"{step}/raw_max"], **reduce_attributes),
                # An all-zero row (padding) divides by a tiny number, not by zero.
                helper.make_node("Max", [f"{step}/raw_max", smallest], [f"{step}/max"]),
                helper.make_node("Div", [source, f"{step}/max"], [f"{step}/unit"]),
                helper.make_node(
                    "QuantizeLinear", [f"{step}/unit", step_size, zero_point], [f"{step}/uint8"]
                ),
            ]
            quantized[source] = (f"{step}/uint8", f"{step}/max")
        activation, row_max = quantized[source]
        weights_name = constant(f"{matmuls - 1}/weight", integers)
        scales_name = constant(f"{matmuls - 1}/weight_scale", scales)
        nodes += [
            helper.make_node(
                "MatMulIntegerToFloat",
                [activation, weights_name, step_size, scales_name, zero_point],
                [f"{name}/columns_scaled"],
                domain="com.microsoft",
                name=f"{node.name or name}/w8a8",
            ),
            helper.make_node("Mul", [f"{name}/columns_scaled", row_max], [node.output[0]], name=node.name),
        ]
    if not matmuls:
        return Rewritten(0, 0)
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input}
    kept = [tensor for tensor in graph.initializer if tensor.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept + [tensor for tensor in added if tensor.name in used])
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return Rewritten(matmuls, len(quantized))


def quantize_folder(decoder: Path, output: Path, leave_out: tuple[str, ...] = ()) -> Rewritten:
    """An onnxruntime-genai folder whose decoder file is `decoder`, copied to `output` with the decoder
    made W8A8 (external data beside it, one file); `leave_out`: other file names not copied. Raises
    ValueError when the decoder has no float MatMul with constant weights."""
    shutil.copytree(decoder.parent, output, ignore=shutil.ignore_patterns(f"{decoder.name}*", *leave_out))
    model = onnx.load(str(decoder))
    rewritten = quantize(model)
    if not rewritten.matmuls:
        shutil.rmtree(output, ignore_errors=True)
        raise ValueError(f"{decoder.name} has no float MatMul with constant weights to quantize")
    onnx.save_model(
        model,
        str(output / decoder.name),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=f"{decoder.name}.data",
    )
    return rewritten
