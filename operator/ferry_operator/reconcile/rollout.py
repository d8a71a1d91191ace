"""Automatic rollback (spec.rollout.autoRollback): a pure decision from what was observed.

A new revision's rollout has failed when the Deployment controller declares it stuck (Progressing=False,
ProgressDeadlineExceeded) or when one of its pods crash-loops or fails to fetch the model
`FAILED_RESTARTS` times. Then, with autoRollback on and an earlier revision that was Ready, the operator
rebuilds the serving Deployment from the spec and artifact recorded in status.lastReadyRevision and
records the rollback in status.rollback. Its old pods never stopped serving (the rollout strategy keeps
capacity), so the rollback only removes the failing new pods.

The rollback holds while the spec generation that failed is current, so the same broken spec is not
retried in a loop; any spec change is a new attempt (Knative and Argo Rollouts behave the same way). The
record lives in the status, so a restarted operator keeps it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import ValidationError

from ferry_operator.api import models
from ferry_operator.builders.inputs import ServedArtifact
from ferry_operator.reconcile.observe import DeploymentState, PodSnapshot

# Restarts after which a crash-looping or fetch-failing pod of a new revision fails its rollout. The
# kubelet's back-off (10 s, 20 s, 40 s, ...) makes that about a minute: long enough for a slow start, short
# enough that a broken model does not wait out a progress deadline of several minutes.
FAILED_RESTARTS = 3
# Pod problems that restarting does not cure, counted against FAILED_RESTARTS.
CRASH_REASONS = frozenset({"CrashLoopBackOff", "FetchFailed"})
ROLLED_BACK = "RolledBack"
ROLLOUT_FAILED = "RolloutFailed"


@dataclasses.dataclass(frozen=True)
class LastReady:
    """status.lastReadyRevision, parsed: the revision to return to and what it was built from."""

    revision: str
    generation: int
    spec: models.ModelDeploymentSpec
    artifact: ServedArtifact


@dataclasses.dataclass(frozen=True)
class Failure:
    """Why a new revision's rollout failed."""

    # ProgressDeadlineExceeded, CrashLoopBackOff or FetchFailed.
    reason: str
    # What failed, with the pod's own words.
    message: str


@dataclasses.dataclass(frozen=True)
class RolledBack:
    """status.rollback: the rollback in effect for one spec generation."""

    generation: int
    failed_revision: str
    # The revision rolled back to.
    revision: str
    reason: str
    message: str
    time: str

    def as_status(self) -> dict[str, Any]:
        return models.Rollback(
            generation=self.generation,
            failed_revision=self.failed_revision,
            revision=self.revision,
            reason=self.reason,
            message=self.message,
            time=self.time,
        ).model_dump(by_alias=True, mode="json")


@dataclasses.dataclass(frozen=True)
class Situation:
    """Everything the decision looks at, for one ModelDeployment at one moment."""

    generation: int
    # The revision the current spec asks for.
    desired_revision: str
    auto_rollback: bool
    progress_deadline_seconds: int
    deployment: DeploymentState | None
    pods: tuple[PodSnapshot, ...]
    last_ready: LastReady | None
    # status.rollback as the object holds it.
    rolled_back: RolledBack | None
    now: str


@dataclasses.dataclass(frozen=True)
class Decision:
    """follow: serve the spec's revision; roll-back: return to the last Ready revision now; hold: stay
    rolled back (the failed generation is still the spec)."""

    action: Literal["follow", "roll-back", "hold"]
    # status.rollback to write (None removes it).
    rolled_back: RolledBack | None = None
    # A failed rollout that is left in place, and why it is not rolled back.
    failure: Failure | None = None
    kept_because: str = ""


