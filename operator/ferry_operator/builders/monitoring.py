"""The ServiceMonitor that tells a Prometheus Operator to scrape the serving pods."""

from __future__ import annotations

from ferry_operator import kinds
from ferry_operator.builders.common import Manifest, metadata, with_input_hash
from ferry_operator.builders.inputs import BuildInputs


def wants_service_monitor(inputs: BuildInputs) -> bool:
    mode = inputs.spec.monitoring.service_monitor
    return mode == "enabled" or (mode == "auto" and inputs.service_monitor_available)


def service_monitor(inputs: BuildInputs) -> Manifest | None:
    """The ServiceMonitor, or None when monitoring.serviceMonitor says not to create one.

    With `enabled` it is built even when the CRD is missing: applying it then fails, and the status says
    that the CRD must be installed, instead of silently not monitoring.
    """
    if not wants_service_monitor(inputs):
        return None
    return with_input_hash(
        {
            "apiVersion": kinds.SERVICE_MONITOR.api_version,
            "kind": kinds.SERVICE_MONITOR.kind,
            "metadata": metadata(inputs.owner),
            "spec": {
                "selector": {"matchLabels": kinds.selector_labels(inputs.owner.name)},
                "endpoints": [{"port": "http", "path": "/metrics", "interval": "30s"}],
            },
        }
    )
