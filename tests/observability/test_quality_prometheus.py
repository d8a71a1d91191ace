"""Model quality through a real Prometheus: Debian's `prometheus` scrapes a real `ferry-runtime` every
second, and the figures are read back with PromQL over the HTTP API, as the dashboard and the alerts read
them. The online accuracy follows injected label noise; the drift score stays below the drift alert's
threshold on held-out digits and rises above it on shifted inputs."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pytest
from runtime_quality import MODEL, infer, model_with_reference, send_and_feed_back, shifted, with_label_noise

import runtime_models
from conftest import Runtime, start_runtime
from ferry_devcluster.testing import HostPrometheus, start_prometheus
from ferry_operator.builders.alerts import AlertPolicy

pytestmark = pytest.mark.slow

ROWS = 400
LABEL_NOISE = 0.3
# A fresh scrape comes every second; this only bounds a broken setup.
FRESH_SAMPLE_TIMEOUT_SECONDS = 120.0


@dataclass
class Scraped:
    runtime: Runtime
    prometheus: HostPrometheus

    def value(self, expression: str) -> float:
        result = self.prometheus.query(expression)
        assert len(result) == 1, f"{expression!r} should give one series, got {result}"
        return float(result[0]["value"][1])

    def fresh_value(self, expression: str, after: float) -> float:
        """`expression` once every series it reads was scraped after `after` (epoch seconds): a value that
        includes everything the client did before then."""
        deadline = time.monotonic() + FRESH_SAMPLE_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            stamps = self.prometheus.query(f"timestamp({expression})")
            if stamps and min(float(series["value"][1]) for series in stamps) > after:
                return self.value(expression)
            assert self.runtime.process.poll() is None, f"ferry-runtime exited:\n{self.runtime.log()}"
            assert self.prometheus.process.poll() is None, f"prometheus exited:\n{self.prometheus.log()}"
            time.sleep(0.2)
        raise AssertionError(
            f"no sample of {expression!r} scraped after {after:.1f} "
            f"within {FRESH_SAMPLE_TIMEOUT_SECONDS:.0f} s; targets: {self.prometheus.query('up')}\n"
            f"{self.prometheus.log()[-2000:]}"
        )


@pytest.fixture(scope="module")
def scraped(
    digits: runtime_models.DigitsModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Scraped]:
    work = tmp_path_factory.mktemp("quality-prometheus")
    runtime = start_runtime(
        model_with_reference(digits, work / "model"),
        MODEL,
        work,
        *("--accuracy-window", str(ROWS)),
        *("--drift-window-rows", str(ROWS), "--drift-sample-every", "1"),
    )
    try:
        prometheus = start_prometheus(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {"job_name": MODEL, "static_configs": [{"targets": [f"127.0.0.1:{runtime.port}"]}]}
                ],
            },
            work / "prometheus",
        )
    except BaseException:
        runtime.stop()
        raise
    yield Scraped(runtime, prometheus)
    prometheus.stop()
    assert runtime.stop() == 0, runtime.log()


def noisy_accuracy_bounds(clean_correct: int, rows: int, noise: float) -> tuple[float, float]:
    """Expected accuracy after relabelling exactly round(noise * rows) random rows, and a tolerance from
    the sample count. A relabelled row that was right becomes wrong; one that was wrong becomes right
    with chance 1/9 (its new label is one of the 9 other classes, one of which is the prediction). Which
    rows are relabelled is a draw without replacement, so the count of right ones among them is
    hypergeometric; the tolerance is 4 of its standard deviations plus one sample."""
    relabelled = round(noise * rows)
    clean = clean_correct / rows
    expected = clean - relabelled * clean / rows + relabelled * (1 - clean) / 9 / rows
    variance = relabelled * clean * (1 - clean) * (rows - relabelled) / (rows - 1)
    tolerance = (4 * math.sqrt(variance) * (1 + 1 / 9) + 1) / rows
    return expected, tolerance


def test_prometheus_accuracy_tracks_injected_label_noise(
    scraped: Scraped, digits: runtime_models.DigitsModel
) -> None:
    accuracy = f'ferry_feedback_accuracy_ratio{{model="{MODEL}"}}'
    images, labels = digits.test_images[:ROWS], digits.test_labels[:ROWS]

    clean_rows, clean_correct = send_and_feed_back(scraped.runtime, images, labels, "clean")
    clean = scraped.fresh_value(accuracy, after=time.time())
    assert clean == pytest.approx(clean_correct / clean_rows)
    assert clean > 0.9  # the classifier is good on held-out digits with true labels

    noisy_labels = with_label_noise(labels, LABEL_NOISE, seed=1)
    noisy_rows, noisy_correct = send_and_feed_back(scraped.runtime, images, noisy_labels, "noisy")
    noisy = scraped.fresh_value(accuracy, after=time.time())
    # The window holds only the noisy phase now: what the client counted, and what the noise predicts.
    assert noisy == pytest.approx(noisy_correct / noisy_rows)
    expected, tolerance = noisy_accuracy_bounds(clean_correct, clean_rows, LABEL_NOISE)
    assert abs(noisy - expected) <= tolerance, (noisy, expected, tolerance)
    # Across replicas accuracy comes from the counters (docs/metrics.md); here they hold both phases.
    over_counters = scraped.value(
        f'sum(ferry_feedback_correct_total{{model="{MODEL}"}})'
        f' / sum(ferry_feedback_scored_total{{model="{MODEL}"}})'
    )
    assert over_counters == pytest.approx((clean_correct + noisy_correct) / (clean_rows + noisy_rows))


def test_prometheus_drift_score_crosses_the_alert_threshold_on_shifted_inputs(
    scraped: Scraped, digits: runtime_models.DigitsModel
) -> None:
    policy = AlertPolicy()
    psi = f'ferry_input_drift_psi{{model="{MODEL}", input="input"}}'
    window_rows = f'ferry_input_drift_window_rows{{model="{MODEL}", input="input"}}'
    held_out = digits.test_images[:ROWS]

    def serve(images: np.ndarray, tag: str) -> Callable[[str], float]:
        for start in range(0, ROWS, 8):
            infer(scraped.runtime, images[start : start + 8], f"{tag}-{start}")
        sent = time.time()
        return lambda expression: scraped.fresh_value(expression, after=sent)

    read = serve(held_out, "in")
    # The alert judges a score only over enough rows; the window holds exactly this phase's rows.
    assert read(window_rows) == ROWS >= policy.drift_min_rows
    in_distribution = read(psi)
    assert in_distribution < policy.drift_psi_threshold

    read = serve(shifted(held_out), "shifted")
    assert read(window_rows) == ROWS
    drifted = read(psi)
    assert drifted > policy.drift_psi_threshold
    assert drifted > in_distribution
