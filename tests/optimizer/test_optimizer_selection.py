"""The gate and the choice among measured candidates (ferry_optimizer.selection)."""

from __future__ import annotations

from ferry_optimizer import selection
from ferry_optimizer.report import Candidate, Measurement
from ferry_optimizer.spec import ValidateSpec

GATE = ValidateSpec(metric="accuracy", max_drop=0.01)


def candidate(name: str, latency: float, size: int, accuracy: float, compressed: int = 0) -> Candidate:
    measurement = Measurement(size, compressed or size, latency, 1.0, accuracy)
    return Candidate(name, "original", [], measurement, requested=name != "baseline")


def test_the_fastest_passing_candidate_wins_and_a_worse_one_is_rejected_with_its_numbers() -> None:
    candidates = [
        candidate("baseline", 1.0, 1000, 0.97),
        candidate("optimized", 0.5, 300, 0.965),
        candidate("student", 0.2, 100, 0.90),
    ]
    selection.gate(candidates, "accuracy", 0.97, GATE)
    assert [c.passed for c in candidates] == [True, True, False]
    assert candidates[2].reason == "accuracy drop 0.07 > maxDrop 0.01 (0.9 vs baseline 0.97)"
    chosen, passed, reason = selection.choose(candidates, "accuracy", gated=True)
    assert (chosen, passed) == ("optimized", True)
    assert reason.startswith("optimized: accuracy drop 0.005 <= maxDrop 0.01")


def test_equally_fast_candidates_are_decided_by_size_then_compressed_size() -> None:
    candidates = [
        candidate("baseline", 1.0, 1000, 0.97),
        candidate("optimized", 0.500, 300, 0.97, compressed=280),
        candidate("pruned", 0.520, 300, 0.97, compressed=150),
        candidate("student", 0.600, 100, 0.97),
    ]
    selection.gate(candidates, "accuracy", 0.97, GATE)
    # Within 5% of the fastest: optimized and pruned; same size, pruned compresses better.
    assert selection.choose(candidates, "accuracy", gated=True)[0] == "pruned"


def test_with_a_gate_and_nothing_passing_nothing_is_chosen() -> None:
    candidates = [candidate("baseline", 1.0, 1000, 0.97), candidate("optimized", 0.5, 300, 0.90)]
    selection.gate(candidates, "accuracy", 0.97, GATE)
    chosen, passed, reason = selection.choose(candidates, "accuracy", gated=True)
    assert (chosen, passed) == (None, False)
    assert reason.startswith("rejected by the gate, nothing rolled out: optimized: accuracy drop 0.07")


def test_without_a_gate_a_failed_build_falls_back_to_the_baseline() -> None:
    failed = Candidate(
        "optimized",
        "original",
        ["quantize:fp16"],
        None,
        requested=True,
        reason="failed: fp16 conversion failed: x",
    )
    candidates = [candidate("baseline", 1.0, 1000, 0.97), failed]
    selection.gate(candidates, "accuracy", 0.97, None)
    assert failed.passed is False
    chosen, passed, reason = selection.choose(candidates, "accuracy", gated=False)
    assert (chosen, passed) == ("baseline", False)
    assert "failed: fp16 conversion failed" in reason


def test_without_a_gate_any_built_candidate_passes_even_if_worse() -> None:
    candidates = [candidate("baseline", 1.0, 1000, 0.97), candidate("optimized", 0.5, 300, 0.5)]
    selection.gate(candidates, "accuracy", 0.97, None)
    assert candidates[1].passed
    assert candidates[1].reason == "no gate (accuracy change -0.47)"


def test_lower_is_better_for_max_abs_error() -> None:
    gate = ValidateSpec(metric="maxAbsError", max_drop=0.01)
    candidates = [
        candidate("baseline", 1.0, 1000, 0.0),
        candidate("optimized", 0.5, 300, 0.005),
        candidate("student", 0.5, 300, 0.02),
    ]
    selection.gate(candidates, "maxAbsError", 0.0, gate)
    assert [c.passed for c in candidates] == [True, True, False]
    assert selection.choose(candidates, "maxAbsError", gated=True)[0] == "optimized"


def test_conversion_only_chooses_the_requested_baseline() -> None:
    baseline = candidate("baseline", 1.0, 1000, 0.97)
    baseline.requested = True
    selection.gate([baseline], "accuracy", 0.97, GATE)
    assert selection.choose([baseline], "accuracy", gated=True)[:2] == ("baseline", True)


def test_perplexity_is_gated_on_its_relative_increase_over_the_named_reference() -> None:
    """A generative model's gate: lower perplexity is better, the budget is relative (maxIncrease)."""
    candidates = [
        Candidate("fp32", "fp32", [], Measurement(1000, None, 10.0, 1.0, 20.0), requested=False),
        Candidate("int4", "int4", [], Measurement(150, None, 3.0, 1.0, 21.2), requested=True),
        Candidate("int8", "int8", [], Measurement(280, None, 5.0, 1.0, 20.1), requested=True),
    ]
    budget = ValidateSpec(metric="perplexity", max_drop=None, max_increase=0.05)
    selection.gate(candidates, "perplexity", 20.0, budget, reference="fp32")
    assert [c.passed for c in candidates] == [True, False, True]
    assert candidates[1].reason == "perplexity increase 0.06 > maxIncrease 0.05 (21.2 vs fp32 20)"
    assert candidates[2].reason == "perplexity increase 0.005 <= maxIncrease 0.05"
    assert selection.choose(candidates, "perplexity", gated=True, reference="fp32")[:2] == ("int8", True)
