"""TensorFlow-side operations: load Keras, SavedModel and TFLite models, run them, convert them to ONNX,
export TFLite.

Imported only when the source model is not ONNX or a TFLite export is asked for, so an ONNX-only pipeline
never pays TensorFlow's import time. Keras 3 models are converted through a traced tf.function
(tf2onnx's `from_keras` does not support Keras 3).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
import tf2onnx

from ferry_optimizer.errors import InputError, StepError
from ferry_optimizer.onnxtools import Feeds, rename_outputs

OPSET = 17


def load_keras(path: Path) -> keras.Model:
    if path.suffix not in {".keras", ".h5"}:
        raise InputError(
            "--model", "a Keras model file ending in .keras or .h5 for --format keras", path.name
        )
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as error:  # Keras raises ValueError, OSError and others for unreadable files
        raise InputError(
            "--model", "a Keras model that keras.models.load_model can read", f"{path.name}: {error}"
        ) from error


def input_names(model: keras.Model) -> list[str]:
    return [str(tensor.name) for tensor in model.inputs]


def output_names(model: keras.Model) -> list[str]:
    """The name of the layer producing each output (Keras 3 Sequential models have no output_names)."""
    return [str(tensor._keras_history.operation.name) for tensor in model.outputs]


def keras_to_onnx(model: keras.Model, target: Path, names: Sequence[str] | None = None) -> None:
    """Convert through a traced tf.function; outputs get `names` (default: the model's output names)."""
    signature = [tf.TensorSpec(t.shape, t.dtype, name=str(t.name)) for t in model.inputs]

    @tf.function(input_signature=signature)  # type: ignore[untyped-decorator]
    def serve(*args: tf.Tensor) -> Any:
        return model(list(args) if len(args) > 1 else args[0], training=False)

    try:
        tf2onnx.convert.from_function(serve, input_signature=signature, opset=OPSET, output_path=str(target))
    except Exception as error:  # tf2onnx raises bare Exceptions for unsupported ops
        raise StepError(f"tf2onnx could not convert the Keras model: {error}") from error
    rename_outputs(target, list(names) if names is not None else output_names(model))


def _serving_signature(directory: Path) -> Any:
    try:
        loaded = tf.saved_model.load(str(directory))
    except Exception as error:  # TensorFlow raises OSError, ValueError and its own errors here
        raise InputError("--model", "a TensorFlow SavedModel directory", f"{directory}: {error}") from error
    signatures = getattr(loaded, "signatures", {})
    if "serving_default" not in signatures:
        raise InputError("--model", "a SavedModel with a serving_default signature", sorted(signatures))
    # The loaded object owns the variables; keep it alive as long as the signature is used.
    function = signatures["serving_default"]
    function._ferry_owner = loaded
    return function


def saved_model_to_onnx(directory: Path, target: Path) -> None:
    function = _serving_signature(directory)
    kwargs: dict[str, tf.TensorSpec] = function.structured_input_signature[1]
    names = sorted(kwargs)
    outputs = sorted(function.structured_outputs)
    signature = [tf.TensorSpec(kwargs[n].shape, kwargs[n].dtype, name=n) for n in names]

    @tf.function(input_signature=signature)  # type: ignore[untyped-decorator]
    def serve(*args: tf.Tensor) -> Any:
        result = function(**dict(zip(names, args, strict=True)))
        return [result[name] for name in outputs]

    try:
        tf2onnx.convert.from_function(serve, input_signature=signature, opset=OPSET, output_path=str(target))
    except Exception as error:  # tf2onnx raises bare Exceptions for unsupported ops
        raise StepError(f"tf2onnx could not convert the SavedModel: {error}") from error
    rename_outputs(target, outputs)


def tflite_to_onnx(path: Path, target: Path) -> None:
    try:
        tf2onnx.convert.from_tflite(str(path), opset=OPSET, output_path=str(target))
    except Exception as error:  # tf2onnx raises bare Exceptions for unsupported ops
        raise StepError(f"tf2onnx could not convert the TFLite model: {error}") from error


def predict_keras(model: keras.Model, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    args = [feeds[name] for name in input_names(model)]
    result = model.predict(args if len(args) > 1 else args[0], verbose=0, batch_size=256)
    return [np.asarray(r) for r in (result if isinstance(result, list | tuple) else [result])]


def predict_saved_model(directory: Path, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    function = _serving_signature(directory)
    result = function(**{name: tf.constant(array) for name, array in feeds.items()})
    return [np.asarray(result[name]) for name in sorted(result)]


def predict_tflite(path: Path, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Run a TFLite model one sample at a time (TFLite models usually fix the batch dimension to 1)."""
    with warnings.catch_warnings():
        # tf.lite.Interpreter warns it moves to ai_edge_litert; it is what tensorflow-cpu ships today.
        warnings.simplefilter("ignore", UserWarning)
        interpreter = tf.lite.Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    inputs = interpreter.get_input_details()
    outputs = interpreter.get_output_details()
    by_name = _match_tflite_inputs([detail["name"] for detail in inputs], list(feeds))
    count = len(next(iter(feeds.values())))
    results: list[list[np.ndarray]] = [[] for _ in outputs]
    for index in range(count):
        for detail in inputs:
            sample = feeds[by_name[detail["name"]]][index : index + 1]
            interpreter.set_tensor(detail["index"], _to_tflite(sample, detail))
        interpreter.invoke()
        for position, detail in enumerate(outputs):
            results[position].append(_from_tflite(interpreter.get_tensor(detail["index"]), detail))
    return [np.concatenate(r) for r in results]


def _match_tflite_inputs(tflite_names: Sequence[str], feed_names: Sequence[str]) -> dict[str, str]:
    if len(tflite_names) == 1 and len(feed_names) == 1:
        return {tflite_names[0]: feed_names[0]}
    matched = {}
    for tflite_name in tflite_names:
        candidates = [f for f in feed_names if f == tflite_name or f in tflite_name or tflite_name in f]
        if len(candidates) != 1:
            raise StepError(f"cannot match TFLite input {tflite_name!r} to one of {list(feed_names)}")
        matched[tflite_name] = candidates[0]
    return matched


def _to_tflite(sample: np.ndarray, detail: Mapping[str, Any]) -> np.ndarray:
    dtype = detail["dtype"]
    scale, zero = detail.get("quantization", (0.0, 0))
    if np.issubdtype(dtype, np.integer) and scale:
        return np.asarray(np.round(sample / scale + zero), dtype=dtype)
    return np.asarray(sample, dtype=dtype)


def _from_tflite(value: np.ndarray, detail: Mapping[str, Any]) -> np.ndarray:
    scale, zero = detail.get("quantization", (0.0, 0))
    if np.issubdtype(value.dtype, np.integer) and scale:
        return np.asarray((value.astype(np.float32) - zero) * scale, dtype=np.float32)
    return np.asarray(value)


def export_saved_model(model: keras.Model, directory: Path) -> None:
    model.export(str(directory), format="tf_saved_model", verbose=False)


def export_tflite(saved_model: Path, target: Path, representative: Feeds | None) -> None:
    """TFLite from a SavedModel; with `representative` samples, int8 quantized (float kept where needed)."""
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    if representative is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        count = min(len(next(iter(representative.values()))), 200)

        def samples() -> Any:
            for index in range(count):
                yield {name: array[index : index + 1] for name, array in representative.items()}

        converter.representative_dataset = samples
    try:
        target.write_bytes(converter.convert())
    except Exception as error:  # the converter raises ConverterError and bare Exceptions
        raise StepError(f"TFLite conversion failed: {error}") from error
