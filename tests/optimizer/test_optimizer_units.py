"""Fast checks of the pieces the pipeline is built from: metrics, the gate, data files, the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import pytest

from ferry_optimizer import data, onnxtools, quality
from ferry_optimizer.errors import InputError
from ferry_optimizer.onnxtools import TensorInfo
from ferry_optimizer.report import Artifact, Candidate, Measurement, Report, Step

IMAGE = TensorInfo("pixels", (None, 64), np.dtype(np.float32))
TOKENS = [
    TensorInfo("input_ids", ("batch", "sequence"), np.dtype(np.int64)),
    TensorInfo("attention_mask", ("batch", "sequence"), np.dtype(np.int64)),
]


def test_accuracy_is_top1_against_labels() -> None:
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]], dtype=np.float32)
    reference = quality.Reference([probabilities], np.array([0, 1, 1, 1]))
    assert quality.score("accuracy", [probabilities], reference) == 0.75


def test_cosine_and_max_abs_error_compare_each_sample_with_the_reference() -> None:
    reference_output = np.array([[1.0, 0.0], [0.0, 2.0]], dtype=np.float32)
    candidate = np.array([[1.0, 1.0], [0.0, 2.5]], dtype=np.float32)
    reference = quality.Reference([reference_output], None)
    assert quality.score("cosine", [candidate], reference) == pytest.approx((1 / np.sqrt(2) + 1.0) / 2)
    assert quality.score("maxAbsError", [candidate], reference) == pytest.approx(1.0)
    # Integer outputs (MiniLM's token ids) are not compared; a float output missing is an error.
    assert quality.score("cosine", [np.array([[3, 4]]), reference_output], reference) == pytest.approx(1.0)
    with pytest.raises(InputError, match="floating-point outputs"):
        quality.score("cosine", [np.array([[1, 2]])], reference)


def test_accuracy_without_labels_names_the_metric_field() -> None:
    with pytest.raises(InputError, match=r"validate\.metric"):
        quality.score(
            "accuracy", [np.ones((2, 2), np.float32)], quality.Reference([np.ones((2, 2), np.float32)], None)
        )


@pytest.mark.parametrize(
    ("metric", "baseline", "value", "max_drop", "expected"),
    [
        ("accuracy", 0.97, 0.965, 0.005, True),
        ("accuracy", 0.97, 0.964, 0.005, False),
        ("accuracy", 0.97, 0.99, 0.0, True),
        ("cosine", 1.0, 0.995, 0.01, True),
        ("cosine", 1.0, 0.98, 0.01, False),
        ("maxAbsError", 0.0, 0.002, 0.01, True),
        ("maxAbsError", 0.0, 0.02, 0.01, False),
        ("maxAbsError", 0.0, float("nan"), 1.0, False),
    ],
)
def test_gate_direction_per_metric(
    metric: quality.MetricName, baseline: float, value: float, max_drop: float, expected: bool
) -> None:
    assert quality.passes(metric, baseline, value, max_drop) is expected


def test_npz_with_x_maps_to_the_single_input_and_reads_labels(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((10, 64), np.float64), y=np.eye(10)[np.arange(10) % 10])
    dataset = data.load(path, [IMAGE], samples=6, where="data")
    assert dataset.inputs["pixels"].dtype == np.float32
    assert len(dataset) == 6
    assert dataset.labels is not None
    assert dataset.labels.tolist() == [0, 1, 2, 3, 4, 5]


def test_npz_with_one_array_per_input_name(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, input_ids=np.ones((4, 7), np.int32), attention_mask=np.ones((4, 7), np.int32))
    dataset = data.load(path, TOKENS, samples=512, where="data")
    assert dataset.inputs["input_ids"].dtype == np.int64
    assert dataset.labels is None


@pytest.mark.parametrize(
    ("arrays", "fragment"),
    [
        ({"x": np.zeros((4, 63), np.float32)}, "shape ('N', 64)"),
        ({"images": np.zeros((4, 64), np.float32)}, "an array `x`"),
        ({"x": np.zeros((4, 64), np.float32), "y": np.zeros(3)}, "4 labels"),
        ({"x": np.zeros((4, 64), np.float32), "y": np.full(4, 0.5)}, "integer class labels"),
    ],
)
def test_bad_data_files_say_what_was_expected(
    tmp_path: Path, arrays: dict[str, np.ndarray], fragment: str
) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    with pytest.raises(InputError) as caught:
        data.load(path, [IMAGE], samples=512, where="data")
    assert fragment in str(caught.value)


def test_not_an_npz_file(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    path.write_text("x,y\n1,2\n")
    with pytest.raises(InputError, match=r"an \.npz file"):
        data.load(path, [IMAGE], samples=512, where="data")


def test_synthetic_inputs_follow_the_signature() -> None:
    dataset = data.synthetic([*TOKENS, IMAGE])
    assert dataset.source == "synthetic"
    assert dataset.inputs["input_ids"].shape == (data.SYNTHETIC_SAMPLES, data.SYNTHETIC_DIM)
    assert dataset.inputs["pixels"].shape == (data.SYNTHETIC_SAMPLES, 64)


def test_split_keeps_the_last_quarter_for_validation() -> None:
    dataset = data.Dataset({"pixels": np.arange(100, dtype=np.float32)[:, None]}, np.arange(100), "file")
    train, validation = data.split(dataset, 0.25)
    assert (len(train), len(validation)) == (75, 25)
    assert validation.inputs["pixels"][0, 0] == 75


def _report(candidates: int, reason: str) -> Report:
    measurement = Measurement(1000, 900, 1.5, 10.0, 0.97)
    report = Report(
        optimizer_version="0.1.0",
        key="k" * 64,
        source={},
        spec={},
        data={},
        metric={"name": "accuracy", "baseline": 0.97},
        measurement={},
        output_uri="pvc://artifacts/digits/abc/",
    )
    report.steps.append(Step("original", "quantize", "dynamic", measurement, measurement, 0.5, ["note"]))
    report.candidates = [
        Candidate(f"candidate-{i}", "original", ["convert"], measurement, True, True, "ok")
        for i in range(candidates)
    ]
    report.chosen, report.passed, report.reason = "candidate-0", True, reason
    report.artifacts.append(Artifact("model.onnx", "onnx", "s" * 64, 1000, 0.97))
    return report


def test_termination_message_follows_the_contract_and_stays_under_4_kib() -> None:
    message = _report(candidates=200, reason="x" * 10_000).termination_message()
    assert len(message.encode()) < 4096
    summary = json.loads(message)
    assert set(summary) == {"passed", "chosen", "reason", "key", "artifact", "metric", "candidates"}
    assert summary["artifact"] == {
        "uri": "pvc://artifacts/digits/abc/model.onnx",
        "sha256": "s" * 64,
        "sizeBytes": 1000,
    }
    assert summary["metric"] == {"name": "accuracy", "baseline": 0.97, "value": 0.97}
    assert set(summary["candidates"][0]) == {"name", "passed", "sizeBytes", "latencyMs", "metric"}


def test_table_lists_steps_and_marks_the_chosen_candidate() -> None:
    table = _report(candidates=2, reason="fastest").table()
    assert "original  quantize dynamic" in table
    assert "* candidate-0" in table
    assert "PASSED: chosen=candidate-0" in table


def _graph_file(tmp_path: Path, name: str, nodes: list[onnx.NodeProto], shapes: dict[str, list[int]]) -> Path:
    """A float graph from nodes; `shapes` holds its input ("x") and its initializers (weights)."""
    rng = np.random.default_rng(0)
    initializers = [
        onnx.numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), weight)
        for weight, shape in shapes.items()
        if weight != "x"
    ]
    graph = onnx.helper.make_graph(
        nodes,
        name,
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shapes["x"])],
        [onnx.helper.make_tensor_value_info(nodes[-1].output[0], onnx.TensorProto.FLOAT, None)],
        initializers,
    )
    path = tmp_path / f"{name}.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), str(path))
    return path


def test_self_attention_next_to_layer_norm_is_a_transformer(tmp_path: Path) -> None:
    make = onnx.helper.make_node
    attention = [
        make("LayerNormalization", ["x", "gamma", "beta"], ["normed"], axis=-1),
        make("MatMul", ["normed", "wq"], ["q"]),
        make("MatMul", ["normed", "wk"], ["k"]),
        make("MatMul", ["normed", "wv"], ["v"]),
        make("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        make("MatMul", ["q", "kt"], ["scores"]),
        make("Div", ["scores", "scale"], ["scaled"]),
        make("Softmax", ["scaled"], ["probabilities"], axis=-1),
        make("MatMul", ["probabilities", "v"], ["context"]),
    ]
    weights = {
        "x": [1, 4, 8],
        "gamma": [8],
        "beta": [8],
        "wq": [8, 8],
        "wk": [8, 8],
        "wv": [8, 8],
        "scale": [1],
    }
    assert onnxtools.transformer_type(_graph_file(tmp_path, "encoder", attention, weights)) == "bert"
    # A classifier ending in softmax has no MatMul after it; without layer norm it is no transformer either.
    classifier = [make("MatMul", ["x", "w"], ["logits"]), make("Softmax", ["logits"], ["probabilities"])]
    assert (
        onnxtools.transformer_type(_graph_file(tmp_path, "mlp", classifier, {"x": [1, 8], "w": [8, 3]}))
        is None
    )
    unnormalized = attention[1:]
    unnormalized[0] = make("MatMul", ["x", "wq"], ["q"])
    unnormalized[1] = make("MatMul", ["x", "wk"], ["k"])
    unnormalized[2] = make("MatMul", ["x", "wv"], ["v"])
    assert onnxtools.transformer_type(_graph_file(tmp_path, "bare", unnormalized, weights)) is None
