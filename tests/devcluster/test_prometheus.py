"""The scrape configuration generated from ServiceMonitors: accepted by promtool, and its relabelings keep
exactly the targets a ServiceMonitor selects (evaluated with Prometheus's keep/drop semantics: the source
labels joined by `;` must match the anchored regex) among the targets the discovery writes for Services,
Endpoints and Pods."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ferry_devcluster import cli, prometheus
from ferry_devcluster.config import PORT_OFFSETS

TARGETS = Path("/state/prometheus/endpoints.json")


def monitor(name: str = "digits", namespace: str = "demo", **spec: Any) -> dict[str, Any]:
    """A ServiceMonitor as the operator builds it (builders/monitoring.py), with overrides."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/instance": name}},
            "endpoints": [{"port": "http", "path": "/metrics", "interval": "30s"}],
            **spec,
        },
    }


def generate(*monitors: dict[str, Any]) -> dict[str, Any]:
    return prometheus.scrape_configuration(monitors, TARGETS)


def discovered(service_labels: dict[str, str], namespace: str = "demo") -> list[dict[str, str]]:
    """The labels of each target the discovery writes for one Service `digits` with ports http (8080) and
    grpc (8081) and one ready pod, plus __address__."""
    service = {"metadata": {"name": "digits", "namespace": namespace, "labels": service_labels}}
    endpoints = {
        "metadata": {"name": "digits", "namespace": namespace},
        "subsets": [
            {
                "addresses": [
                    {
                        "ip": "10.244.0.7",
                        "nodeName": "real-node-0",
                        "targetRef": {"kind": "Pod", "name": "digits-abc"},
                    }
                ],
                "ports": [{"name": "http", "port": 8080}, {"name": "grpc", "port": 8081}],
            }
        ],
    }
    pod = {
        "metadata": {"name": "digits-abc", "namespace": namespace, "uid": "u1"},
        "spec": {
            "nodeName": "real-node-0",
            "containers": [
                {
                    "name": "runtime",
                    "ports": [
                        {"name": "http", "containerPort": 8080},
                        {"name": "grpc", "containerPort": 8081},
                    ],
                }
            ],
        },
        "status": {"podIP": "10.244.0.7", "phase": "Running"},
    }
    groups = prometheus.endpoint_targets([service], [endpoints], [pod])
    return [{"__address__": group["targets"][0], **group["labels"]} for group in groups]


def kept(
    job: dict[str, Any], service_labels: dict[str, str], namespace: str = "demo"
) -> list[dict[str, str]]:
    results = [relabel(job["relabel_configs"], labels) for labels in discovered(service_labels, namespace)]
    return [labels for labels in results if labels is not None]


def relabel(rules: list[dict[str, Any]], labels: dict[str, str]) -> dict[str, str] | None:
    """Prometheus's relabel semantics for the actions the generator uses (keep, drop, replace)."""
    labels = dict(labels)
    for rule in rules:
        value = ";".join(labels.get(source, "") for source in rule.get("source_labels", []))
        match = re.fullmatch(rule.get("regex", "(.*)"), value)
        action = rule.get("action", "replace")
        if action == "keep" and not match:
            return None
        if action == "drop" and match:
            return None
        if action == "replace" and match:
            labels[rule["target_label"]] = match.expand(rule.get("replacement", r"\1").replace("$1", r"\1"))
    return {key: value for key, value in labels.items() if not key.startswith("__meta_")}


def test_one_job_per_endpoint_scoped_to_the_monitors_namespace_with_its_path_and_interval() -> None:
    generated = generate(
        monitor(endpoints=[{"port": "http", "path": "/metrics", "interval": "5s"}, {"port": "grpc"}])
    )
    first, second = generated["scrape_configs"]
    assert first["job_name"] == "serviceMonitor/demo/digits/0"
    assert second["job_name"] == "serviceMonitor/demo/digits/1"
    assert (first["scrape_interval"], first["metrics_path"], first["scheme"]) == ("5s", "/metrics", "http")
    assert (second["scrape_interval"], second["metrics_path"]) == ("30s", "/metrics")
    (discovery,) = first["file_sd_configs"]
    assert discovery == {"files": [str(TARGETS)], "refresh_interval": "5s"}


def test_relabelings_keep_the_selected_services_port_and_give_the_operators_target_labels() -> None:
    (job,) = generate(monitor())["scrape_configs"]
    selected = {"app.kubernetes.io/instance": "digits", "app.kubernetes.io/name": "ferry"}
    assert kept(job, selected) == [
        {
            "__address__": "10.244.0.7:8080",
            "namespace": "demo",
            "service": "digits",
            "pod": "digits-abc",
            "container": "runtime",
            "job": "digits",
            "endpoint": "http",
        }
    ]
    assert kept(job, selected, namespace="other") == []
    assert kept(job, {"app.kubernetes.io/instance": "other"}) == []
    assert kept(job, {}) == []


def test_match_expressions_namespace_selector_and_job_label() -> None:
    spec = monitor(
        selector={
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["serving", "canary"]},
                {"key": "deprecated", "operator": "DoesNotExist"},
            ]
        },
        namespaceSelector={"any": True},
        jobLabel="tier",
    )
    (job,) = generate(spec)["scrape_configs"]
    (canary,) = kept(job, {"tier": "canary"}, namespace="anywhere")
    assert canary["job"] == "canary"
    assert kept(job, {"tier": "batch"}) == []
    assert kept(job, {"tier": "serving", "deprecated": "yes"}) == []


def test_unsupported_operator_and_missing_port_are_named() -> None:
    bad = monitor(selector={"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]})
    with pytest.raises(prometheus.PrometheusError, match=r"operator must be In, NotIn.*got 'Gt'"):
        generate(bad)
    with pytest.raises(prometheus.PrometheusError, match=r"endpoints\[0\]: set port"):
        generate(monitor(endpoints=[{"path": "/metrics"}]))


def test_the_same_monitors_in_any_order_give_the_same_file() -> None:
    a, b = monitor("a", "x"), monitor("b", "y")
    assert generate(a, b) == generate(b, a)


def test_promtool_accepts_the_generated_configuration(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: run scripts/install-system-deps.sh (Debian package prometheus)")
    rule = {
        "metadata": {"name": "digits", "namespace": "demo"},
        "spec": {
            "groups": [
                {
                    "name": "ferry.demo.digits.slo",
                    "rules": [
                        {"record": "ferry:requests:rate5m", "expr": "sum(rate(ferry_requests_total[5m]))"}
                    ],
                }
            ]
        },
    }
    rules = tmp_path / prometheus.rule_file_name(rule)
    rules.write_text(json.dumps(prometheus.rule_file(rule)))
    generated = prometheus.scrape_configuration(
        [monitor(), monitor("b", "other")], tmp_path / "targets.json", [rules]
    )
    (tmp_path / "targets.json").write_text(json.dumps(prometheus.endpoint_targets([], [], [])))
    path = tmp_path / "prometheus.yml"
    path.write_text(json.dumps(generated))
    checked = subprocess.run(
        [promtool, "check", "config", str(path)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 1 rules found" in checked.stdout + checked.stderr


def test_prometheus_has_its_own_port_and_command() -> None:
    assert PORT_OFFSETS["prometheus"] not in {v for k, v in PORT_OFFSETS.items() if k != "prometheus"}
    args = cli.build_parser().parse_args(["prometheus", "up"])
    assert (args.command, args.action) == ("prometheus", "up")
