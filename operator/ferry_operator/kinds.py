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
# On cluster-scoped children (which cannot carry an owner reference to a namespaced object), beside
# MODEL_DEPLOYMENT_LABEL: the namespace of the ModelDeployment they belong to.
MODEL_DEPLOYMENT_NAMESPACE_LABEL = f"{models.GROUP}/modeldeployment-namespace"
# On a ModelDeployment that has a cluster-scoped child: it is not removed before the operator deleted
# that child (the garbage collector cannot, see MODEL_DEPLOYMENT_NAMESPACE_LABEL). kopf's own finalizer
# setting names the same (wiring.operator_settings), so there is one Ferry finalizer.
FINALIZER = f"{models.GROUP}/finalizer"

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
    """A Kubernetes resource kind and how to address it over the API."""

    # API group ("" for the core group).
    group: str
    # API version within the group.
    version: str
    # The object's kind, as in its `kind` field.
    kind: str
    # The plural resource name used in URLs.
    plural: str
    # False for cluster-scoped kinds (ClusterRoleBinding): their paths name no namespace.
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def _prefix(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    def cluster_path(self) -> str:
        """The kind's objects in every namespace (for cluster-wide lists and watches)."""
        return f"{self._prefix}/{self.plural}"

    def path(self, namespace: str | None, name: str | None = None, subresource: str | None = None) -> str:
        """The path of the kind's objects in `namespace` (None for a cluster-scoped kind), or of one."""
        if self.namespaced != (namespace is not None):
            raise ValueError(
                f"{self.plural}: namespace {namespace!r} for a kind with namespaced={self.namespaced}"
            )
        path = (
            self.cluster_path()
            if namespace is None
            else f"{self._prefix}/namespaces/{namespace}/{self.plural}"
        )
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
SERVICE_ACCOUNT = Kind("", "v1", "ServiceAccount", "serviceaccounts")
CLUSTER_ROLE_BINDING = Kind(
    "rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", namespaced=False
)
NETWORK_POLICY = Kind("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies")
POD = Kind("", "v1", "Pod", "pods")
JOB = Kind("batch", "v1", "Job", "jobs")
EVENT = Kind("", "v1", "Event", "events")

# Every kind a ModelDeployment may own, in the order they are applied (see WAVES).
CHILD_KINDS: tuple[Kind, ...] = (
    SERVICE_ACCOUNT,
    CLUSTER_ROLE_BINDING,
    NETWORK_POLICY,
    SERVICE,
    DEPLOYMENT,
    POD_DISRUPTION_BUDGET,
    HORIZONTAL_POD_AUTOSCALER,
    SERVICE_MONITOR,
    PROMETHEUS_RULE,
)
# Children the serving pods need while they run, besides the Deployment (auth mode kubernetes): kept until
# no pod of an earlier revision is left, so the pods of a rollout that leaves kubernetes mode keep
# working until they are replaced.
POD_DEPENDENCY_KINDS: frozenset[Kind] = frozenset({SERVICE_ACCOUNT, CLUSTER_ROLE_BINDING})
# Children applied together, wave after wave: first what the serving pods need before they start (their
# service account: a pod naming a missing one is refused; its TokenReview grant), then the children that
# refer to no other child (the NetworkPolicy among them: in place within the round trip that creates the
# pods, long before their model is loaded), then the rest (which refer to the Deployment). An empty wave
# costs nothing.
WAVES: tuple[frozenset[Kind], ...] = (
    POD_DEPENDENCY_KINDS,
    frozenset({NETWORK_POLICY, SERVICE, DEPLOYMENT, POD_DISRUPTION_BUDGET}),
    frozenset({HORIZONTAL_POD_AUTOSCALER, SERVICE_MONITOR, PROMETHEUS_RULE}),
)
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


def child_name(kind: Kind, namespace: str, name: str) -> str:
    """The fixed name of ModelDeployment `namespace/name`'s child of `kind` (most are named after it)."""
    if kind == SERVICE_ACCOUNT:
        return service_account_name(name)
    if kind == CLUSTER_ROLE_BINDING:
        return token_review_binding_name(namespace, name)
    return name


def service_account_name(name: str) -> str:
    """The serving pods' own service account (mode kubernetes): apart from the model's other names, so it
    is not mistaken for (or taken over from) an application's service account named like the model."""
    return f"{name}-model"


def token_review_binding_name(namespace: str, name: str) -> str:
    """The ClusterRoleBinding that lets the serving pods create TokenReviews. Cluster-scoped, so its name
    carries the namespace. ':' separates the parts because neither a namespace nor a ModelDeployment name
    (DNS labels) can hold one, so no two ModelDeployments share a name, as "a-b"+"c" and "a"+"b-c" would
    with '-'; at most 17 + 63 + 1 + 63 characters, well within the 253 a name may have."""
    return f"ferry:tokenreview:{namespace}:{name}"


def selector_string(name: str) -> str:
    """The label selector of the serving pods, in the string form the scale subresource reports."""
    return ",".join(f"{key}={value}" for key, value in selector_labels(name).items())
