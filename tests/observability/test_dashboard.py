"""The Grafana dashboard and the metric documentation against the metrics the code really exports:
every dashboard query parses (promtool), names only exported series, covers what an operator of Ferry
looks at, and ships in the chart as a sidecar ConfigMap; docs/metrics.md documents every family."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import prometheus_client
import pytest
import yaml

from conftest import ROOT, run_promtool
from ferry_operator import metrics as operator_metrics  # noqa: F401 - registers the operator's families
from ferry_operator.api import models
from ferry_operator.builders import alerts
from ferry_runtime.drift import DriftMonitor, parse_reference
from ferry_runtime.feedback import FeedbackStore
from ferry_runtime.metrics import GenerationRecorder, Metrics

DASHBOARD = ROOT / "charts" / "ferry" / "dashboards" / "ferry-overview.json"
METRICS_DOC = ROOT / "docs" / "metrics.md"
# Grafana's variables, replaced by what they expand to, so promtool sees plain PromQL.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$namespace": ".*", "$model": ".*"}
SERIES_NAME = re.compile(r"\b((?:ferry|kube)_[a-zA-Z0-9_]*|ferry:[a-zA-Z0-9_:]+)")


def runtime_families() -> list[Any]:
    """Every family the runtime exports, with feedback, drift and a generative model so all appear."""
    metrics = Metrics()
    GenerationRecorder(metrics, "m").admitted(3)
    metrics.generation_gauges["m"] = (lambda: 1, lambda: 0, lambda: 10, lambda: 100)
    metrics.feedback["m"] = FeedbackStore("m", ["out"], capacity=2, ttl_seconds=1, accuracy_window=2)
    metrics.feedback["m"].remember("id", {"out": np.zeros(1)})
    reference = parse_reference(
        {
            "version": 1,
            "inputs": {"x": {"pooled": True, "bins": {"edges": [[0.0]], "fractions": [[0.5, 0.5]]}}},
        }
    )
    metrics.drift["m"] = DriftMonitor(reference, 10, 1)
    metrics.reference_accuracy["m"] = 0.9
    return list(metrics.registry.collect())


def operator_families() -> list[Any]:
    return [
        family for family in prometheus_client.REGISTRY.collect() if family.name.startswith("ferry_operator_")
    ]


def series_names(families: list[Any]) -> set[str]:
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {family.name + suffix for family in families for suffix in suffixes[family.type]}


def recorded_names() -> set[str]:
    spec = models.ModelDeploymentSpec.model_validate({"model": {"uri": "pvc://m/x/", "format": "onnx"}})
    groups = alerts.rule_groups("x", "ns", spec, alerts.AlertPolicy())
    return {rule["record"] for group in groups for rule in group["rules"] if "record" in rule}


def alert_kube_state_series() -> set[str]:
    """Series of kube-state-metrics the alerts read (docs/metrics.md lists them); the dashboard reads none."""
    spec = models.ModelDeploymentSpec.model_validate({"model": {"uri": "pvc://m/x/", "format": "onnx"}})
    groups = alerts.rule_groups("x", "ns", spec, alerts.AlertPolicy())
    expressions = " ".join(rule["expr"] for group in groups for rule in group["rules"])
    return {name for name in SERIES_NAME.findall(expressions) if name.startswith("kube_")}


def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


def panels() -> list[dict[str, Any]]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def expressions() -> list[str]:
    queries = [target["expr"] for panel in panels() for target in panel["targets"]]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            # label_values(SELECTOR, label) is Grafana's; the selector inside is PromQL.
            inner = re.fullmatch(r"label_values\((.*), *\w+\)", variable["query"]["query"])
            assert inner, variable["query"]
            queries.append(inner.group(1))
    return queries


def plain_promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unexpanded Grafana variable in {expr}"
    return expr


def test_every_dashboard_query_parses(promtool: Path, tmp_path: Path) -> None:
    rules = [
        {"record": f"dashboard:query_{index}", "expr": plain_promql(expr)}
        for index, expr in enumerate(expressions())
    ]
    (tmp_path / "dashboard.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})
    )
    result = run_promtool(promtool, "check", "rules", "dashboard.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_every_series_the_dashboard_names_is_exported() -> None:
    exported = series_names(runtime_families()) | series_names(operator_families()) | recorded_names()
    named = {name for expr in expressions() for name in SERIES_NAME.findall(expr)}
    # Only Ferry's own series: the dashboard works without kube-state-metrics (the e2e cluster has none).
    unknown = sorted(named - exported)
    assert not unknown, f"the dashboard queries series Ferry does not export: {unknown}"
    # What the dashboard is for: each of these is on it.
    for wanted in (
        "ferry_requests_total",  # throughput, errors
        "ferry_request_duration_seconds_bucket",  # latency percentiles
        "ferry_batch_size_sum",  # batch sizes
        "ferry_queue_duration_seconds_bucket",  # queue time
        "ferry_model_ready",  # ready replicas
        "ferry_operator_modeldeployment_replicas",  # desired replicas
        "ferry_operator_modeldeployments",  # objects by phase
        "ferry_operator_optimizations_total",  # optimization results
        "ferry_model_reference_accuracy_ratio",
        "ferry_feedback_correct_total",  # accuracy
        "ferry_input_drift_psi",  # drift
    ):
        assert wanted in named, f"the dashboard shows nothing from {wanted}"


def test_every_panel_uses_the_datasource_variable_and_describes_itself() -> None:
    document = dashboard()
    assert (document["uid"], document["title"]) == ("ferry-overview", "Ferry overview")
    variables = {variable["name"] for variable in document["templating"]["list"]}
    assert variables == {"datasource", "namespace", "model"}
    ids = [panel["id"] for panel in document["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["description"], panel["title"]
        assert panel["targets"], panel["title"]


def test_metrics_doc_lists_every_exported_family_and_external_series() -> None:
    text = METRICS_DOC.read_text()
    # Whole names in backticks; prefixes such as `ferry_operator_` end in an underscore.
    documented = {
        name for name in re.findall(r"`((?:ferry|kube)_[a-z0-9_]+)`", text) if not name.endswith("_")
    }
    for family in runtime_families() + operator_families():
        name = family.name + ("_total" if family.type == "counter" else "")
        assert name in documented, f"docs/metrics.md does not document {name}"
    assert alert_kube_state_series() == {name for name in documented if name.startswith("kube_")}
    # Every ferry_ series the docs name exists (no documented metric that is not exported).
    families = runtime_families() + operator_families()
    exported = series_names(families) | {family.name for family in families}
    stale = sorted(
        name
        for name in documented
        if name.startswith("ferry_")
        and name not in exported
        and not name.startswith("ferry_operator_optimization")
    )
    assert not stale, f"docs/metrics.md names metrics nobody exports: {stale}"


@pytest.fixture(scope="module")
def helm() -> Path:
    sys.path.insert(0, str(ROOT / "devcluster"))
    from ferry_devcluster import build

    return build.ensure(["helm"])["helm"]


def render(helm: Path, *set_values: str) -> list[dict[str, Any]]:
    command = [str(helm), "template", "ferry", str(ROOT / "charts" / "ferry"), "--namespace", "ferry-system"]
    for item in set_values:
        command += ["--set", item]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return [document for document in yaml.safe_load_all(result.stdout) if document]


def test_chart_ships_the_dashboard_for_the_sidecar_when_enabled(helm: Path) -> None:
    assert not [
        obj for obj in render(helm) if obj["kind"] == "ConfigMap" and "dashboards" in obj["metadata"]["name"]
    ]
    (configmap,) = [
        obj
        for obj in render(helm, "dashboards.enabled=true", "dashboards.namespace=monitoring")
        if obj["kind"] == "ConfigMap"
    ]
    assert configmap["metadata"]["namespace"] == "monitoring"
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "Ferry"}
    assert json.loads(configmap["data"]["ferry-overview.json"]) == dashboard()
