"""Quality metrics and the validation gate.

accuracy: top-1 accuracy of the first output against the labels `y` (higher is better).
cosine: mean over samples of the cosine similarity between a candidate's output and the reference
        (original model's) output, each sample flattened; the lowest over the floating-point outputs.
maxAbsError: the largest absolute difference from the reference over every floating-point output
        (lower is better).
perplexity, agreement: a generative model's, computed in generative_quality.py (perplexity lower is
        better, agreement higher).
A candidate passes when it is worse than the baseline by at most the budget: for accuracy, cosine and
agreement baseline - value <= maxDrop, for maxAbsError value - baseline <= maxDrop (the baseline's own
error is 0), for perplexity the relative increase (value - baseline) / baseline <= maxIncrease.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ferry_optimizer.errors import InputError
from ferry_optimizer.spec import MetricName

HIGHER_IS_BETTER: dict[MetricName, bool] = {
    "accuracy": True,
    "cosine": True,
    "maxAbsError": False,
    "perplexity": False,
    "agreement": True,
}


@dataclass(frozen=True)
class Reference:
    outputs: list[np.ndarray]
    # The baseline's outputs on the validation samples (floating-point outputs only, in model order).
    labels: np.ndarray | None


def floating(outputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [o for o in outputs if np.issubdtype(o.dtype, np.floating)]


def score(metric: MetricName, outputs: Sequence[np.ndarray], reference: Reference) -> float:
    values = floating(outputs)
    if len(values) != len(reference.outputs):
        raise InputError(
            "model outputs", f"{len(reference.outputs)} floating-point outputs like the original", len(values)
        )
    if metric == "accuracy":
        if reference.labels is None:
            raise InputError(
                "validate.metric", "cosine or maxAbsError when the data has no labels `y`", metric
            )
        predictions = values[0].reshape(len(values[0]), -1)
        return float(np.mean(predictions.argmax(axis=1) == reference.labels))
    if metric == "cosine":
        return min(_mean_cosine(value, ref) for value, ref in zip(values, reference.outputs, strict=True))
    return max(
        float(np.max(np.abs(value.astype(np.float64) - ref.astype(np.float64))))
        for value, ref in zip(values, reference.outputs, strict=True)
    )


def _mean_cosine(value: np.ndarray, reference: np.ndarray) -> float:
    a = value.reshape(len(value), -1).astype(np.float64)
    b = reference.reshape(len(reference), -1).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = np.sum(a * b, axis=1)
    # Two all-zero outputs agree perfectly; one zero and one non-zero output do not at all.
    both_zero = (np.linalg.norm(a, axis=1) == 0) & (np.linalg.norm(b, axis=1) == 0)
    cosines = np.where(both_zero, 1.0, dots / np.where(norms == 0, 1.0, norms))
    return float(np.mean(cosines))


def drop(metric: MetricName, baseline: float, value: float) -> float:
    """How much worse `value` is than `baseline` (negative: better); relative for perplexity, whose
    scale depends on the vocabulary and the text."""
    if metric == "perplexity":
        return (value - baseline) / baseline
    return baseline - value if HIGHER_IS_BETTER[metric] else value - baseline


def budget_name(metric: MetricName) -> tuple[str, str]:
    """How the gate's change and its budget read in a reason: ("drop", "maxDrop") or the increase's."""
    return ("increase", "maxIncrease") if metric == "perplexity" else ("drop", "maxDrop")


def passes(metric: MetricName, baseline: float, value: float, max_drop: float) -> bool:
    return bool(np.isfinite(value)) and drop(metric, baseline, value) <= max_drop + 1e-12
