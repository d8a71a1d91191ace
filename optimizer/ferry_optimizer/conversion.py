"""The first step: the source model (ONNX, Keras, SavedModel, TFLite) as an ONNX baseline, and the report
step that compares the two on the validation inputs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ferry_optimizer import onnxtools, quality
from ferry_optimizer.context import Request
from ferry_optimizer.errors import InputError
from ferry_optimizer.report import Measurement, Step

if TYPE_CHECKING:
    import keras

    from ferry_optimizer.evaluation import Evaluation


def tensorflow_models() -> Any:
    """ferry_optimizer.tfmodels, imported on first use: an ONNX source never loads TensorFlow."""
    from ferry_optimizer import tfmodels

    return tfmodels


def convert(request: Request, target: Path) -> keras.Model | None:
    """Write the source as ONNX to `target`; returns the Keras model for a Keras source (pruning and
    distillation derive from its layers), else None."""
    if request.format == "onnx":
        source = request.model
        if source.is_dir():
            found = sorted(source.glob("*.onnx"))
            if len(found) != 1:
                raise InputError(
                    "--model", "a directory with exactly one .onnx file", [p.name for p in found]
                )
            source = found[0]
        # With its external data files, if its tensors name any (a model above 2 GiB has them).
        onnxtools.copy_model(source, target)
        return None
    tfm = tensorflow_models()
    if request.format == "keras":
        model = tfm.load_keras(request.model)
        tfm.keras_to_onnx(model, target)
        return model
    if request.format == "tensorflow":
        if not request.model.is_dir():
            raise InputError("--model", "a SavedModel directory for --format tensorflow", str(request.model))
        tfm.saved_model_to_onnx(request.model, target)
        return None
    tfm.tflite_to_onnx(request.model, target)
    return None


def _source_outputs(
    request: Request, feeds: dict[str, np.ndarray], keras_model: keras.Model | None
) -> list[np.ndarray]:
    tfm = tensorflow_models()
    if keras_model is not None:
        return tfm.predict_keras(keras_model, feeds)  # type: ignore[no-any-return]
    if request.format == "tensorflow":
        return tfm.predict_saved_model(request.model, feeds)  # type: ignore[no-any-return]
    return tfm.predict_tflite(request.model, feeds)  # type: ignore[no-any-return]


def convert_step(
    request: Request,
    evaluation: Evaluation,
    baseline: Measurement,
    seconds: float,
    keras_model: keras.Model | None,
) -> Step:
    """The report's convert step: the source's metric and size before, the ONNX baseline after, and how
    far the two models' outputs are apart."""
    outputs = _source_outputs(request, evaluation.validation.inputs, keras_model)
    source_metric = evaluation.score(outputs)
    agreement = quality.score("maxAbsError", outputs, evaluation.reference)
    before = Measurement(onnxtools.size_bytes(request.model), None, None, None, source_metric)
    return Step(
        "original",
        "convert",
        f"{request.format} -> onnx",
        before,
        baseline,
        seconds,
        notes=[f"max abs difference from the source model: {agreement:.3g}"],
        details={"maxAbsErrorVsSource": agreement, "opset": 17},
    )
