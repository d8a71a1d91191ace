"""The PrometheusRule of a ModelDeployment: `promtool check rules` accepts it, and in `promtool test rules`
every alert fires on a bad synthetic series and stays silent on a healthy one (with its exact labels and
rendered annotations)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import run_promtool
from ferry_operator.api import models
from ferry_operator.builders import alerts
from ferry_runtime.metrics import FIRST_TOKEN_BUCKETS, LATENCY_BUCKETS

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE, NAME = "ml", "digits"
SPEC = models.ModelDeploymentSpec.model_validate(
    {"model": {"uri": "pvc://models/digits/", "format": "onnx"}, "rollout": {"progressDeadlineSeconds": 300}}
)
SELECTOR = f'namespace="{NAMESPACE}",model="{NAME}"'
DEPLOYMENT = f'namespace="{NAMESPACE}",deployment="{NAME}"'
# The operator's per-ModelDeployment series as a scrape with honorLabels stores them (its own pod label).
OPERATOR = f'namespace="{NAMESPACE}",modeldeployment="{NAME}",pod="ferry-operator-0"'


def rules(policy: alerts.AlertPolicy | None = None) -> dict[str, Any]:
    return alerts.prometheus_rule(NAME, NAMESPACE, SPEC, policy)


def alert_rules(alert: str) -> list[dict[str, Any]]:
    return [
        rule for group in rules()["spec"]["groups"] for rule in group["rules"] if rule.get("alert") == alert
    ]


@dataclasses.dataclass(frozen=True)
class Case:
    """One alert under one synthetic history."""

    alert: str
    # promtool input series: (series, values in promtool's expanding notation), one sample per minute.
    series: tuple[tuple[str, str], ...]
    eval_time: str
    # Expected firing alerts: (extra labels beyond the rule's, values for the annotation templates).
    firing: tuple[tuple[dict[str, str], dict[str, str]], ...] = ()
    # Restrict the expectation to one severity when an alert has several rules.
    severity: str | None = None

    @property
    def id(self) -> str:
        return f"{self.alert}-{'fires' if self.firing else 'silent'}-{self.eval_time}"


def _render(template: str, values: dict[str, str]) -> str:
    """What Prometheus renders for the templates our annotations use, given the expected values."""

    def substitute(match: re.Match[str]) -> str:
        key = match.group(1).strip()
        if key not in values:
            raise KeyError(f"the test gives no value for template {{{{ {key} }}}}")
        return values[key]

    return re.sub(r"\{\{(.*?)\}\}", substitute, template)


def _expected_alerts(case: Case) -> list[dict[str, Any]]:
    expected = []
    for rule in alert_rules(case.alert):
        if case.severity is not None and rule["labels"]["severity"] != case.severity:
            continue
        for extra_labels, template_values in case.firing:
            expected.append(
                {
                    "exp_labels": {**rule["labels"], **extra_labels},
                    "exp_annotations": {
                        key: _render(value, template_values) for key, value in rule["annotations"].items()
                    },
                }
            )
    return expected


def _ready_series(ready: str, desired: str, model_ready: str | None) -> tuple[tuple[str, str], ...]:
    series = [
        (f'ferry_operator_modeldeployment_replicas{{{OPERATOR},state="ready"}}', ready),
        (f'ferry_operator_modeldeployment_replicas{{{OPERATOR},state="desired"}}', desired),
    ]
    if model_ready is not None:
        series.append((f'ferry_model_ready{{{SELECTOR},pod="digits-0"}}', model_ready))
    return tuple(series)


def _requests(ok: str, client_errors: str, server_errors: str) -> tuple[tuple[str, str], ...]:
    base = f'ferry_requests_total{{{SELECTOR},protocol="rest",code='
    return (
        (base + '"200"}', ok),
        (base + '"400"}', client_errors),
        (base + '"503"}', server_errors),
        (f'ferry_requests_total{{{SELECTOR},protocol="grpc",code="OK"}}', ok),
    )


def _latency(fast_per_minute: int, total_per_minute: int) -> tuple[tuple[str, str], ...]:
    bucket = f'ferry_request_duration_seconds_bucket{{{SELECTOR},protocol="rest",le="0.25"}}'
    return (
        (bucket, f"0+{fast_per_minute}x300"),
        (f'ferry_request_duration_seconds_count{{{SELECTOR},protocol="rest"}}', f"0+{total_per_minute}x300"),
    )


def _feedback(scored: str, correct: str, reference: str) -> tuple[tuple[str, str], ...]:
    pod = f'{SELECTOR},pod="digits-0"'
    return (
        (f"ferry_feedback_scored_total{{{pod}}}", scored),
        (f"ferry_feedback_correct_total{{{pod}}}", correct),
        (f"ferry_model_reference_accuracy_ratio{{{pod}}}", reference),
    )


def _drift(psi: str, rows: str) -> tuple[tuple[str, str], ...]:
    labels = f'{SELECTOR},input="input",pod="digits-0"'
    return (
        (f"ferry_input_drift_psi{{{labels}}}", psi),
        (f"ferry_input_drift_window_rows{{{labels}}}", rows),
    )


def _optimizations(outcome: str, values: str, owner: str = NAME) -> tuple[tuple[str, str], ...]:
    """ferry_operator_optimizations_total of one ModelDeployment and outcome; "_" in `values` is a
    minute without the series (the operator creates it with the first Job of that outcome)."""
    labels = f'namespace="{NAMESPACE}",modeldeployment="{owner}",outcome="{outcome}",pod="ferry-operator-0"'
    return ((f"ferry_operator_optimizations_total{{{labels}}}", values),)


def _progressing(stuck_value: str) -> tuple[tuple[str, str], ...]:
    """The operator's rollout-stuck gauge of the ModelDeployment (1: past its progress deadline)."""
    return ((f"ferry_operator_modeldeployment_rollout_stuck{{{OPERATOR}}}", stuck_value),)


