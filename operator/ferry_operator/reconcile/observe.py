"""What the operator keeps of the objects it watches: small immutable snapshots, not whole bodies.

The watch caches (informer.py) hold one snapshot per watched object (keyed by its owner), so a reconcile
reads the observed state from memory instead of GETting it; at 500 ModelDeployments that is the difference
between a few and a few thousand requests per resync, and memory stays flat because only these fields are
kept.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ferry_operator import kinds
from ferry_operator.api import models

OwnerKey = tuple[str, str]  # (namespace, ModelDeployment name)


@dataclasses.dataclass(frozen=True)
class DeploymentState:
    """The serving Deployment's rollout state, as its controller reports it."""

    generation: int
    observed_generation: int
    # spec.replicas (None: unset, the API default of 1 applies).
    spec_replicas: int | None
    replicas: int
    updated_replicas: int
    ready_replicas: int
    available_replicas: int
    # ferry.dev/revision of the pod template the Deployment runs.
    revision: str | None
    # type -> (status, reason, message) of the Deployment's conditions.
    conditions: Mapping[str, tuple[str, str, str]]
    # Whether the operator's field manager owns spec.replicas (see the autoscaler handover).
    replicas_owned_by_operator: bool


@dataclasses.dataclass(frozen=True)
class ChildSnapshot:
    """One child object of a ModelDeployment."""

    kind: kinds.Kind
    name: str
    uid: str
    # metadata.generation (0 for kinds without one, e.g. Service).
    generation: int
    resource_version: str
    # ferry.dev/input-hash the object carries (None: not applied by Ferry, or edited away).
    input_hash: str | None
    # Only for the Deployment.
    deployment: DeploymentState | None = None


@dataclasses.dataclass(frozen=True)
class PodProblem:
    """A serving pod in trouble, with what a person needs to know."""

    pod: str
    # FetchFailed (the model could not be fetched) or a container waiting reason (CrashLoopBackOff,
    # ImagePullBackOff, ...).
    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class PodSnapshot:
    """A serving pod: whether it got past fetching the model, and what is wrong with it if anything."""

    name: str
    fetched: bool
    problem: PodProblem | None
    # ferry.dev/revision of the template the pod was made from (None: not made by a Ferry Deployment).
    revision: str | None = None
    # The most restarts of any of its containers (init containers included): how long a problem lasted.
    restarts: int = 0


def owner_key(body: Mapping[str, Any]) -> OwnerKey | None:
    """The ModelDeployment controlling `body`, from its controller owner reference (labels can be copied;
    an owner reference with the owner's kind is what the operator itself wrote)."""
    meta = body.get("metadata", {})
    for reference in meta.get("ownerReferences") or []:
        if (
            reference.get("controller")
            and reference.get("kind") == models.KIND
            and str(reference.get("apiVersion", "")).startswith(models.GROUP + "/")
        ):
            return (str(meta.get("namespace", "")), str(reference.get("name", "")))
    return None


def labelled_namespace(body: Mapping[str, Any]) -> str:
    """The namespace a cluster-scoped child belongs to (its ModelDeployment's), "" when unlabelled."""
    labels = body.get("metadata", {}).get("labels") or {}
    return str(labels.get(kinds.MODEL_DEPLOYMENT_NAMESPACE_LABEL, ""))


def labelled_owner_key(body: Mapping[str, Any]) -> OwnerKey | None:
    """The ModelDeployment a cluster-scoped child belongs to, from its labels: such a child cannot carry
    an owner reference to a namespaced object (the garbage collector would never resolve it)."""
    labels = body.get("metadata", {}).get("labels") or {}
    name = labels.get(kinds.MODEL_DEPLOYMENT_LABEL)
    namespace = labels.get(kinds.MODEL_DEPLOYMENT_NAMESPACE_LABEL)
    if not name or not namespace or labels.get(kinds.MANAGED_BY_LABEL) != kinds.MANAGED_BY:
        return None
    return (str(namespace), str(name))


def pod_owner_key(body: Mapping[str, Any]) -> OwnerKey | None:
    """Pods are owned by a ReplicaSet; the ModelDeployment label on the template says whose they are."""
    meta = body.get("metadata", {})
    labels = meta.get("labels") or {}
    name = labels.get(kinds.MODEL_DEPLOYMENT_LABEL)
    if not name or labels.get(kinds.MANAGED_BY_LABEL) != kinds.MANAGED_BY:
        return None
    return (str(meta.get("namespace", "")), str(name))


def child_snapshot(kind: kinds.Kind, body: Mapping[str, Any]) -> ChildSnapshot:
    meta = body.get("metadata", {})
    annotations = meta.get("annotations") or {}
    return ChildSnapshot(
        kind=kind,
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        generation=int(meta.get("generation") or 0),
        resource_version=str(meta.get("resourceVersion", "")),
        input_hash=annotations.get(kinds.INPUT_HASH_ANNOTATION),
        deployment=deployment_state(body) if kind == kinds.DEPLOYMENT else None,
    )


def deployment_state(body: Mapping[str, Any]) -> DeploymentState:
    meta = body.get("metadata", {})
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    template_annotations = ((spec.get("template") or {}).get("metadata") or {}).get("annotations") or {}
    return DeploymentState(
        generation=int(meta.get("generation") or 0),
        observed_generation=int(status.get("observedGeneration") or 0),
        spec_replicas=spec.get("replicas"),
        replicas=int(status.get("replicas") or 0),
        updated_replicas=int(status.get("updatedReplicas") or 0),
        ready_replicas=int(status.get("readyReplicas") or 0),
        available_replicas=int(status.get("availableReplicas") or 0),
        revision=template_annotations.get(kinds.REVISION_ANNOTATION),
        conditions={
            str(c.get("type")): (
                str(c.get("status", "")),
                str(c.get("reason", "")),
                str(c.get("message", "")),
            )
            for c in status.get("conditions") or []
        },
        replicas_owned_by_operator=_owns_replicas(meta.get("managedFields") or [], kinds.FIELD_MANAGER),
    )


