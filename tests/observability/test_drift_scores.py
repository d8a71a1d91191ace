"""Input drift: the reference the optimizer writes, read by the runtime; PSI near zero on data like the
reference and large on shifted data; bad reference files refused with the reason."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from ferry_optimizer import reference
from ferry_optimizer.onnxtools import TensorInfo
from ferry_runtime import drift

DIGITS_INPUT = TensorInfo("input", ("batch", 64), np.dtype(np.float32))


@pytest.fixture(scope="module")
def digits_images() -> np.ndarray:
    images, _ = load_digits(return_X_y=True)
    return np.asarray(images, dtype=np.float32)


def monitor_for(document: dict[str, object], window: int = 400) -> drift.DriftMonitor:
    return drift.DriftMonitor(drift.parse_reference(json.loads(json.dumps(document))), window, 1)


def test_reference_round_trips_from_optimizer_to_runtime(digits_images: np.ndarray, tmp_path: Path) -> None:
    document = reference.build([DIGITS_INPUT], {"input": digits_images[:1000]}, accuracy=0.97)
    assert document is not None
    path = reference.write(tmp_path, document)
    assert path.name == drift.REFERENCE_FILE
    loaded = drift.load_reference(path)
    assert loaded.accuracy == pytest.approx(0.97)
    assert loaded.samples == 1000
    (summary,) = loaded.inputs
    assert (summary.name, summary.pooled, summary.features) == ("input", False, 64)
    raw = document["inputs"]["input"]
    assert len(raw["mean"]) == 64
    assert raw["quantiles"]["probabilities"] == list(reference.QUANTILES)
    # Bin shares are those of the reference data itself.
    for edges, shares in zip(summary.edges, summary.fractions, strict=True):
        assert shares.sum() == pytest.approx(1.0)
        assert np.all(np.diff(edges) > 0)


def test_psi_is_small_in_distribution_and_large_when_shifted(digits_images: np.ndarray) -> None:
    document = reference.build([DIGITS_INPUT], {"input": digits_images[:1000]}, accuracy=None)
    assert document is not None
    held_out = digits_images[1000:1400]
    same = monitor_for(document)
    same.observe({"input": held_out})
    shifted = monitor_for(document)
    shifted.observe({"input": np.clip(held_out * 0.5 + 4.0, 0, 16)})
    noisy = monitor_for(document)
    noisy.observe({"input": held_out + np.random.default_rng(0).normal(0, 4, held_out.shape)})
    in_distribution, rows = same.scores()["input"]
    assert rows == 400
    assert in_distribution < 0.1
    assert shifted.scores()["input"][0] > 0.25
    assert noisy.scores()["input"][0] > 0.25


def test_the_window_keeps_only_recent_rows(digits_images: np.ndarray) -> None:
    document = reference.build([DIGITS_INPUT], {"input": digits_images[:1000]}, accuracy=None)
    assert document is not None
    monitor = monitor_for(document, window=100)
    for row in np.clip(digits_images[1000:1300] * 0.5 + 4.0, 0, 16):
        monitor.observe({"input": row[None, :]})
    assert monitor.scores()["input"][0] > 0.25
    for row in digits_images[1300:1500]:
        monitor.observe({"input": row[None, :]})
    score, rows = monitor.scores()["input"]
    assert rows == 100
    assert score < 0.2  # the shifted rows have left the window


def test_sampling_takes_one_request_in_n(digits_images: np.ndarray) -> None:
    document = reference.build([DIGITS_INPUT], {"input": digits_images[:500]}, accuracy=None)
    assert document is not None
    monitor = drift.DriftMonitor(drift.parse_reference(document), 1000, 4)
    for row in digits_images[:100]:
        monitor.observe({"input": row[None, :]})
    assert monitor.scores()["input"][1] == 25


def test_token_ids_are_pooled() -> None:
    tokens = TensorInfo("input_ids", ("batch", "sequence"), np.dtype(np.int64))
    ids = np.random.default_rng(0).integers(100, 3000, size=(64, 128))
    document = reference.build([tokens], {"input_ids": ids}, accuracy=None)
    assert document is not None
    assert document["inputs"]["input_ids"]["pooled"] is True
    monitor = drift.DriftMonitor(drift.parse_reference(document), 1000, 1)
    assert monitor.check_inputs({"input_ids": (-1, -1)}) == []
    monitor.observe({"input_ids": ids[:8, :40]})
    monitor.observe({"input_ids": ids[8:16, :100]})
    assert monitor.scores()["input_ids"][0] < 0.1
    monitor.observe({"input_ids": np.full((100, 128), 5)})
    assert monitor.scores()["input_ids"][0] > 0.25


def test_inputs_that_do_not_fit_the_model_are_dropped_with_a_reason(digits_images: np.ndarray) -> None:
    document = reference.build([DIGITS_INPUT], {"input": digits_images[:200]}, accuracy=None)
    assert document is not None
    monitor = drift.DriftMonitor(drift.parse_reference(document), 100, 1)
    assert monitor.check_inputs({"input": (-1, 32)}) == [
        "reference input 'input' has 64 features per row, the model's rows have shape [32]"
    ]
    assert monitor.inputs == []
    monitor = drift.DriftMonitor(drift.parse_reference(document), 100, 1)
    assert monitor.check_inputs({"pixels": (-1, 64)}) == [
        "reference input 'input' is not an input of the model"
    ]


def test_non_numeric_inputs_are_not_summarized() -> None:
    text = TensorInfo("text", ("batch",), np.dtype(object))
    assert reference.build([text], {"text": np.asarray(["a", "b"], dtype=object)}, accuracy=None) is None


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"version": 7, "inputs": {}}, "expected an object with version 1, got 7"),
        ({"version": 1, "inputs": {}}, "expected 'inputs' to map input names to summaries"),
        ({"version": 1, "inputs": {"x": {"pooled": False}}}, "input 'x': expected 'pooled' and 'bins'"),
        (
            {
                "version": 1,
                "inputs": {"x": {"pooled": False, "bins": {"edges": [[1, 0]], "fractions": [[0, 1, 0]]}}},
            },
            "input 'x' feature 0: expected ascending edges",
        ),
    ],
)
def test_bad_reference_files_are_refused_with_the_reason(document: object, message: str) -> None:
    with pytest.raises(drift.InvalidReference, match=message):
        drift.parse_reference(document, "reference.json")
