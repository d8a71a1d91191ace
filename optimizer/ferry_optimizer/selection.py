"""The gate and the choice: pure policy over measured candidates (documented in docs/optimizer.md).

Gate: with spec.validate, a candidate passes when its metric is worse than the baseline's by at most
maxDrop; without it nothing is gated (every candidate that was built passes). A candidate that failed to
build never passes.

Choice: among requested candidates that passed, those within 5% of the lowest latency count as equally
fast (timing noise), and of those the smallest file wins, then the smallest compressed file, then the
better metric. When none passed: with a gate nothing is chosen (no model is written; the operator keeps
serving what it serves); without a gate (so every requested candidate failed to build) the converted
baseline is chosen, with passed=false.
"""

from __future__ import annotations

from collections.abc import Sequence

from ferry_optimizer import quality
from ferry_optimizer.report import Candidate
from ferry_optimizer.spec import MetricName, ValidateSpec

# Candidates within this factor of the fastest count as equally fast.
LATENCY_TIE = 1.05
BASELINE = "baseline"


def gate(
    candidates: Sequence[Candidate],
    metric: MetricName,
    baseline: float,
    validate: ValidateSpec | None,
    reference: str = BASELINE,
) -> None:
    """Set each candidate's passed and reason; `reference` names the candidate the others are scored
    against (the converted baseline, or a generative model's fp32 build)."""
    change_name, budget_name = quality.budget_name(metric)
    for candidate in candidates:
        m = candidate.measurement
        if m is None or m.metric is None:
            candidate.passed = False
            candidate.reason = candidate.reason or "not built"
            continue
        change = quality.drop(metric, baseline, m.metric)
        if candidate.name == reference:
            candidate.passed, candidate.reason = True, "reference"
        elif validate is None:
            sign = change if metric == "perplexity" else -change
            candidate.passed, candidate.reason = True, f"no gate ({metric} change {sign:+.4g})"
        elif quality.passes(metric, baseline, m.metric, validate.budget):
            candidate.passed = True
            candidate.reason = f"{metric} {change_name} {change:.4g} <= {budget_name} {validate.budget:g}"
        else:
            candidate.passed = False
            candidate.reason = (
                f"{metric} {change_name} {change:.4g} > {budget_name} {validate.budget:g} "
                f"({m.metric:.4g} vs {reference} {baseline:.4g})"
            )


def choose(
    candidates: Sequence[Candidate], metric: MetricName, *, gated: bool, reference: str = BASELINE
) -> tuple[str | None, bool, str]:
    """(chosen candidate name or None, passed, reason)."""
    requested = [c for c in candidates if c.requested]
    eligible = [c for c in requested if c.passed and c.measurement is not None]
    if eligible:
        fastest = min(_latency(c) for c in eligible)
        tied = [c for c in eligible if _latency(c) <= fastest * LATENCY_TIE]
        higher = quality.HIGHER_IS_BETTER[metric]

        def order(c: Candidate) -> tuple[int, int, float]:
            m = c.measurement
            assert m is not None
            value = m.metric or 0.0
            return (m.size_bytes, m.compressed_bytes or 0, -value if higher else value)

        best = min(tied, key=order)
        return (
            best.name,
            True,
            f"{best.name}: {best.reason}; chosen as the smallest of the fastest passing candidates",
        )
    rejected = "; ".join(f"{c.name}: {c.reason}" for c in requested) or "no candidate"
    if gated:
        return None, False, f"rejected by the gate, nothing rolled out: {rejected}"
    return (
        reference,
        False,
        f"no requested candidate could be built ({rejected}); the reference {reference} is written",
    )


def _latency(candidate: Candidate) -> float:
    m = candidate.measurement
    assert m is not None
    return m.latency_ms if m.latency_ms is not None else float("inf")
