"""Replica management children: the HorizontalPodAutoscaler and the PodDisruptionBudget."""

from __future__ import annotations

from typing import Any

from ferry_operator import kinds
from ferry_operator.api import models
from ferry_operator.builders.common import Manifest, metadata, with_input_hash
from ferry_operator.builders.inputs import BuildInputs

# Per-pod targets when spec.serving.autoscaling.target is unset (documented on the field).
DEFAULT_TARGETS = {"cpu": 70, "concurrency": 8, "rps": 50, "queue": 2}


def autoscaling_metric(inputs: BuildInputs) -> dict[str, Any]:
    """The autoscaling/v2 metric for spec.serving.autoscaling.metric.

    cpu is a Resource metric (metrics-server); concurrency, rps and queue are Pods metrics that a custom
    metrics adapter serves from the runtime's Prometheus series (the prometheus-adapter rules in
    docs/operator.md#autoscaling, which `devcluster adapter up` runs), so adding a metric is one more
    branch here.
    """
    autoscaling = inputs.spec.serving.autoscaling
    assert autoscaling is not None
    target = autoscaling.target if autoscaling.target is not None else DEFAULT_TARGETS[autoscaling.metric]
    if autoscaling.metric == "cpu":
        return {
            "type": "Resource",
            "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": target}},
        }
    metric_name = {
        "concurrency": inputs.defaults.concurrency_metric,
        "rps": inputs.defaults.rps_metric,
        "queue": inputs.defaults.queue_metric,
    }[autoscaling.metric]
    return {
        "type": "Pods",
        "pods": {
            "metric": {"name": metric_name},
            "target": {"type": "AverageValue", "averageValue": str(target)},
        },
    }


def behavior(autoscaling: models.Autoscaling) -> dict[str, Any]:
    """The HPA's spec.behavior for what autoscaling.scaleUp/scaleDown set (empty: Kubernetes' defaults)."""
    directions = {"scaleUp": autoscaling.scale_up, "scaleDown": autoscaling.scale_down}
    return {
        name: {"stabilizationWindowSeconds": direction.stabilization_window_seconds}
        for name, direction in directions.items()
        if direction is not None and direction.stabilization_window_seconds is not None
    }


def horizontal_pod_autoscaler(inputs: BuildInputs) -> Manifest | None:
    """The autoscaler of the serving Deployment, or None without spec.serving.autoscaling."""
    autoscaling = inputs.spec.serving.autoscaling
    if autoscaling is None:
        return None
    spec: dict[str, Any] = {
        # The HPA scales the Deployment, not the ModelDeployment: with autoscaling on, the
        # ModelDeployment has no replica count of its own (see docs/operator.md).
        "scaleTargetRef": {
            "apiVersion": kinds.DEPLOYMENT.api_version,
            "kind": kinds.DEPLOYMENT.kind,
            "name": inputs.owner.name,
        },
        "minReplicas": autoscaling.min_replicas,
        "maxReplicas": autoscaling.max_replicas,
        "metrics": [autoscaling_metric(inputs)],
    }
    scale_behavior = behavior(autoscaling)
    if scale_behavior:
        spec["behavior"] = scale_behavior
    return with_input_hash(
        {
            "apiVersion": kinds.HORIZONTAL_POD_AUTOSCALER.api_version,
            "kind": kinds.HORIZONTAL_POD_AUTOSCALER.kind,
            "metadata": metadata(inputs.owner),
            "spec": spec,
        }
    )


def pod_disruption_budget(inputs: BuildInputs) -> Manifest:
    """At most one serving pod is evicted at a time (node drains, cluster upgrades)."""
    return with_input_hash(
        {
            "apiVersion": kinds.POD_DISRUPTION_BUDGET.api_version,
            "kind": kinds.POD_DISRUPTION_BUDGET.kind,
            "metadata": metadata(inputs.owner),
            "spec": {
                "maxUnavailable": 1,
                "selector": {"matchLabels": kinds.selector_labels(inputs.owner.name)},
                # Pods that never became ready may be evicted: a broken rollout must not block a drain.
                "unhealthyPodEvictionPolicy": "AlwaysAllow",
            },
        }
    )
