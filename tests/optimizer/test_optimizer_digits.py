"""The pipeline on a real classifier: a Keras MLP trained here on scikit-learn's digits, through every step.

Each test runs the pipeline once and checks what its report claims against the files it wrote.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from optimizer_cases import VALIDATION, Digits, DigitsModels

from ferry_optimizer import key, spec
from ferry_optimizer.context import Request, Settings
from ferry_optimizer.pipeline import Pipeline
from ferry_optimizer.report import Report, Step

pytestmark = pytest.mark.slow


def optimize(model: Path, fmt: str, raw: dict[str, Any], data: Path | None, output: Path) -> Report:
    parsed = spec.parse(raw)
    if data is not None:
        parsed = parsed.with_data_uri(str(data))
    request = Request(
        model=model,
        model_uri=str(model),
        format=fmt,
        spec=parsed,
        data=data,
        output=output,
        output_uri=str(output),
        settings=Settings(runs=5, warmup=1),
    )
    work = output.parent / "work"
    work.mkdir()
    return Pipeline(request, work).run()


def steps(report: Report, lineage: str, name: str) -> list[Step]:
    return [s for s in report.steps if s.lineage == lineage and s.name == name]


def candidate(report: Report, name: str) -> Any:
    return next(c for c in report.candidates if c.name == name)


def onnx_accuracy(path: Path, digits: Digits) -> float:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probabilities = session.run(None, {"pixels": digits.x[VALIDATION]})[0]
    return float(np.mean(probabilities.argmax(axis=1) == digits.y[VALIDATION]))


def tensorboard_scalars(directory: Path) -> dict[str, list[float]]:
    import tensorflow as tf

    scalars: dict[str, list[float]] = {}
    for events in sorted(directory.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append(float(tf.make_ndarray(value.tensor)))
    return scalars


def test_every_step_on_a_keras_model_and_the_gate_accepts(
    digits: Digits, digits_models: DigitsModels, tmp_path: Path
) -> None:
    raw = {
        "graph": "extended",
        "quantize": "dynamic",
        "prune": {"sparsity": 0.5, "method": "magnitude", "epochs": 4},
        "distill": {"student": {"widthFactor": 0.5}, "epochs": 30, "temperature": 2.0},
        "training": {"learningRate": 0.003, "schedule": "cosine", "batchSize": 32},
        "export": ["onnx", "tflite", "tflite-int8"],
        "data": {"uri": "unused", "samples": 1797},
        "validate": {"metric": "accuracy", "maxDrop": 0.02},
    }
    output = tmp_path / "out"
    report = optimize(digits_models.keras, "keras", raw, digits.data, output)

    assert report.metric["name"] == "accuracy"
    assert report.data["trainingSamples"] == 1348
    assert report.data["validationSamples"] == 449
    baseline = report.metric["baseline"]
    import keras

    teacher = keras.models.load_model(digits_models.keras)
    teacher_predictions = teacher.predict(digits.x[VALIDATION], verbose=0).argmax(axis=1)
    assert baseline == pytest.approx(float(np.mean(teacher_predictions == digits.y[VALIDATION])))

    # convert: the ONNX model computes what the Keras model computes.
    (convert,) = steps(report, "original", "convert")
    assert convert.details["maxAbsErrorVsSource"] < 1e-4
    assert convert.before is not None
    assert convert.after is not None
    assert convert.before.metric == pytest.approx(convert.after.metric)

    # prune (magnitude): the sparsity asked for, the same dense size, a smaller compressed size.
    (prune,) = steps(report, "pruned", "prune")
    assert prune.error is None
    assert prune.details["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert prune.before is not None
    assert prune.after is not None
    assert prune.after.size_bytes == pytest.approx(prune.before.size_bytes, rel=0.02)
    assert prune.after.compressed_bytes is not None
    assert prune.before.compressed_bytes is not None
    assert prune.after.compressed_bytes < 0.8 * prune.before.compressed_bytes
    assert [e["epoch"] for e in prune.details["epochs"]] == [1, 2, 3, 4]

    # distill: a student with about a quarter of the weights that still classifies digits.
    (distill,) = steps(report, "student", "distill")
    assert distill.details["studentWeights"] < 0.4 * distill.details["teacherWeights"]
    assert distill.after is not None
    assert distill.after.metric is not None
    assert distill.after.metric > 0.85

    # quantize + graph on each lineage; dynamic INT8 shrinks the original by more than half.
    for lineage in ("original", "pruned", "student"):
        assert len(steps(report, lineage, "quantize")) == 1
        assert len(steps(report, lineage, "graph")) == 1
    (quantize,) = steps(report, "original", "quantize")
    assert quantize.after is not None
    assert quantize.before is not None
    assert quantize.after.size_bytes < 0.5 * quantize.before.size_bytes
    assert quantize.after.metric is not None
    assert baseline - quantize.after.metric <= 0.02

    # the gate and the choice: the chosen candidate passed, and model.onnx is that candidate.
    assert report.passed
    assert report.chosen in {"optimized", "pruned", "student"}
    chosen = candidate(report, report.chosen)
    assert chosen.passed
    model = output / "model.onnx"
    assert key.file_sha256(model) == report.artifacts[0].sha256
    assert onnx_accuracy(model, digits) == pytest.approx(chosen.measurement.metric)
    for c in report.candidates:
        if c.requested and c.measurement is not None and c.passed:
            assert chosen.measurement.latency_ms <= c.measurement.latency_ms * 1.05 + 1e-9 or (
                c.measurement.latency_ms <= chosen.measurement.latency_ms * 1.05
                and chosen.measurement.size_bytes <= c.measurement.size_bytes
            )

    # TFLite exports of the chosen lineage, evaluated with the TFLite interpreter.
    formats = {a.format: a for a in report.artifacts}
    assert set(formats) == {"onnx", "tflite", "tflite-int8"}
    assert (output / "model.tflite").exists()
    assert (output / "model.int8.tflite").stat().st_size < (output / "model.tflite").stat().st_size
    for fmt in ("tflite", "tflite-int8"):
        assert formats[fmt].metric is not None
        assert baseline - formats[fmt].metric <= 0.03

    # TensorBoard: loss and accuracy per epoch for each training, and the report's figures.
    pruning_curves = tensorboard_scalars(output / "tensorboard" / "prune")
    assert len(pruning_curves["loss"]) == 4
    assert len(pruning_curves["accuracy"]) == 4
    distill_curves = tensorboard_scalars(output / "tensorboard" / "distill")
    assert len(distill_curves["loss"]) == 30
    assert distill_curves["loss"][-1] < distill_curves["loss"][0]
    figures = tensorboard_scalars(output / "tensorboard" / "report")
    assert figures[f"candidates/{report.chosen}/accuracy"] == [pytest.approx(chosen.measurement.metric)]
    assert "candidates/baseline/latency_ms" in figures


def test_static_quantization_and_structured_pruning(
    digits: Digits, digits_models: DigitsModels, tmp_path: Path
) -> None:
    raw = {
        "graph": "basic",
        "quantize": "static",
        "prune": {"sparsity": 0.5, "method": "structured", "epochs": 6},
        "training": {"learningRate": 0.003},
        "data": {"uri": "unused", "samples": 1797},
        "validate": {"metric": "accuracy", "maxDrop": 0.03},
    }
    output = tmp_path / "out"
    report = optimize(digits_models.keras, "keras", raw, digits.data, output)

    # structured: half of each hidden layer's units removed -> a narrower, smaller dense model.
    (prune,) = steps(report, "pruned", "prune")
    assert prune.error is None
    assert prune.details["kernelWeightsBefore"] == 64 * 128 + 128 * 64 + 64 * 10
    assert prune.details["kernelWeightsAfter"] == 64 * 64 + 64 * 32 + 32 * 10
    assert prune.before is not None
    assert prune.after is not None
    assert prune.after.size_bytes < 0.5 * prune.before.size_bytes
    assert prune.after.metric is not None
    assert prune.before.metric is not None
    assert prune.before.metric - prune.after.metric <= 0.03

    # static: a QDQ graph calibrated on the training samples, within the gate.
    optimized = candidate(report, "optimized")
    assert optimized.passed, optimized.reason
    (quantize,) = steps(report, "original", "quantize")
    assert quantize.after is not None
    assert quantize.after.size_bytes < 0.5 * report.candidates[0].measurement.size_bytes
    assert report.passed
    ops = {node.op_type for node in onnx.load(str(output / "model.onnx")).graph.node}
    assert "QuantizeLinear" in ops or "QLinearMatMul" in ops or "MatMulInteger" in ops, ops


def test_savedmodel_source_with_fp16(digits: Digits, digits_models: DigitsModels, tmp_path: Path) -> None:
    raw = {"graph": "disabled", "quantize": "fp16"}
    output = tmp_path / "out"
    report = optimize(digits_models.saved_model, "tensorflow", raw, digits.data, output)

    (convert,) = steps(report, "original", "convert")
    assert convert.details["maxAbsErrorVsSource"] < 1e-4
    (fp16,) = steps(report, "original", "quantize")
    assert fp16.before is not None
    assert fp16.after is not None
    assert fp16.after.size_bytes < 0.6 * fp16.before.size_bytes
    assert fp16.after.metric == pytest.approx(fp16.before.metric, abs=0.01)
    assert any("helps GPUs" in note or "GPUs" in note for note in fp16.notes + report.notes)
    # No validate block: no gate, the requested candidate is written.
    assert report.metric["gate"] is False
    assert report.passed
    assert report.chosen == "optimized"
    inputs = ort.InferenceSession(str(output / "model.onnx")).get_inputs()
    assert [(i.name, i.type) for i in inputs] == [("pixels", "tensor(float)")]


def test_tflite_source_and_the_gate_rejects(
    digits: Digits, digits_models: DigitsModels, tmp_path: Path
) -> None:
    raw = {"graph": "extended", "quantize": "dynamic", "validate": {"metric": "maxAbsError", "maxDrop": 0.0}}
    output = tmp_path / "out"
    output.mkdir()
    (output / "model.onnx").write_bytes(b"left by an earlier run")
    report = optimize(digits_models.tflite, "tflite", raw, digits.data, output)

    (convert,) = steps(report, "original", "convert")
    assert convert.details["maxAbsErrorVsSource"] < 1e-4
    assert report.passed is False
    assert report.chosen is None
    rejected = candidate(report, "optimized")
    assert rejected.passed is False
    assert "> maxDrop 0" in rejected.reason
    assert "rejected by the gate" in report.reason
    assert not (output / "model.onnx").exists()
    message = report.termination_message()
    assert '"passed":false' in message
    assert '"artifact":null' in message


def test_structured_pruning_keeps_exactly_the_surviving_units() -> None:
    """A pruned CNN computes what the original computes with the removed filters' outgoing weights zeroed."""
    import keras

    from ferry_optimizer import pruning

    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [
            keras.Input(shape=(8, 8, 1), name="image"),
            keras.layers.Conv2D(8, 3, padding="same"),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(6, 3, padding="same", activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    batch_norm = model.layers[1]
    batch_norm.set_weights(
        [np.random.default_rng(1).uniform(0.5, 1.5, 8).astype(np.float32) for _ in range(4)]
    )
    x = np.random.default_rng(0).uniform(size=(16, 8, 8, 1)).astype(np.float32)

    unchanged = pruning.structured(model, 0.0, "prune")
    np.testing.assert_allclose(unchanged.model.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)

    pruned = pruning.structured(model, 0.5, "prune")
    # Replay the documented rule: keep the units with the largest L2 norm of incoming (kept) weights.
    masked = pruning.clone(model)
    conv1, conv2, dense1, dense2 = (masked.layers[i] for i in (0, 4, 6, 8))
    kernel1 = conv1.kernel.numpy()
    keep1 = np.sort(np.argsort(-np.linalg.norm(kernel1.reshape(-1, 8), axis=0))[:4])
    kernel2 = conv2.kernel.numpy()
    keep2 = np.sort(np.argsort(-np.linalg.norm(kernel2[:, :, keep1, :].reshape(-1, 6), axis=0))[:3])
    flat_keep = (np.arange(16)[:, None] * 6 + keep2[None, :]).ravel()
    kernel3 = dense1.kernel.numpy()
    keep3 = np.sort(np.argsort(-np.linalg.norm(kernel3[flat_keep], axis=0))[:8])
    # Zero what consumes a removed unit: the next layer's weights from it.
    kernel2[:, :, np.setdiff1d(np.arange(8), keep1), :] = 0
    conv2.kernel.assign(kernel2)
    kernel3[np.setdiff1d(np.arange(96), flat_keep), :] = 0
    dense1.kernel.assign(kernel3)
    kernel4 = dense2.kernel.numpy()
    kernel4[np.setdiff1d(np.arange(16), keep3), :] = 0
    dense2.kernel.assign(kernel4)

    np.testing.assert_allclose(pruned.model.predict(x, verbose=0), masked.predict(x, verbose=0), atol=1e-5)
    assert [layer.kernel.shape[-1] for layer in pruned.model.layers if hasattr(layer, "kernel")] == [
        4,
        3,
        8,
        10,
    ]


def test_models_that_are_not_a_chain_are_refused_by_name() -> None:
    import keras

    from ferry_optimizer import distillation, pruning
    from ferry_optimizer.errors import InputError

    inputs = keras.Input(shape=(4,), name="x")
    hidden = keras.layers.Dense(8, name="hidden")(inputs)
    skip = keras.layers.Add(name="skip")([hidden, keras.layers.Dense(8, name="side")(inputs)])
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(skip))
    with pytest.raises(InputError, match="layer 'skip' \\(Add\\)"):
        pruning.structured(model, 0.5, "prune")
    with pytest.raises(InputError, match="distill: expected a chain"):
        distillation.student_of(model, spec.StudentSpec())
    teacher = keras.Sequential([keras.Input(shape=(4,)), keras.layers.Dense(8), keras.layers.Dense(2)])
    with pytest.raises(InputError, match=r"distill\.student\.depth: expected at most 1"):
        distillation.student_of(teacher, spec.StudentSpec(depth=3))