def decide(s: Situation) -> Decision:
    """The pure core: follow the spec, roll back, or stay rolled back."""
    if s.rolled_back is not None and s.rolled_back.generation == s.generation and s.last_ready is not None:
        return Decision("hold", s.rolled_back)
    failure = rollout_failure(s)
    if failure is None:
        return Decision("follow")
    if not s.auto_rollback:
        why = (
            "spec.rollout.autoRollback is false, so the failed rollout is left in place (pods of the earlier "
            "revision keep serving); fix the spec, or set autoRollback: true"
        )
        return Decision("follow", failure=failure, kept_because=why)
    if s.last_ready is None:
        why = (
            "no earlier revision was Ready, so there is nothing to roll back to; fix the spec "
            "(any change is a new attempt)"
        )
        return Decision("follow", failure=failure, kept_because=why)
    rolled_back = RolledBack(
        generation=s.generation,
        failed_revision=s.desired_revision,
        revision=s.last_ready.revision,
        reason=failure.reason,
        message=failure.message,
        time=s.now,
    )
    return Decision("roll-back", rolled_back)


def rollout_failure(s: Situation) -> Failure | None:
    """Why the rollout of the spec's revision failed, or None while it has not (or it is not a new
    revision: a Ready revision whose pods crash later is Degraded, not a failed rollout)."""
    if s.last_ready is not None and s.last_ready.revision == s.desired_revision:
        return None
    new_pods = [pod for pod in s.pods if pod.revision == s.desired_revision and pod.problem is not None]
    for pod in new_pods:
        assert pod.problem is not None
        if pod.problem.reason in CRASH_REASONS and pod.restarts >= FAILED_RESTARTS:
            return Failure(
                pod.problem.reason,
                f"pod {pod.name} of revision {s.desired_revision} restarted {pod.restarts} times: "
                f"{pod.problem.reason}: {pod.problem.message}".rstrip(": "),
            )
    deployment = s.deployment
    if (
        deployment is None
        or deployment.revision != s.desired_revision
        or deployment.observed_generation < deployment.generation
    ):
        return None
    status, reason, message = deployment.conditions.get("Progressing", ("", "", ""))
    if status != "False" or reason != "ProgressDeadlineExceeded":
        return None
    detail = (
        f"revision {s.desired_revision} did not become available within spec.rollout.progressDeadlineSeconds "
        f"({s.progress_deadline_seconds} s): {message}"
    )
    if new_pods:
        first = new_pods[0].problem
        assert first is not None
        detail += f"; pod {first.pod}: {first.reason}: {first.message}".rstrip(": ")
    return Failure("ProgressDeadlineExceeded", detail)


# --- status -----------------------------------------------------------------------------------------------


def last_ready_from_status(status: Mapping[str, Any]) -> LastReady | None:
    """status.lastReadyRevision, when it is there and its spec still reads (a CRD upgrade could make an old
    spec invalid; then there is nothing safe to roll back to)."""
    raw = status.get("lastReadyRevision")
    if not raw:
        return None
    try:
        recorded = models.LastReadyRevision.model_validate(raw)
        spec = models.ModelDeploymentSpec.model_validate(recorded.spec)
    except ValidationError:
        return None
    uri = recorded.model.uri
    if not uri:
        return None
    digest = (recorded.model.digest or "").removeprefix("sha256:") or None
    artifact = ServedArtifact(
        uri=uri,
        sha256=digest,
        format=recorded.model.format or "onnx",
        size_bytes=recorded.model.size_bytes,
        kv_cache_bytes_per_token=recorded.model.kv_cache_bytes_per_token,
        context_length=recorded.model.context_length,
    )
    return LastReady(recorded.revision, recorded.generation, spec, artifact)


def rolled_back_from_status(status: Mapping[str, Any]) -> RolledBack | None:
    raw = status.get("rollback")
    if not raw:
        return None
    try:
        recorded = models.Rollback.model_validate(raw)
    except ValidationError:
        return None
    return RolledBack(
        generation=recorded.generation,
        failed_revision=recorded.failed_revision,
        revision=recorded.revision,
        reason=recorded.reason,
        message=recorded.message,
        time=recorded.time,
    )


def last_ready_status(
    previous: Mapping[str, Any] | None,
    *,
    ready: bool,
    revision: str | None,
    generation: int,
    spec: Mapping[str, Any],
    model: Mapping[str, Any],
) -> Mapping[str, Any] | None:
    """status.lastReadyRevision: replaced when the spec's revision is Ready at a new generation, else kept."""
    if not ready or revision is None:
        return previous
    if previous and previous.get("revision") == revision and previous.get("generation") == generation:
        return previous
    return {"revision": revision, "generation": generation, "model": dict(model), "spec": dict(spec)}
