"""The feedback store: matching by request id within bounds (count and age, on a fake clock), the verdicts,
and the errors a client gets for each way feedback can miss."""

from __future__ import annotations

import numpy as np
import pytest

from ferry_runtime.errors import Conflict, Gone, InvalidInput, NotFound
from ferry_runtime.feedback import (
    MAX_RETAINED_BYTES,
    SHARED_BATCH_BYTES,
    FeedbackStore,
    parse_feedback,
    predicted_classes,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def digits_outputs(labels: list[int]) -> dict[str, np.ndarray]:
    """What the digits model answers: a class id per row and the probabilities."""
    probabilities = np.full((len(labels), 10), 0.01, dtype=np.float32)
    probabilities[np.arange(len(labels)), labels] = 0.91
    return {"label": np.asarray(labels, dtype=np.int64), "probabilities": probabilities}


def store(clock: FakeClock | None = None, capacity: int = 8, window: int = 4) -> FeedbackStore:
    return FeedbackStore(
        "digits",
        ["label", "probabilities"],
        capacity=capacity,
        ttl_seconds=60,
        accuracy_window=window,
        clock=clock or FakeClock(),
    )


def test_labels_score_rows_and_feed_counters_and_window() -> None:
    feedback = store(window=4)
    feedback.remember("a", digits_outputs([3, 5, 7]))
    verdict = feedback.score("a", parse_feedback({"id": "a", "label": [3, 5, 1]}, "digits")[1])
    assert (verdict.rows, verdict.correct) == (3, 2)
    assert verdict.window_accuracy == pytest.approx(2 / 3)
    feedback.remember("b", digits_outputs([2, 2]))
    feedback.score("b", parse_feedback({"id": "b", "label": [0, 0]}, "digits")[1])
    # The window holds the last 4 rows: [5 ok, 1 wrong, 0 wrong, 0 wrong].
    assert feedback.window_samples == 4
    assert feedback.window_accuracy == pytest.approx(1 / 4)
    assert (feedback.scored_rows, feedback.correct_rows) == (5, 2)


def test_labels_compare_with_a_named_output_by_argmax() -> None:
    feedback = store()
    outputs = digits_outputs([4])
    outputs["label"] = np.asarray([9], dtype=np.int64)  # the two outputs disagree on purpose
    feedback.remember("a", outputs)
    truth = parse_feedback({"id": "a", "label": 4, "output": "probabilities"}, "digits")[1]
    assert feedback.score("a", truth).correct == 1


def test_expected_outputs_match_within_tolerance() -> None:
    feedback = store()
    feedback.remember("a", digits_outputs([1, 2]))
    expected = digits_outputs([1, 2])["probabilities"] + 0.004
    expected[1, 0] += 0.5  # the second row is off
    document = {"id": "a", "label": {"outputs": {"probabilities": expected.tolist()}, "tolerance": 0.01}}
    verdict = feedback.score("a", parse_feedback(document, "digits")[1])
    assert (verdict.rows, verdict.correct) == (2, 1)


def test_unknown_evicted_expired_and_repeated_ids_are_told_apart() -> None:
    clock = FakeClock()
    feedback = store(clock, capacity=2)
    truth = parse_feedback({"id": "x", "label": 1}, "digits")[1]
    with pytest.raises(NotFound, match="no prediction with request id 'never' on this replica"):
        feedback.score("never", truth)
    for request_id in ("old", "mid", "new"):
        feedback.remember(request_id, digits_outputs([1]))
    with pytest.raises(Gone, match="'old' was evicted: this replica keeps its last 2 predictions"):
        feedback.score("old", truth)
    clock.now += 61
    with pytest.raises(Gone, match="'mid' is older than the feedback window of 60 s"):
        feedback.score("mid", truth)
    clock.now -= 61
    feedback.remember("fresh", digits_outputs([1]))
    assert feedback.score("fresh", truth).correct == 1
    with pytest.raises(Conflict, match="'fresh' already got feedback; each prediction is scored once"):
        feedback.score("fresh", truth)
    assert feedback.rejected == {"unknown": 1, "evicted": 1, "expired": 1, "scored": 1, "invalid": 0}


def test_memory_stays_bounded_by_capacity() -> None:
    clock = FakeClock()
    feedback = store(clock, capacity=16)
    for index in range(1000):
        feedback.remember(f"id-{index}", digits_outputs([index % 10]))
    assert feedback.retained == 16
    # Tombstones are bounded too: the oldest ids fall out of them and become unknown.
    with pytest.raises(NotFound):
        feedback.score("id-0", parse_feedback({"id": "id-0", "label": 0}, "digits")[1])
    # Expired predictions are swept while new ones arrive, without waiting for feedback.
    clock.now += 3600
    for index in range(64):
        feedback.remember(f"late-{index}", digits_outputs([0]))
    assert feedback.retained == 16


def test_views_into_large_batches_are_copied_and_large_outputs_not_kept() -> None:
    feedback = store()
    batch = np.zeros((64, 100), dtype=np.float32)  # 25.6 KB: larger than SHARED_BATCH_BYTES
    assert batch.nbytes > SHARED_BATCH_BYTES
    feedback.remember("a", {"label": np.zeros(1, dtype=np.int64), "probabilities": batch[5:6]})
    kept = feedback._predictions["a"][1]["probabilities"]
    assert kept.base is None
    assert kept.shape == (1, 100)
    embedding = np.zeros((1, MAX_RETAINED_BYTES // 4 + 1), dtype=np.float32)
    feedback.remember("b", {"label": np.zeros(1, dtype=np.int64), "probabilities": embedding})
    truth = parse_feedback({"id": "b", "label": 0, "output": "probabilities"}, "digits")[1]
    with pytest.raises(InvalidInput, match="output 'probabilities' is not retained for feedback"):
        feedback.score("b", truth)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([1, 2], "the body must be a JSON object, got list"),
        ({"label": 1}, "'id' must be the non-empty string `id` of an inference request, got None"),
        ({"id": "a"}, "'label' is required"),
        ({"id": "a", "label": 1.5}, "'label' must be class labels"),
        ({"id": "a", "label": {"expected": 1}}, "needs 'outputs'"),
        (
            {"id": "a", "label": {"outputs": {"p": [1]}, "tolerance": -1}},
            "'label.tolerance' must be a number",
        ),
        ({"id": "a", "label": 1, "output": 3}, "'output' must be an output name, got 3"),
    ],
)
def test_malformed_feedback_names_the_field(document: object, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_feedback(document, "digits")


def test_label_count_and_unknown_outputs_are_refused_and_counted() -> None:
    feedback = store()
    feedback.remember("a", digits_outputs([1, 2]))
    with pytest.raises(
        InvalidInput, match=r"1 label\(s\) given; the prediction has 2 row\(s\) of output 'label'"
    ):
        feedback.score("a", parse_feedback({"id": "a", "label": 1}, "digits")[1])
    with pytest.raises(InvalidInput, match="has no output 'logits'; its outputs are: label, probabilities"):
        feedback.score("a", parse_feedback({"id": "a", "label": [1, 2], "output": "logits"}, "digits")[1])
    assert feedback.rejected["invalid"] == 2
    # A refused feedback does not use the prediction up.
    assert feedback.score("a", parse_feedback({"id": "a", "label": [1, 2]}, "digits")[1]).correct == 2


def test_predicted_classes_per_output_kind() -> None:
    assert predicted_classes(np.asarray([3, 1])).tolist() == [3, 1]
    assert predicted_classes(np.asarray([[0.2], [0.7]], dtype=np.float32)).tolist() == [0, 1]
    assert predicted_classes(np.asarray([[0.1, 0.9], [0.8, 0.2]])).tolist() == [1, 0]
    assert predicted_classes(np.asarray(["cat", "dog"], dtype=object)).tolist() == ["cat", "dog"]
