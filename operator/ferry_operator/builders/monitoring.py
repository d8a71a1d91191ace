"""The Prometheus Operator children: a ServiceMonitor that scrapes the serving pods, and a PrometheusRule
with the model's alerts (the rules themselves are built in alerts.py)."""

from __future__ import annotations

from typing import Literal

from ferry_operator import kinds
from ferry_operator.builders import alerts
from ferry_operator.builders.common import Manifest, metadata, with_input_hash
from ferry_operator.builders.inputs import BuildInputs
from ferry_operator.builders.serving import metrics_port

Mode = Literal["auto", "enabled", "disabled"]


def mode(kind: kinds.Kind, inputs: BuildInputs) -> Mode:
    """What spec.monitoring says about a monitoring kind."""
    monitoring = inputs.spec.monitoring
    return monitoring.service_monitor if kind == kinds.SERVICE_MONITOR else monitoring.prometheus_rule


def wanted(kind: kinds.Kind, inputs: BuildInputs) -> bool:
    """`auto` follows the CRD; `enabled` is built even when the CRD is missing: applying it then fails and
    the status says that the CRD must be installed, instead of silently not monitoring."""
    asked = mode(kind, inputs)
    return asked == "enabled" or (asked == "auto" and kind in inputs.monitoring_kinds)


def service_monitor(inputs: BuildInputs) -> Manifest | None:
    """The ServiceMonitor, or None when monitoring.serviceMonitor says not to create one."""
    if not wanted(kinds.SERVICE_MONITOR, inputs):
        return None
    return with_input_hash(
        {
            "apiVersion": kinds.SERVICE_MONITOR.api_version,
            "kind": kinds.SERVICE_MONITOR.kind,
            "metadata": metadata(inputs.owner),
            "spec": {
                "selector": {"matchLabels": kinds.selector_labels(inputs.owner.name)},
                # The Service port named like the pods' metrics port: `metrics` with spec.serving.network.
                "endpoints": [{"port": metrics_port(inputs)[0], "path": "/metrics", "interval": "30s"}],
            },
        }
    )


def prometheus_rule(inputs: BuildInputs) -> Manifest | None:
    """The PrometheusRule with the model's alerts, or None when monitoring.prometheusRule says not to."""
    if not wanted(kinds.PROMETHEUS_RULE, inputs):
        return None
    owner = inputs.owner
    return with_input_hash(
        {
            "apiVersion": kinds.PROMETHEUS_RULE.api_version,
            "kind": kinds.PROMETHEUS_RULE.kind,
            "metadata": metadata(owner),
            "spec": {
                "groups": alerts.rule_groups(owner.name, owner.namespace, inputs.spec, alerts.AlertPolicy())
            },
        }
    )