def _first_tokens(fast_per_minute: int, total_per_minute: int) -> tuple[tuple[str, str], ...]:
    """Generations a minute, and how many of them streamed their first token within 2.5 s."""
    name = "ferry_generation_time_to_first_token_seconds"
    return (
        (f'{name}_bucket{{{SELECTOR},pod="llm-0",le="2.5"}}', f"0+{fast_per_minute}x60"),
        (f'{name}_count{{{SELECTOR},pod="llm-0"}}', f"0+{total_per_minute}x60"),
    )


def _waiting(*per_pod: str) -> tuple[tuple[str, str], ...]:
    return tuple(
        (f'ferry_generation_waiting_sequences{{{SELECTOR},pod="llm-{number}"}}', values)
        for number, values in enumerate(per_pod)
    )


OWNER = {"modeldeployment": NAME}
MODEL = {"model": NAME}
CASES = [
    # No ready replica: the operator reports 0 of 2 ready; or no operator series and the only pod is not
    # ready.
    Case("FerryModelNoReadyReplicas", _ready_series("0x20", "2x20", None), "10m", ((OWNER, {}),)),
    Case("FerryModelNoReadyReplicas", (_ready_series("0x20", "2x20", "0x20")[2],), "10m", ((OWNER, {}),)),
    Case("FerryModelNoReadyReplicas", _ready_series("2x20", "2x20", "1x20"), "10m"),
    # Scaled to zero on purpose: nothing is wanted, nothing is missing.
    Case("FerryModelNoReadyReplicas", _ready_series("0x20", "0x20", None), "10m"),
    # Shorter than `for`: pods starting up are not an outage yet.
    Case("FerryModelNoReadyReplicas", _ready_series("0x20", "2x20", None), "3m"),
    # 10% server errors (60 of 600 a minute, 503) for 15 minutes; 400s are the clients' and do not count.
    Case(
        "FerryModelErrorRatioHigh",
        _requests("0+220x30", "0+100x30", "0+60x30"),
        "15m",
        ((MODEL, {"$value | humanizePercentage": "10%"}),),
    ),
    Case("FerryModelErrorRatioHigh", _requests("0+300x30", "0+100x30", "0+3x30"), "15m"),
    # Half the requests slower than 250 ms: the fast burn (14.4x over 1h and 5m) pages within minutes.
    Case("FerryModelLatencyBudgetBurn", _latency(50, 100), "30m", ((MODEL, {}),), severity="critical"),
    # ...while the slow-burn warning still waits for its `for: 1h`.
    Case("FerryModelLatencyBudgetBurn", _latency(50, 100), "30m", (), severity="warning"),
    # 5% slow: below the fast thresholds (14.4x, 6x of a 1% budget), above 3x over 1d and 2h.
    Case("FerryModelLatencyBudgetBurn", _latency(95, 100), "3h", ((MODEL, {}),), severity="warning"),
    Case("FerryModelLatencyBudgetBurn", _latency(95, 100), "3h", (), severity="critical"),
    # 0.5% slow: within the 1% budget.
    Case("FerryModelLatencyBudgetBurn", _latency(995, 1000), "3h"),
    Case(
        "FerryModelRolloutStuck",
        _progressing("1x10"),
        "5m",
        ((OWNER, {}),),
    ),
    Case("FerryModelRolloutStuck", _progressing("0x10"), "5m"),
    # The first failure creates the series at 1: a single sample, which increase() alone cannot see.
    Case("FerryModelOptimizationFailed", _optimizations("failed", "_x4 1x10"), "6m", ((OWNER, {}),)),
    # A second failure long after the first: the series is old, its increase counts.
    Case("FerryModelOptimizationFailed", _optimizations("failed", "1x90 2x10"), "95m", ((OWNER, {}),)),
    # An hour after the last failure the alert resolves (a counter has no "still failed" state).
    Case("FerryModelOptimizationFailed", _optimizations("failed", "_x4 1x100"), "80m"),
    # Jobs that passed or were rejected by the gate are no failure.
    Case(
        "FerryModelOptimizationFailed",
        _optimizations("passed", "_x4 1x10") + _optimizations("gate_rejected", "0+1x10"),
        "6m",
    ),
    # Another ModelDeployment's failed Job is not this one's alert.
    Case("FerryModelOptimizationFailed", _optimizations("failed", "_x4 1x10", owner="other"), "6m"),
    # 80% correct against 96% at optimization time, 600 samples an hour.
    Case(
        "FerryModelAccuracyDrop",
        _feedback("0+10x120", "0+8x120", "0.96x120"),
        "90m",
        ((MODEL, {"$value | humanizePercentage": "80%"}),),
    ),
    Case("FerryModelAccuracyDrop", _feedback("0+10x120", "0+9.5x120", "0.96x120"), "90m"),
    # 0% correct, but 60 samples an hour are too few to judge.
    Case("FerryModelAccuracyDrop", _feedback("0+1x120", "0+0x120", "0.96x120"), "90m"),
    Case(
        "FerryModelInputDrift",
        _drift("0.4x40", "1000x40"),
        "30m",
        (({**MODEL, "input": "input"}, {"$labels.input": "input", '$value | printf "%.2f"': "0.40"}),),
    ),
    Case("FerryModelInputDrift", _drift("0.05x40", "1000x40"), "30m"),
    # A high score from a handful of rows is noise.
    Case("FerryModelInputDrift", _drift("0.4x40", "50x40"), "30m"),
    # 30 of 60 generations a minute wait more than 2.5 s for their first token: 50% over a 10% budget.
    Case(
        "FerryModelTimeToFirstTokenSlow",
        _first_tokens(30, 60),
        "25m",
        ((MODEL, {"$value | humanizePercentage": "50%"}),),
    ),
    # 95% within 2.5 s: inside the objective.
    Case("FerryModelTimeToFirstTokenSlow", _first_tokens(57, 60), "25m"),
    # A queue that grows by one request a minute on one pod (the other idles) for half an hour.
    Case(
        "FerryModelGenerationQueueGrowing",
        _waiting("0+1x40", "0x40"),
        "30m",
        ((MODEL, {"$value": "30"}),),
    ),
    # Requests wait, but no more than ten minutes ago (a steady, served backlog): no alert.
    Case("FerryModelGenerationQueueGrowing", _waiting("4x40", "3x40"), "30m"),
]


