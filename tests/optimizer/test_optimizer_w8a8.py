"""W8A8 (ferry_optimizer/w8a8.py) on graphs made here: close to float, batch-invariant, shared inputs
quantized once, and what it must not touch left alone."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from ferry_optimizer import w8a8

HIDDEN, WIDE = 96, 160


def two_projections(opset: int = 21) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """x @ A and x @ B (one input, as a gate and an up projection share one), then their product with
    a third, non-constant operand: x @ A' where A' is a graph input (attention's kind of MatMul)."""
    rng = np.random.default_rng(7)
    weights = {
        "a": (rng.standard_normal((HIDDEN, WIDE)) * 0.05).astype(np.float32),
        "b": (rng.standard_normal((HIDDEN, WIDE)) * 0.05).astype(np.float32),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "a"], ["xa"], name="gate"),
        helper.make_node("MatMul", ["x", "b"], ["xb"], name="up"),
        helper.make_node("Mul", ["xa", "xb"], ["product"]),
        helper.make_node("MatMul", ["product", "other"], ["y"], name="activations_only"),
    ]
    graph = helper.make_graph(
        nodes,
        "projections",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "tokens", HIDDEN]),
            helper.make_tensor_value_info("other", TensorProto.FLOAT, [WIDE, 8]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "tokens", 8]),
            helper.make_tensor_value_info("product", TensorProto.FLOAT, ["batch", "tokens", WIDE]),
        ],
        [numpy_helper.from_array(value, name) for name, value in weights.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), weights


def run(model: onnx.ModelProto, x: np.ndarray, other: np.ndarray, output: str = "y") -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    result: np.ndarray = session.run([output], {"x": x, "other": other})[0]
    return result


@pytest.mark.parametrize("opset", [17, 21])  # ReduceMax's axes: an attribute before opset 18, an input after
def test_w8a8_stays_close_to_float_and_rewrites_only_weight_matmuls(opset: int) -> None:
    model, _ = two_projections(opset)
    rng = np.random.default_rng(1)
    # Rows of very different magnitudes: each keeps its own scale.
    x = (rng.standard_normal((2, 5, HIDDEN)) * np.geomspace(0.01, 100, 5)[None, :, None]).astype(np.float32)
    other = rng.standard_normal((WIDE, 8)).astype(np.float32)
    expected = run(model, x, other)
    quantized = onnx.ModelProto()
    quantized.CopyFrom(model)
    rewritten = w8a8.quantize(quantized)
    onnx.checker.check_model(quantized)
    assert rewritten == w8a8.Rewritten(matmuls=2, activations=1)
    operators = [node.op_type for node in quantized.graph.node]
    assert operators.count("MatMulIntegerToFloat") == 2
    assert operators.count("QuantizeLinear") == 1  # the shared input is quantized once
    assert operators.count("MatMul") == 1  # activations times activations stays float
    assert {t.name for t in quantized.graph.initializer}.isdisjoint({"a", "b"})  # no float copy kept
    actual = run(quantized, x, other)
    # Relative to each row's own magnitude (int8 keeps ~2-3 significant digits per row).
    scale = np.abs(expected).max(axis=-1, keepdims=True)
    assert float(np.max(np.abs(actual - expected) / scale)) < 0.05


def test_a_row_gets_the_same_result_alone_or_beside_an_outlier() -> None:
    model, _ = two_projections()
    w8a8.quantize(model)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 4, HIDDEN)).astype(np.float32)
    x[0, 2] *= 1000  # one sequence's outlier: with one scale per tensor it would coarsen every row
    other = rng.standard_normal((WIDE, 8)).astype(np.float32)
    # The two W8A8 projections' product, bit for bit (the float MatMul after it is not batch-invariant
    # in ONNX Runtime's own fp32 kernels, so it is not what this compares).
    together = run(model, x, other, "product")
    for row in range(4):
        alone = run(model, x[:, row : row + 1], other, "product")
        np.testing.assert_array_equal(alone[0, 0], together[0, row])


def test_an_all_zero_row_gives_zeros_not_nan() -> None:
    model, _ = two_projections()
    w8a8.quantize(model)
    x = np.zeros((1, 2, HIDDEN), np.float32)
    x[0, 1] = 1.0
    result = run(model, x, np.ones((WIDE, 8), np.float32))
    assert np.isfinite(result).all()
    assert not result[0, 0].any()


def test_a_graph_without_weight_matmuls_is_left_as_it_is() -> None:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "inputs_only",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [3, 4]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    before = model.SerializeToString()
    assert w8a8.quantize(model) == w8a8.Rewritten(0, 0)
    assert model.SerializeToString() == before


def test_an_opset_too_old_for_quantize_linear_is_refused_naming_it() -> None:
    model, _ = two_projections(opset=12)
    with pytest.raises(ValueError, match=r"opset 13 or later.*has 12"):
        w8a8.quantize(model)
