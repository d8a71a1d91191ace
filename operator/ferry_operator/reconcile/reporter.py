"""Reporting a reconcile: the status subresource (written only when it changes), the phase events people
read in `kubectl describe`, and the per-ModelDeployment operator metrics.

One StatusReporter per operator process (the Controller's); its memory is per ModelDeployment and
released by `forget`.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import socket
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from ferry_operator import kinds, metrics
from ferry_operator.api import models
from ferry_operator.builders.inputs import ServedArtifact
from ferry_operator.builders.network import url as service_url
from ferry_operator.kube import ApiError, KubeClient
from ferry_operator.reconcile import conditions, plan, rollout, status
from ferry_operator.reconcile.conditions import Observation
from ferry_operator.reconcile.observe import ModelDeploymentSnapshot, OwnerKey

logger = logging.getLogger("ferry_operator.reconcile")

# Phases whose arrival is worth a Warning event.
WARNING_PHASES = frozenset({"Degraded", "Failed"})


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def model_info(artifact: ServedArtifact | None) -> dict[str, Any]:
    """status.model for the served artifact (also recorded with status.lastReadyRevision)."""
    if artifact is None:
        return {}
    info: dict[str, Any] = {"format": artifact.format, "uri": artifact.uri}
    if artifact.sha256:
        info["digest"] = f"sha256:{artifact.sha256}"
    # What the memory request was sized from: a later reconcile (and a rollback) sizes the same.
    for field, value in (
        ("sizeBytes", artifact.size_bytes),
        ("kvCacheBytesPerToken", artifact.kv_cache_bytes_per_token),
        ("contextLength", artifact.context_length),
    ):
        if value is not None:
            info[field] = value
    return info


class StatusReporter:
    """Writes the status and events of ModelDeployments and keeps their metrics."""

    def __init__(self, client: KubeClient, cluster_domain: str) -> None:
        self.client = client
        self.cluster_domain = cluster_domain
        # Our last status write per object, until the watch delivers it (it lags our own writes).
        self._written_status: dict[OwnerKey, tuple[str, dict[str, Any]]] = {}
        self._phases: dict[OwnerKey, str] = {}
        self._instance = socket.gethostname()

    def current(self, md: ModelDeploymentSnapshot) -> Mapping[str, Any]:
        """The status as the server holds it: our last write when the watch has not delivered it yet."""
        remembered = self._written_status.get(md.key)
        if remembered is not None and plan.older(md.resource_version, remembered[0]):
            return remembered[1]
        return md.status

    async def write(
        self,
        md: ModelDeploymentSnapshot,
        obs: Observation,
        verdicts: dict[models.ConditionType, conditions.Verdict],
        *,
        artifact: ServedArtifact | None,
        rolled_back: rollout.RolledBack | None,
        resolver_status: Mapping[str, Any],
    ) -> bool:
        """Write the status the observation and verdicts make (only the fields that changed); post an
        event on a phase change worth one. Returns whether anything was written."""
        current = self.current(md)
        served = model_info(artifact)
        new = status.compose(
            current,
            obs,
            verdicts,
            now=utc_now(),
            url=service_url(md.name, md.namespace, self.cluster_domain),
            selector=kinds.selector_string(md.name),
            model=served,
            extra={
                **resolver_status,
                "rollback": rolled_back.as_status() if rolled_back else None,
                "lastReadyRevision": rollout.last_ready_status(
                    current.get("lastReadyRevision"),
                    ready=verdicts["Ready"].status == "True",
                    revision=obs.desired_revision,
                    generation=md.generation,
                    spec=md.spec,
                    model=served,
                ),
            },
        )
        self._track_phase(md.key, new["phase"])
        self._track_replicas(md.key, new["replicas"], new["readyReplicas"])
        self._track_rollout(md.key, verdicts["Progressing"])
        patch = status.diff(current, new)
        if patch is None:
            return False
        response = await self.client.patch_status(md.namespace, md.name, patch)
        written = status.applied(current, patch)
        self._written_status[md.key] = (str(response.get("metadata", {}).get("resourceVersion", "")), written)
        if worth_an_event(current.get("phase"), new["phase"]):
            await self._post_phase_event(md, new, verdicts)
        return True

    async def report_invalid_spec(self, md: ModelDeploymentSnapshot, message: str) -> str:
        """Failed/InvalidSpec for a spec the operator cannot parse (a CRD older or newer than it) or
        refuses (policy.py); `message` names the fields."""
        verdict = conditions.Verdict("False", "InvalidSpec", message)
        current = self.current(md)
        new = {
            "observedGeneration": md.generation,
            "phase": "Failed",
            "conditions": conditions.merge(
                current.get("conditions") or [], {"Ready": verdict}, utc_now(), md.generation
            ),
        }
        patch = status.diff(current, {**dict(current), **new})
        if patch:
            await self.client.patch_status(md.namespace, md.name, patch)
        return "status" if patch else "noop"

    @staticmethod
    def unreadable(error: ValidationError) -> str:
        """The message for a spec the operator's models cannot parse, one field after another."""
        problems = "; ".join(
            f"spec.{'.'.join(str(p) for p in problem['loc'])}: {problem['msg']}" for problem in error.errors()
        )
        return f"the operator cannot read the spec: {problems}"

    def forget(self, key: OwnerKey) -> None:
        """Release what is kept for a ModelDeployment that is gone, its metric series included."""
        self._written_status.pop(key, None)
        old = self._phases.pop(key, None)
        if old is not None:
            metrics.MODEL_DEPLOYMENTS.labels(phase=old).dec()
        for state in ("desired", "ready"):
            with contextlib.suppress(KeyError):
                metrics.MODEL_DEPLOYMENT_REPLICAS.remove(*key, state)
        with contextlib.suppress(KeyError):
            metrics.MODEL_DEPLOYMENT_ROLLOUT_STUCK.remove(*key)

    async def _post_phase_event(
        self,
        md: ModelDeploymentSnapshot,
        new: Mapping[str, Any],
        verdicts: Mapping[models.ConditionType, conditions.Verdict],
    ) -> None:
        reason, message = explain_phase(new["phase"], verdicts)
        now = utc_now()
        event = {
            "metadata": {"generateName": f"{md.name}.", "namespace": md.namespace},
            "involvedObject": {
                "apiVersion": models.API_VERSION,
                "kind": models.KIND,
                "name": md.name,
                "namespace": md.namespace,
                "uid": md.uid,
            },
            "type": "Warning" if new["phase"] in WARNING_PHASES else "Normal",
            "reason": reason,
            "message": f"{new['phase']}: {message}"[:1024],
            "source": {"component": "ferry-operator"},
            "reportingComponent": "ferry.dev/operator",
            "reportingInstance": self._instance,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.client.create_event(md.namespace, event)
        except ApiError as error:
            # An event is informational; the status already says the same.
            logger.warning("cannot post event for %s/%s: %s", md.namespace, md.name, error)

    def _track_phase(self, key: OwnerKey, phase: str) -> None:
        old = self._phases.get(key)
        if old == phase:
            return
        if old is not None:
            metrics.MODEL_DEPLOYMENTS.labels(phase=old).dec()
        metrics.MODEL_DEPLOYMENTS.labels(phase=phase).inc()
        self._phases[key] = phase

    def _track_replicas(self, key: OwnerKey, desired: int, ready: int) -> None:
        namespace, name = key
        metrics.MODEL_DEPLOYMENT_REPLICAS.labels(namespace, name, "desired").set(desired)
        metrics.MODEL_DEPLOYMENT_REPLICAS.labels(namespace, name, "ready").set(ready)

    def _track_rollout(self, key: OwnerKey, progressing: conditions.Verdict) -> None:
        # The alert on a stuck rollout reads this rather than kube-state-metrics' Deployment conditions.
        stuck = progressing.status == "False" and progressing.reason == "ProgressDeadlineExceeded"
        metrics.MODEL_DEPLOYMENT_ROLLOUT_STUCK.labels(*key).set(1 if stuck else 0)


def worth_an_event(old: str | None, new: str) -> bool:
    """A phase transition a person wants in `kubectl describe`. The first phase of a new object (Pending or
    Deploying) is not one: the object was just created, and at scale that event would be one more API
    write per object for nothing; its first Ready, an optimization starting or a warning is."""
    if old == new:
        return False
    return old is not None or new not in ("Pending", "Deploying")


def explain_phase(phase: str, verdicts: Mapping[models.ConditionType, conditions.Verdict]) -> tuple[str, str]:
    """The condition that best explains a phase: its reason and message become the event's."""
    order: tuple[models.ConditionType, ...]
    if phase in ("Failed", "Degraded"):
        candidates: tuple[models.ConditionType, ...] = ("ModelResolved", "Optimized", "Deployed", "Degraded")
        failing = [t for t in candidates if t in verdicts]
        for condition_type in failing:
            verdict = verdicts[condition_type]
            if (condition_type == "Degraded") == (verdict.status == "True") and verdict.status != "Unknown":
                return verdict.reason, verdict.message
        order = ("Ready",)
    elif phase == "Optimizing":
        order = ("Optimized",)
    else:
        order = ("Ready", "Progressing")
    for condition_type in order:
        if condition_type in verdicts:
            return verdicts[condition_type].reason, verdicts[condition_type].message
    return phase, phase