@pytest.fixture(scope="module")
def rule_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("rules")
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rules()["spec"]["groups"]}, sort_keys=False, width=1000))
    return path


def test_promtool_accepts_the_rules(promtool: Path, rule_file: Path) -> None:
    result = run_promtool(promtool, "check", "rules", rule_file.name, cwd=rule_file.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    every_rule = [rule for group in rules()["spec"]["groups"] for rule in group["rules"]]
    assert f"SUCCESS: {len(every_rule)} rules found" in result.stdout


def test_every_alert_has_a_case_that_fires_and_one_that_stays_silent() -> None:
    fired = {case.alert for case in CASES if case.firing}
    silent = {case.alert for case in CASES if not case.firing}
    assert fired == silent == set(alerts.ALERTS)
    assert {
        rule["alert"] for group in rules()["spec"]["groups"] for rule in group["rules"] if "alert" in rule
    } == set(alerts.ALERTS)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_alert_under_promtool(promtool: Path, rule_file: Path, case: Case) -> None:
    test_group: dict[str, Any] = {
        "interval": "1m",
        "input_series": [{"series": series, "values": values} for series, values in case.series],
        "alert_rule_test": [
            {"eval_time": case.eval_time, "alertname": case.alert, "exp_alerts": _expected_alerts(case)}
        ],
    }
    if case.severity is not None:
        # promtool compares every alert of that name: a severity-specific case silences the other rule.
        other = [rule for rule in alert_rules(case.alert) if rule["labels"]["severity"] != case.severity]
        assert other, f"{case.alert} has a single rule; the case needs no severity"
    test_file = rule_file.parent / f"test-{case.id}.yaml"
    test_file.write_text(
        yaml.safe_dump(
            {"rule_files": [rule_file.name], "evaluation_interval": "1m", "tests": [test_group]},
            sort_keys=False,
            width=1000,
        )
    )
    if case.severity is not None:
        _keep_only_severity(test_file, rule_file, case)
    result = run_promtool(promtool, "test", "rules", test_file.name, cwd=rule_file.parent)
    assert result.returncode == 0, f"{case.id}\n{result.stdout}\n{result.stderr}\n{test_file.read_text()}"


def _keep_only_severity(test_file: Path, rule_file: Path, case: Case) -> None:
    """Point the test at a copy of the rules without the other severities of this alert, so the case
    states what one rule does (promtool matches alerts by name only)."""
    groups = rules()["spec"]["groups"]
    for group in groups:
        group["rules"] = [
            rule
            for rule in group["rules"]
            if rule.get("alert") != case.alert or rule["labels"]["severity"] == case.severity
        ]
    variant = rule_file.parent / f"rules-{case.id}.yaml"
    variant.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False, width=1000))
    document = yaml.safe_load(test_file.read_text())
    document["rule_files"] = [variant.name]
    test_file.write_text(yaml.safe_dump(document, sort_keys=False, width=1000))


