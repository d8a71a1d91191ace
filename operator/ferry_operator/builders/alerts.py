"""The PrometheusRule of one ModelDeployment: the alerts that say a model is unhealthy, slow or wrong.

A pure builder (name, namespace, spec, policy -> manifest). Its expressions read three sources, each
documented in docs/metrics.md:
- the serving pods' own metrics (`ferry_*`, scraped through the ServiceMonitor; the runtime labels every
  series with `model` = the ModelDeployment's name, and the scrape adds `namespace`);
- the operator's per-ModelDeployment series (`ferry_operator_*`, labelled `namespace` and
  `modeldeployment`): desired and ready replicas as the status reports them, whether the rollout is past
  its progress deadline, finished optimization Jobs (so no alert needs kube-state-metrics);
- the recording rules of this group (`ferry:...`), for the latency SLO's burn rates.

Every alert carries `severity`, `summary`, `description` and a `runbook_url` into docs/runbooks.md, and
tests/observability runs each one through `promtool test rules`: it fires on a bad series and stays
silent on a healthy one.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ferry_operator import kinds
from ferry_operator.api import models
from ferry_operator.builders.common import Manifest

API_VERSION = "monitoring.coreos.com/v1"
KIND = "PrometheusRule"
# The bucket bounds of the runtime's ferry_request_duration_seconds (ferry_runtime.metrics.LATENCY_BUCKETS;
# the operator must not import the runtime, a test keeps the two equal). A latency objective is only
# measurable at a bound: the share of requests faster than it is one bucket's count.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
# The bucket bounds of the generative runtime's ferry_generation_time_to_first_token_seconds
# (ferry_runtime.metrics.FIRST_TOKEN_BUCKETS; a test keeps the two equal).
FIRST_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Response codes that count as server errors: HTTP 5xx, and the gRPC codes the runtime answers for them.
SERVER_ERROR_CODES = "5..|INTERNAL|UNAVAILABLE|UNKNOWN|DATA_LOSS|DEADLINE_EXCEEDED"
# Multiwindow, multi-burn-rate alerting (Google SRE workbook, "Alerting on SLOs"): (long window, short
# window, burn-rate factor, severity, for). A factor of 14.4 over 1h spends 2% of a 30-day error budget.
BURN_RATE_WINDOWS = (
    ("1h", "5m", 14.4, "critical", "2m"),
    ("6h", "30m", 6.0, "critical", "15m"),
    ("1d", "2h", 3.0, "warning", "1h"),
    ("3d", "6h", 1.0, "warning", "3h"),
)
RUNBOOK_BASE_URL = "https://ferry.dev/docs/runbooks.md"
# How long FerryModelOptimizationFailed fires after a failed Job (it reads a counter, not the Job's state).
OPTIMIZATION_FAILED_RANGE = "1h"

ALERTS = (
    "FerryModelNoReadyReplicas",
    "FerryModelErrorRatioHigh",
    "FerryModelLatencyBudgetBurn",
    "FerryModelRolloutStuck",
    "FerryModelOptimizationFailed",
    "FerryModelAccuracyDrop",
    "FerryModelInputDrift",
    "FerryModelTimeToFirstTokenSlow",
    "FerryModelGenerationQueueGrowing",
)


@dataclasses.dataclass(frozen=True)
class AlertPolicy:
    """Thresholds of the alerts; the defaults suit an online model. Validated on construction."""

    # Latency SLO: this share of requests completes within `latency_threshold_seconds`.
    latency_objective: float = 0.99
    # One of LATENCY_BUCKETS (the runtime's histogram bounds).
    latency_threshold_seconds: float = 0.25
    # Share of requests answered with a server error above which FerryModelErrorRatioHigh fires.
    error_ratio: float = 0.05
    # How long the error ratio must stay above the threshold.
    error_for: str = "5m"
    # How long a ModelDeployment may have no ready replica (pods starting count against this).
    no_ready_for: str = "5m"
    # Online accuracy (feedback) this far below the accuracy measured at optimization time fires.
    accuracy_max_drop: float = 0.05
    # Also fire below this absolute accuracy (None: only the drop from the reference counts).
    accuracy_minimum: float | None = None
    # Feedback samples needed in `accuracy_range` before accuracy is judged (small samples are noise).
    accuracy_min_samples: int = 200
    # The span accuracy is computed over (labels often arrive long after the predictions).
    accuracy_range: str = "1h"
    # Input drift: population stability index above which an input counts as shifted (0.25: significant).
    drift_psi_threshold: float = 0.25
    # Sampled rows needed before a drift score is judged.
    drift_min_rows: int = 100
    # How long the score must stay above the threshold.
    drift_for: str = "15m"
    # Generative models: this share of generations starts streaming within `ttft_threshold_seconds`.
    ttft_objective: float = 0.9
    # One of FIRST_TOKEN_BUCKETS (the runtime's time-to-first-token histogram bounds).
    ttft_threshold_seconds: float = 2.5
    # How long the time to first token must miss its objective (and the queue grow) before an alert.
    generation_for: str = "10m"
    # Where docs/runbooks.md is published; each alert links to its section.
    runbook_base_url: str = RUNBOOK_BASE_URL

    def __post_init__(self) -> None:
        problems = []
        for name in ("latency_objective", "ttft_objective"):
            if not 0 < getattr(self, name) < 1:
                problems.append(f"{name} must be between 0 and 1, got {getattr(self, name)}")
        if self.ttft_threshold_seconds not in FIRST_TOKEN_BUCKETS:
            problems.append(
                f"ttft_threshold_seconds must be a bucket bound of "
                f"ferry_generation_time_to_first_token_seconds {list(FIRST_TOKEN_BUCKETS)}, "
                f"got {self.ttft_threshold_seconds}"
            )
        if self.latency_threshold_seconds not in LATENCY_BUCKETS:
            problems.append(
                f"latency_threshold_seconds must be a bucket bound of ferry_request_duration_seconds "
                f"{list(LATENCY_BUCKETS)}, got {self.latency_threshold_seconds}"
            )
        for name in ("error_ratio", "accuracy_max_drop"):
            if not 0 <= getattr(self, name) <= 1:
                problems.append(f"{name} must be between 0 and 1, got {getattr(self, name)}")
        if self.accuracy_minimum is not None and not 0 <= self.accuracy_minimum <= 1:
            problems.append(f"accuracy_minimum must be between 0 and 1, got {self.accuracy_minimum}")
        for name in ("accuracy_min_samples", "drift_min_rows"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.drift_psi_threshold <= 0:
            problems.append(f"drift_psi_threshold must be positive, got {self.drift_psi_threshold}")
        for name in ("error_for", "no_ready_for", "accuracy_range", "drift_for", "generation_for"):
            if not _is_duration(getattr(self, name)):
                problems.append(
                    f"{name} must be a Prometheus duration such as 5m or 1h, got {getattr(self, name)!r}"
                )
        if problems:
            raise ValueError("; ".join(problems))


def _is_duration(value: str) -> bool:
    return len(value) > 1 and value[:-1].isdigit() and value[-1] in "smhdw" and int(value[:-1]) > 0


def runbook_anchor(alert: str) -> str:
    """The anchor of an alert's section in docs/runbooks.md (a heading named after the alert)."""
    return alert.lower()


