"""The Kubernetes kinds the operator owns or watches, the labels it sets, and where their API lives.

One home for names that the builders, the reconcile and the handlers must agree on.
"""

from __future__ import annotations

import dataclasses

from ferry_operator.api import models

# Server-side apply field manager: the fields Ferry sets on its children are owned under this name.
FIELD_MANAGER = "ferry-operator"
# Holds a Deployment's replica count while it is handed over to a HorizontalPodAutoscaler (see reconcile).
REPLICAS_HANDOVER_MANAGER = "ferry-operator-replicas-handover"

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "ferry"
NAME_LABEL = "app.kubernetes.io/name"
APP_NAME = "ferry-model"
INSTANCE_LABEL = "app.kubernetes.io/instance"
PART_OF_LABEL = "app.kubernetes.io/part-of"
MODEL_DEPLOYMENT_LABEL = f"{models.GROUP}/modeldeployment"

# Digest of everything a child is built from: equal digest, nothing to apply.
INPUT_HASH_ANNOTATION = f"{models.GROUP}/input-hash"
# Digest of the serving pod template: what status.revision reports.
REVISION_ANNOTATION = f"{models.GROUP}/revision"
# On optimization Job pods instead of MODEL_DEPLOYMENT_LABEL (which would make them serving pods): the
# ModelDeployment whose model they optimize.
OPTIMIZATION_OF_LABEL = f"{models.GROUP}/optimization-of"
# The full content key an optimization Job runs (its name carries only a prefix).
OPTIMIZATION_KEY_ANNOTATION = f"{models.GROUP}/optimization-key"


@dataclasses.dataclass(frozen=True)
class Kind:
    """A namespaced Kubernetes resource kind and how to address it over the API."""

    # API group ("" for the core group).
    group: str
    # API version within the group.
    version: str
    # The object's kind, as in its `kind` field.
    kind: str
    # The plural resource name used in URLs.
    plural: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def _prefix(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    def cluster_path(self) -> str:
        """The kind's objects in every namespace (for cluster-wide lists and watches)."""
        return f"{self._prefix}/{self.plural}"

    def path(self, namespace: str, name: str | None = None, subresource: str | None = None) -> str:
        path = f"{self._prefix}/namespaces/{namespace}/{self.plural}"
        if name is not None:
            path += f"/{name}"
        if subresource is not None:
            path += f"/{subresource}"
        return path


MODEL_DEPLOYMENT = Kind(models.GROUP, models.VERSION, models.KIND, models.PLURAL)
DEPLOYMENT = Kind("apps", "v1", "Deployment", "deployments")
SERVICE = Kind("", "v1", "Service", "services")
HORIZONTAL_POD_AUTOSCALER = Kind("autoscaling", "v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers")
POD_DISRUPTION_BUDGET = Kind("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets")
SERVICE_MONITOR = Kind("monitoring.coreos.com", "v1", "ServiceMonitor", "servicemonitors")
PROMETHEUS_RULE = Kind("monitoring.coreos.com", "v1", "PrometheusRule", "prometheusrules")
NETWORK_POLICY = Kind("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies")
POD = Kind("", "v1", "Pod", "pods")
JOB = Kind("batch", "v1", "Job", "jobs")
EVENT = Kind("", "v1", "Event", "events")

# Every kind a ModelDeployment may own (the autoscaler is applied after its target exists: FIRST_WAVE).
CHILD_KINDS: tuple[Kind, ...] = (
    NETWORK_POLICY,
    SERVICE,
    DEPLOYMENT,
    POD_DISRUPTION_BUDGET,
    HORIZONTAL_POD_AUTOSCALER,
    SERVICE_MONITOR,
    PROMETHEUS_RULE,
)
# Children that refer to no other child: applied together, before the rest (which refer to the Deployment).
# The NetworkPolicy is one of them: in place within the round trip that creates the pods, long before
# their model is loaded.
FIRST_WAVE: frozenset[Kind] = frozenset({NETWORK_POLICY, SERVICE, DEPLOYMENT, POD_DISRUPTION_BUDGET})
# Kinds of the optional Prometheus Operator API (monitoring.coreos.com): created only where it is installed.
MONITORING_KINDS: tuple[Kind, ...] = (SERVICE_MONITOR, PROMETHEUS_RULE)


def selector_labels(name: str) -> dict[str, str]:
    """Labels that select a ModelDeployment's serving pods (immutable once the Deployment exists)."""
    return {MODEL_DEPLOYMENT_LABEL: name}


def child_labels(name: str) -> dict[str, str]:
    """Labels on every child and serving pod of ModelDeployment `name`."""
    return {
        NAME_LABEL: APP_NAME,
        INSTANCE_LABEL: name,
        PART_OF_LABEL: "ferry",
        MANAGED_BY_LABEL: MANAGED_BY,
        MODEL_DEPLOYMENT_LABEL: name,
    }


def selector_string(name: str) -> str:
    """The label selector of the serving pods, in the string form the scale subresource reports."""
    return ",".join(f"{key}={value}" for key, value in selector_labels(name).items())