def test_latency_threshold_must_be_a_bucket_bound_of_the_runtime() -> None:
    assert alerts.LATENCY_BUCKETS == LATENCY_BUCKETS
    assert alerts.FIRST_TOKEN_BUCKETS == FIRST_TOKEN_BUCKETS
    with pytest.raises(ValueError, match=r"ttft_threshold_seconds must be a bucket bound .* got 3"):
        alerts.AlertPolicy(ttft_threshold_seconds=3)
    with pytest.raises(ValueError, match=r"latency_threshold_seconds must be a bucket bound .* got 0\.3"):
        alerts.AlertPolicy(latency_threshold_seconds=0.3)
    with pytest.raises(ValueError, match=r"latency_objective must be between 0 and 1, got 1\.5"):
        alerts.AlertPolicy(latency_objective=1.5)
    with pytest.raises(ValueError, match="drift_for must be a Prometheus duration"):
        alerts.AlertPolicy(drift_for="soon")


def test_policy_changes_the_thresholds(promtool: Path, tmp_path: Path) -> None:
    policy = alerts.AlertPolicy(latency_objective=0.999, latency_threshold_seconds=0.1, error_ratio=0.2)
    groups = alerts.prometheus_rule(NAME, NAMESPACE, SPEC, policy)["spec"]["groups"]
    text = yaml.safe_dump({"groups": groups}, sort_keys=False, width=1000)
    assert 'le="0.1"' in text
    assert "> 14.4 * 0.001" in text
    assert "> 0.2" in text
    (tmp_path / "rules.yaml").write_text(text)
    result = run_promtool(promtool, "check", "rules", "rules.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def _github_anchors(markdown: str) -> set[str]:
    headings = re.findall(r"^#+\s+(.*)$", markdown, flags=re.MULTILINE)
    return {re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


def test_every_alert_is_labelled_annotated_and_has_a_runbook_section() -> None:
    anchors = _github_anchors((ROOT / "docs" / "runbooks.md").read_text())
    manifest = rules()
    assert manifest["apiVersion"] == "monitoring.coreos.com/v1"
    assert manifest["kind"] == "PrometheusRule"
    assert manifest["metadata"]["labels"]["ferry.dev/modeldeployment"] == NAME
    for group in manifest["spec"]["groups"]:
        for rule in group["rules"]:
            if "alert" not in rule:
                assert rule["record"].startswith("ferry:")
                continue
            assert rule["labels"]["severity"] in {"critical", "warning"}
            assert set(rule["annotations"]) == {"summary", "description", "runbook_url"}
            base, _, anchor = rule["annotations"]["runbook_url"].partition("#")
            assert base == alerts.RUNBOOK_BASE_URL
            assert anchor in anchors, f"docs/runbooks.md has no section for {rule['alert']}"
