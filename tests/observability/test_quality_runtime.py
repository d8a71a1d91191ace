"""Model quality on the real `ferry-runtime` process: the online accuracy from feedback tracks injected label
noise, the drift score stays low on held-out data and rises on shifted inputs, and each way feedback can
miss gets its status and message. Figures come from scraping /metrics, as Prometheus would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from runtime_quality import (
    MODEL,
    REFERENCE_ACCURACY,
    infer,
    model_with_reference,
    post,
    send_and_feed_back,
    shifted,
    training_images,
    with_label_noise,
)

import runtime_models
from conftest import Runtime, start_runtime


def scrape(runtime: Runtime) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(runtime.url("/metrics"), timeout=10) as reply:
        text = reply.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    key = (name, tuple(sorted({"model": MODEL, **labels}.items())))
    assert key in samples, f"{name}{labels} not exported; have {sorted({n for n, _ in samples})}"
    return samples[key]


@pytest.fixture(scope="module")
def quality_runtime(
    digits: runtime_models.DigitsModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Runtime]:
    runtime = start_runtime(
        digits.path.parent, MODEL, tmp_path_factory.mktemp("logs"), "--accuracy-window", "400"
    )
    yield runtime
    assert runtime.stop() == 0, runtime.log()


def test_online_accuracy_tracks_injected_label_noise(
    quality_runtime: Runtime, digits: runtime_models.DigitsModel
) -> None:
    images, labels = digits.test_images[:400], digits.test_labels[:400]
    clean_rows, clean_correct = send_and_feed_back(quality_runtime, images, labels, "clean")
    clean = scrape(quality_runtime)
    clean_accuracy = metric(clean, "ferry_feedback_accuracy_ratio")
    assert clean_accuracy == pytest.approx(clean_correct / clean_rows)
    assert clean_accuracy > 0.9  # the classifier is good on held-out digits with true labels
    assert metric(clean, "ferry_feedback_window_samples") == 400

    noisy_labels = with_label_noise(labels, 0.3, seed=1)
    noisy_rows, noisy_correct = send_and_feed_back(quality_runtime, images, noisy_labels, "noisy")
    noisy = scrape(quality_runtime)
    noisy_accuracy = metric(noisy, "ferry_feedback_accuracy_ratio")
    # The window now holds only the noisy phase: 30% wrong labels cost about 30% of the accuracy.
    assert noisy_accuracy == pytest.approx(noisy_correct / noisy_rows)
    assert noisy_accuracy == pytest.approx(clean_accuracy * 0.7, abs=0.05)
    # The counters hold both phases, so rate-based queries across replicas add up.
    assert metric(noisy, "ferry_feedback_scored_total") == clean_rows + noisy_rows
    assert metric(noisy, "ferry_feedback_correct_total") == clean_correct + noisy_correct
    assert metric(noisy, "ferry_feedback_predictions_retained") == 0  # every prediction was scored


def test_feedback_misses_say_why(digits: runtime_models.DigitsModel, runtime_logs: Path) -> None:
    runtime = start_runtime(digits.path.parent, MODEL, runtime_logs, "--feedback-capacity", "2")
    try:
        for request_id in ("first", "second", "third"):
            infer(runtime, digits.test_images[:1], request_id)
        feedback = f"/v2/models/{MODEL}/feedback"
        label = int(digits.test_labels[0])
        status, body = post(runtime, feedback, {"id": "first", "label": label})
        assert status == 410
        assert "'first' was evicted: this replica keeps its last 2 predictions" in body["error"]
        status, body = post(runtime, feedback, {"id": "nobody", "label": label})
        assert status == 404
        assert "no prediction with request id 'nobody' on this replica" in body["error"]
        assert post(runtime, feedback, {"id": "third", "label": label})[0] == 200
        status, body = post(runtime, feedback, {"id": "third", "label": label})
        assert status == 409
        assert "already got feedback" in body["error"]
        status, body = post(runtime, feedback, {"id": "second", "label": [1, 2]})
        assert status == 400
        assert "2 label(s) given; the prediction has 1 row(s)" in body["error"]
        status, body = post(runtime, "/v2/models/other/feedback", {"id": "second", "label": 1})
        assert status == 404
        assert "unknown model 'other'" in body["error"]
        samples = scrape(runtime)
        for reason, count in {"evicted": 1, "unknown": 1, "scored": 1, "invalid": 1}.items():
            assert metric(samples, "ferry_feedback_rejected_total", reason=reason) == count
    finally:
        assert runtime.stop() == 0, runtime.log()


def test_drift_score_low_in_distribution_and_high_on_shifted_inputs(
    digits: runtime_models.DigitsModel, runtime_logs: Path
) -> None:
    model_dir = model_with_reference(digits, runtime_logs / "model")
    runtime = start_runtime(
        model_dir, MODEL, runtime_logs, "--drift-window-rows", "400", "--drift-sample-every", "1"
    )
    try:
        held_out = digits.test_images[:400]
        for start in range(0, 400, 8):
            infer(runtime, held_out[start : start + 8], f"in-{start}")
        steady = scrape(runtime)
        assert metric(steady, "ferry_input_drift_window_rows", input="input") == 400
        in_distribution = metric(steady, "ferry_input_drift_psi", input="input")
        assert in_distribution < 0.1
        assert metric(steady, "ferry_model_reference_accuracy_ratio") == pytest.approx(REFERENCE_ACCURACY)

        shifted_images = shifted(held_out)
        for start in range(0, 400, 8):
            infer(runtime, shifted_images[start : start + 8], f"shifted-{start}")
        drifted = metric(scrape(runtime), "ferry_input_drift_psi", input="input")
        assert drifted > 0.25
        assert drifted > 5 * in_distribution
    finally:
        assert runtime.stop() == 0, runtime.log()


@pytest.mark.slow
def test_reference_from_the_real_optimizer_is_served(
    digits: runtime_models.DigitsModel, runtime_logs: Path
) -> None:
    """ferry-optimize with data writes reference.json beside model.onnx; serving that directory exports the
    optimizer's accuracy and scores drift against its data."""
    x_train, y_train = training_images()
    data = runtime_logs / "digits.npz"
    np.savez(data, x=x_train, y=y_train)
    spec = runtime_logs / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "graph": "basic",
                # --data gives the file; the spec says how many samples to read (all of them).
                "data": {"uri": "placeholder", "samples": len(x_train)},
                "validate": {"metric": "accuracy", "maxDrop": 0.01},
            }
        )
    )
    output = runtime_logs / "artifact"
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("ferry-optimize")),
            *("--model", f"file://{digits.path}", "--format", "onnx", "--spec", str(spec)),
            *("--data", f"file://{data}", "--output", f"file://{output}"),
            *("--termination-log", str(runtime_logs / "termination"), "--runs", "3"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((output / "report.json").read_text())
    assert report["passed"]
    assert report["data"]["reference"]["file"] == "reference.json"
    assert report["data"]["reference"]["samples"] == len(x_train)
    chosen = next(c for c in report["candidates"] if c["name"] == report["chosen"])
    runtime = start_runtime(
        output, MODEL, runtime_logs, "--drift-window-rows", "200", "--drift-sample-every", "1"
    )
    try:
        for start in range(0, 200, 10):
            infer(runtime, digits.test_images[start : start + 10], f"r-{start}")
        samples = scrape(runtime)
        assert metric(samples, "ferry_model_reference_accuracy_ratio") == pytest.approx(
            chosen["measurement"]["metric"]
        )
        assert metric(samples, "ferry_input_drift_psi", input="input") < 0.1
    finally:
        assert runtime.stop() == 0, runtime.log()
