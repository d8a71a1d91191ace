"""Pure builders: one ModelDeployment's resolved inputs -> the manifests of its children.

No I/O and no clock: the same inputs give byte-identical manifests (golden-file tested), which is what
makes the input-hash annotation meaningful and the reconcile idempotent.
"""

from __future__ import annotations

from ferry_operator import kinds
from ferry_operator.builders.auth import service_account, token_review_binding
from ferry_operator.builders.common import Manifest
from ferry_operator.builders.inputs import BuildInputs
from ferry_operator.builders.monitoring import prometheus_rule, service_monitor
from ferry_operator.builders.network import network_policy, service
from ferry_operator.builders.scaling import horizontal_pod_autoscaler, pod_disruption_budget
from ferry_operator.builders.serving import deployment


def desired_replicas(inputs: BuildInputs) -> int | None:
    """The Deployment's replica count, or None when an autoscaler owns it."""
    serving = inputs.spec.serving
    if serving.autoscaling is not None:
        return None
    return serving.replicas if serving.replicas is not None else 1


def pod_dependencies(inputs: BuildInputs) -> dict[kinds.Kind, Manifest]:
    """The children the serving pods of `inputs` cannot work without, besides the Deployment itself: a
    rollback to an earlier revision keeps those of the revision it returns to."""
    children = {
        kinds.SERVICE_ACCOUNT: service_account(inputs),
        kinds.CLUSTER_ROLE_BINDING: token_review_binding(inputs),
    }
    return {kind: manifest for kind, manifest in children.items() if manifest is not None}


def desired_children(inputs: BuildInputs) -> dict[kinds.Kind, Manifest]:
    """Every child the ModelDeployment should have, by kind; kinds absent here are pruned."""
    children: dict[kinds.Kind, Manifest | None] = {
        **pod_dependencies(inputs),
        kinds.NETWORK_POLICY: network_policy(inputs),
        kinds.SERVICE: service(inputs),
        kinds.DEPLOYMENT: deployment(inputs, desired_replicas(inputs)),
        kinds.POD_DISRUPTION_BUDGET: pod_disruption_budget(inputs),
        kinds.HORIZONTAL_POD_AUTOSCALER: horizontal_pod_autoscaler(inputs),
        kinds.SERVICE_MONITOR: service_monitor(inputs),
        kinds.PROMETHEUS_RULE: prometheus_rule(inputs),
    }
    return {kind: manifest for kind, manifest in children.items() if manifest is not None}