def prometheus_rule(
    name: str, namespace: str, spec: models.ModelDeploymentSpec, policy: AlertPolicy | None = None
) -> Manifest:
    """The PrometheusRule for ModelDeployment `namespace/name` (owner references are the caller's)."""
    policy = policy or AlertPolicy()
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace, "labels": kinds.child_labels(name)},
        "spec": {"groups": rule_groups(name, namespace, spec, policy)},
    }


def rule_groups(
    name: str, namespace: str, spec: models.ModelDeploymentSpec, policy: AlertPolicy
) -> list[dict[str, Any]]:
    """The rule groups alone (what `promtool` reads from a rule file)."""
    return [
        {"name": f"ferry.{namespace}.{name}.slo", "rules": _slo_recording_rules(name, namespace, policy)},
        {"name": f"ferry.{namespace}.{name}.alerts", "rules": _alerts(name, namespace, spec, policy)},
    ]


def _selector(namespace: str, regex: dict[str, str] | None = None, **labels: str) -> str:
    pairs = [f'namespace="{namespace}"'] + [f'{key}="{value}"' for key, value in labels.items()]
    pairs += [f'{key}=~"{pattern}"' for key, pattern in (regex or {}).items()]
    return "{" + ",".join(pairs) + "}"


def _bound(seconds: float) -> str:
    """A histogram bound as the runtime's exposition (and Prometheus 3's normalization) writes it."""
    return repr(float(seconds))


def slo_error_record(window: str) -> str:
    return f"ferry:request_latency_slo_errors:ratio_rate{window}"


def _slo_recording_rules(name: str, namespace: str, policy: AlertPolicy) -> list[dict[str, Any]]:
    """Share of requests slower than the threshold, per window the burn-rate alerts read."""
    model = _selector(namespace, model=name)
    fast = _selector(namespace, model=name, le=_bound(policy.latency_threshold_seconds))
    windows = sorted({w for long, short, *_ in BURN_RATE_WINDOWS for w in (long, short)}, key=_seconds)
    rules = []
    for window in windows:
        within = f"sum by (namespace, model) (rate(ferry_request_duration_seconds_bucket{fast}[{window}]))"
        total = f"sum by (namespace, model) (rate(ferry_request_duration_seconds_count{model}[{window}]))"
        rules.append({"record": slo_error_record(window), "expr": f"1 - ({within} / {total})"})
    return rules