def _owns_replicas(managed_fields: list[Mapping[str, Any]], manager: str) -> bool:
    for entry in managed_fields:
        if (
            entry.get("manager") == manager
            and entry.get("operation") == "Apply"
            and not entry.get("subresource")
        ):
            fields = entry.get("fieldsV1") or {}
            if "f:replicas" in (fields.get("f:spec") or {}):
                return True
    return False


def pod_snapshot(body: Mapping[str, Any]) -> PodSnapshot:
    meta = body.get("metadata", {})
    status = body.get("status") or {}
    name = str(meta.get("name", ""))
    fetched = False
    problem: PodProblem | None = None
    init_statuses = status.get("initContainerStatuses") or []
    container_statuses = status.get("containerStatuses") or []
    for init in init_statuses:
        terminated = (init.get("state") or {}).get("terminated") or {}
        last = (init.get("lastState") or {}).get("terminated") or {}
        if terminated.get("exitCode") == 0:
            fetched = True
        failed = terminated if terminated.get("exitCode") not in (None, 0) else last
        if failed.get("exitCode") not in (None, 0) and not fetched:
            detail = (failed.get("message") or failed.get("reason") or "").strip()
            problem = PodProblem(name, "FetchFailed", f"ferry-fetch exited {failed['exitCode']}: {detail}")
    for container in container_statuses:
        if container.get("ready") or (container.get("state") or {}).get("running"):
            fetched = True
        if problem is None:
            problem = _waiting_problem(name, container)
    if problem is None:
        for condition in status.get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("reason") == "Unschedulable":
                problem = PodProblem(name, "Unschedulable", str(condition.get("message", "")).strip())
    if problem is None:
        for init in init_statuses:
            problem = problem or _waiting_problem(name, init)
    annotations = meta.get("annotations") or {}
    return PodSnapshot(
        name=name,
        fetched=fetched,
        problem=problem,
        revision=annotations.get(kinds.REVISION_ANNOTATION),
        restarts=max(
            (int(c.get("restartCount") or 0) for c in (*init_statuses, *container_statuses)), default=0
        ),
    )


def _waiting_problem(pod: str, container: Mapping[str, Any]) -> PodProblem | None:
    """A container waiting for a reason that will not clear up by itself. For a crash loop the message is the
    container's last words (its termination message, e.g. the runtime's "cannot serve model ..."), which
    say why; the kubelet's "back-off 40s restarting failed container" does not."""
    waiting = (container.get("state") or {}).get("waiting") or {}
    reason = waiting.get("reason")
    if reason not in _PROBLEM_WAITING_REASONS:
        return None
    message = str(waiting.get("message", "")).strip()
    last = (container.get("lastState") or {}).get("terminated") or {}
    if reason == "CrashLoopBackOff" and last:
        words = str(last.get("message") or last.get("reason") or "").strip()
        message = f"exited {last.get('exitCode')}" + (f": {words}" if words else "")
    return PodProblem(pod, str(reason), message)


# Container waiting reasons that will not clear up by themselves.
_PROBLEM_WAITING_REASONS = frozenset(
    {
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "ErrImagePull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
    }
)


@dataclasses.dataclass(frozen=True)
class ModelDeploymentSnapshot:
    """A ModelDeployment as last seen by the watch: identity, spec and status."""

    namespace: str
    name: str
    uid: str
    generation: int
    resource_version: str
    spec: Mapping[str, Any]
    status: Mapping[str, Any]
    # metadata.deletionTimestamp is set: the object waits for its finalizers.
    deleting: bool = False
    # metadata.finalizers.
    finalizers: tuple[str, ...] = ()

    @property
    def key(self) -> OwnerKey:
        return (self.namespace, self.name)


def model_deployment_snapshot(body: Mapping[str, Any]) -> ModelDeploymentSnapshot:
    meta = body.get("metadata", {})
    return ModelDeploymentSnapshot(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        generation=int(meta.get("generation") or 0),
        resource_version=str(meta.get("resourceVersion", "")),
        spec=dict(body.get("spec") or {}),
        status=dict(body.get("status") or {}),
        deleting=bool(meta.get("deletionTimestamp")),
        finalizers=tuple(str(f) for f in meta.get("finalizers") or ()),
    )


def model_deployment_key(body: Mapping[str, Any]) -> OwnerKey:
    meta = body.get("metadata", {})
    return (str(meta.get("namespace", "")), str(meta.get("name", "")))


def child_entry(kind: kinds.Kind, body: Mapping[str, Any]) -> tuple[OwnerKey, ChildSnapshot] | None:
    """A watch cache entry: the child's snapshot under its owner's key (None for orphans)."""
    key = owner_key(body) if kind.namespaced else labelled_owner_key(body)
    return None if key is None else (key, child_snapshot(kind, body))


def pod_entry(body: Mapping[str, Any]) -> tuple[OwnerKey, PodSnapshot] | None:
    key = pod_owner_key(body)
    return None if key is None else (key, pod_snapshot(body))


def model_deployment_entry(body: Mapping[str, Any]) -> tuple[OwnerKey, ModelDeploymentSnapshot]:
    snapshot = model_deployment_snapshot(body)
    return snapshot.key, snapshot
