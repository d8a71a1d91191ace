"""Client side of the runtime's quality features, shared by the tests that read the metrics from /metrics
and through a real Prometheus: predictions with request ids, feedback, label noise, and a served model
directory with drift reference data."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import runtime_models
from conftest import Runtime
from ferry_optimizer import reference
from ferry_optimizer.onnxtools import TensorInfo

MODEL = "digits"
# The accuracy the reference records (what the optimizer would have measured on its validation data).
REFERENCE_ACCURACY = 0.95


def post(runtime: Runtime, path: str, document: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        runtime.url(path), data=json.dumps(document).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def infer(runtime: Runtime, images: np.ndarray, request_id: str) -> np.ndarray:
    status, body = post(
        runtime,
        f"/v2/models/{MODEL}/infer",
        {
            "id": request_id,
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": list(images.shape),
                    "data": images.ravel().tolist(),
                }
            ],
            "outputs": [{"name": "label"}],
        },
    )
    assert status == 200, body
    assert body["id"] == request_id
    return np.asarray(body["outputs"][0]["data"])


def with_label_noise(labels: np.ndarray, share: float, seed: int) -> np.ndarray:
    """`share` of the labels replaced by a different class (exactly round(share * n) of them)."""
    rng = np.random.default_rng(seed)
    noisy = labels.copy()
    flipped = rng.choice(len(labels), size=round(share * len(labels)), replace=False)
    noisy[flipped] = (labels[flipped] + rng.integers(1, 10, size=len(flipped))) % 10
    return noisy


def send_and_feed_back(
    runtime: Runtime, images: np.ndarray, labels: np.ndarray, tag: str, rows_per_request: int = 4
) -> tuple[int, int]:
    """Predict every image (requests of several rows, each with an id), then send the labels back.
    Returns (rows scored, rows correct) as computed from the predictions the client received."""
    scored = correct = 0
    predictions = {}
    for start in range(0, len(images), rows_per_request):
        request_id = f"{tag}-{start}"
        predictions[request_id] = (
            infer(runtime, images[start : start + rows_per_request], request_id),
            start,
        )
    for request_id, (predicted, start) in predictions.items():
        truth = labels[start : start + len(predicted)]
        status, body = post(
            runtime, f"/v2/models/{MODEL}/feedback", {"id": request_id, "label": truth.tolist()}
        )
        assert status == 200, body
        hits = int(np.sum(predicted == truth))
        assert (body["samples"], body["correct"]) == (len(truth), hits)
        scored += len(truth)
        correct += hits
    return scored, correct


def training_images() -> tuple[np.ndarray, np.ndarray]:
    """The digits the served classifier was trained on (runtime_models' split)."""
    images, labels = load_digits(return_X_y=True)
    x_train, _, y_train, _ = train_test_split(
        images.astype(np.float32), labels, test_size=0.25, random_state=0
    )
    return x_train, y_train


def model_with_reference(digits: runtime_models.DigitsModel, model_dir: Path) -> Path:
    """`model_dir` with the digits model and drift reference data from its training images."""
    model_dir.mkdir()
    shutil.copyfile(digits.path, model_dir / "model.onnx")
    x_train, _ = training_images()
    document = reference.build(
        [TensorInfo("input", ("batch", 64), np.dtype(np.float32))], {"input": x_train}, REFERENCE_ACCURACY
    )
    assert document is not None
    reference.write(model_dir, document)
    return model_dir


def shifted(images: np.ndarray) -> np.ndarray:
    """The same digits, fainter and on a brighter background: a sensor or preprocessing change."""
    return np.clip(images * 0.6 + 3.0, 0, 16).astype(np.float32)