def _seconds(duration: str) -> int:
    return int(duration[:-1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[duration[-1]]


@dataclasses.dataclass
class _Alerts:
    """Collects one ModelDeployment's alerts with the labels and annotations every alert carries."""

    name: str
    namespace: str
    policy: AlertPolicy
    rules: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def add(
        self, alert: str, expr: str, *, duration: str, severity: str, summary: str, description: str
    ) -> None:
        self.rules.append(
            {
                "alert": alert,
                "expr": expr,
                "for": duration,
                "labels": {"severity": severity, "modeldeployment": self.name, "namespace": self.namespace},
                "annotations": {
                    "summary": summary,
                    "description": description,
                    "runbook_url": f"{self.policy.runbook_base_url}#{runbook_anchor(alert)}",
                },
            }
        )


def _alerts(
    name: str, namespace: str, spec: models.ModelDeploymentSpec, policy: AlertPolicy
) -> list[dict[str, Any]]:
    model = _selector(namespace, model=name)
    where = f"ModelDeployment {namespace}/{name}"
    alerts = _Alerts(name, namespace, policy)

    # max, not sum: during an operator rollout two processes may export the same ModelDeployment.
    replicas = "max by (namespace, modeldeployment) (ferry_operator_modeldeployment_replicas{})"
    ready = replicas.format(_selector(namespace, modeldeployment=name, state="ready"))
    desired = replicas.format(_selector(namespace, modeldeployment=name, state="desired"))
    pods_ready = f'label_replace(ferry_model_ready{model}, "modeldeployment", "$1", "model", "(.*)")'
    alerts.add(
        "FerryModelNoReadyReplicas",
        f"({ready} == 0 and on (namespace, modeldeployment) {desired} > 0)"
        f" or sum by (namespace, modeldeployment) ({pods_ready}) == 0",
        duration=policy.no_ready_for,
        severity="critical",
        summary=f"{where} has no ready replica",
        description=f"{where} wants replicas but none has been ready for {policy.no_ready_for}: every "
        f"request to the model fails.",
    )

    server_errors = _selector(namespace, regex={"code": SERVER_ERROR_CODES}, model=name)
    alerts.add(
        "FerryModelErrorRatioHigh",
        f"sum by (namespace, model) (rate(ferry_requests_total{server_errors}[5m]))"
        f" / sum by (namespace, model) (rate(ferry_requests_total{model}[5m])) > {policy.error_ratio:g}",
        duration=policy.error_for,
        severity="critical",
        summary=f"{where} answers too many requests with server errors",
        description=f"{{{{ $value | humanizePercentage }}}} of the requests to {where} failed with a server "
        f"error (5xx / INTERNAL / UNAVAILABLE) over 5m; the threshold is {policy.error_ratio:.2%}.",
    )

    budget = 1 - policy.latency_objective
    threshold_ms = policy.latency_threshold_seconds * 1000
    for severity, pace in (("critical", "hours"), ("warning", "days")):
        windows = [window for window in BURN_RATE_WINDOWS if window[3] == severity]
        alerts.add(
            "FerryModelLatencyBudgetBurn",
            " or ".join(
                f"({slo_error_record(long)}{model} > {factor:g} * {budget:g}"
                f" and {slo_error_record(short)}{model} > {factor:g} * {budget:g})"
                for long, short, factor, _, _ in windows
            ),
            duration=windows[0][4],
            severity=severity,
            summary=f"{where} is burning its latency error budget ({severity})",
            description=f"More than {budget:.2%} of the requests to {where} are slower than "
            f"{threshold_ms:g} ms (objective {policy.latency_objective:.2%}); at this rate the 30-day "
            f"error budget is spent in {pace}.",
        )

    stuck = "ferry_operator_modeldeployment_rollout_stuck" + _selector(namespace, modeldeployment=name)
    rollback = "; autoRollback returns it to the last good revision" if spec.rollout.auto_rollback else ""
    alerts.add(
        "FerryModelRolloutStuck",
        f"max by (namespace, modeldeployment) ({stuck}) == 1",
        duration="1m",
        severity="warning",
        summary=f"{where}'s rollout is stuck past its deadline",
        description=f"The serving Deployment of {where} made no progress within its deadline of "
        f"{spec.rollout.progress_deadline_seconds} s (spec.rollout.progressDeadlineSeconds){rollback}.",
    )

    failed = "ferry_operator_optimizations_total" + _selector(
        namespace, modeldeployment=name, outcome="failed"
    )
    span = OPTIMIZATION_FAILED_RANGE
    # The operator creates the series at 1 with the first failure, which increase() cannot see (it needs
    # two samples): a series younger than the span counts with its value, an older one with its increase.
    alerts.add(
        "FerryModelOptimizationFailed",
        f"sum by (namespace, modeldeployment) (({failed} unless {failed} offset {span})"
        f" or increase({failed}[{span}])) > 0",
        duration="0m",
        severity="warning",
        summary=f"An optimization Job of {where} failed",
        description=f"An optimization Job of {where} failed within the last {span}: the new model is not "
        f"served (the running revision, if any, keeps serving).",
    )

    span = policy.accuracy_range
    scored = f"sum by (namespace, model) (increase(ferry_feedback_scored_total{model}[{span}]))"
    correct = f"sum by (namespace, model) (increase(ferry_feedback_correct_total{model}[{span}]))"
    reference = f"max by (namespace, model) (ferry_model_reference_accuracy_ratio{model})"
    accuracy = f"({correct} / {scored})"
    below = f"({accuracy} < on (namespace, model) ({reference} - {policy.accuracy_max_drop:g}))"
    minimum = ""
    if policy.accuracy_minimum is not None:
        below = f"({below} or {accuracy} < {policy.accuracy_minimum:g})"
        minimum = f" (or below {policy.accuracy_minimum:.1%})"
    alerts.add(
        "FerryModelAccuracyDrop",
        f"{below} and on (namespace, model) ({scored} >= {policy.accuracy_min_samples})",
        duration="0m",
        severity="warning",
        summary=f"{where}'s accuracy on labelled feedback dropped",
        description=f"{where} predicted {{{{ $value | humanizePercentage }}}} of the labelled samples "
        f"correctly over {span}, more than {policy.accuracy_max_drop:.1%} below its accuracy at "
        f"optimization time{minimum}.",
    )

    psi = f"avg by (namespace, model, input) (ferry_input_drift_psi{model})"
    rows = f"min by (namespace, model, input) (ferry_input_drift_window_rows{model})"
    alerts.add(
        "FerryModelInputDrift",
        f"{psi} > {policy.drift_psi_threshold:g}"
        f" and on (namespace, model, input) {rows} >= {policy.drift_min_rows}",
        duration=policy.drift_for,
        severity="warning",
        summary=f"Input {{{{ $labels.input }}}} of {where} drifted from the reference data",
        description=f"The population stability index of input {{{{ $labels.input }}}} of {where} is "
        f'{{{{ $value | printf "%.2f" }}}} (> {policy.drift_psi_threshold:g}) against the data the model '
        f"was optimized on: its quality may no longer be what was measured.",
    )

    # Generative models (the series exist only where the runtime serves one, so a tensor model's
    # expressions are empty and never fire).
    window = policy.generation_for
    first_fast = _selector(namespace, model=name, le=_bound(policy.ttft_threshold_seconds))
    first_token = "ferry_generation_time_to_first_token_seconds"
    started = f"sum by (namespace, model) (rate({first_token}_count{model}[{window}]))"
    within = f"sum by (namespace, model) (rate({first_token}_bucket{first_fast}[{window}]))"
    alerts.add(
        "FerryModelTimeToFirstTokenSlow",
        f"(1 - ({within} / {started})) > {1 - policy.ttft_objective:g} and {started} > 0",
        duration=window,
        severity="warning",
        summary=f"{where} is slow to start its replies",
        description=f"{{{{ $value | humanizePercentage }}}} of the generations of {where} waited longer "
        f"than {policy.ttft_threshold_seconds:g} s for their first token over {window} (objective: "
        f"{policy.ttft_objective:.0%} within it): requests queue for a sequence slot, or prompts are long.",
    )

    waiting = f"sum by (namespace, model) (ferry_generation_waiting_sequences{model})"
    waiting_before = f"sum by (namespace, model) (ferry_generation_waiting_sequences{model} offset {window})"
    alerts.add(
        "FerryModelGenerationQueueGrowing",
        f"{waiting} > 0 and {waiting} > {waiting_before}",
        duration=window,
        severity="warning",
        summary=f"{where}'s generation queue keeps growing",
        description=f"{{{{ $value }}}} requests wait for a sequence slot of {where}, more than {window} "
        f"ago and for {window}: the replicas cannot keep up (autoscaling at maxReplicas, or not on "
        f"metric: queue).",
    )
    return alerts.rules
