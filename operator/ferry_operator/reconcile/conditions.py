"""Conditions and phase, derived from what was observed by ordered chains of small pure policies.

Each condition has a chain: the first policy that recognises its situation gives the verdict (status,
reason, message), so the most specific explanation wins and every branch can be tested on its own. The
phase is a summary of the conditions, never tracked separately. The Optimized condition is computed by the
optimization integration and passed in as an extra verdict; the ModelResolved/Deployed/Ready chains see
the optimization's outcome through `Observation.artifact`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ferry_operator.api.models import ConditionStatus, ConditionType, Phase
from ferry_operator.reconcile.observe import DeploymentState, PodSnapshot
from ferry_operator.reconcile.rollout import ROLLED_BACK, ROLLOUT_FAILED, Failure, RolledBack

CONDITION_ORDER: tuple[ConditionType, ...] = (
    "ModelResolved",
    "Optimized",
    "Deployed",
    "Ready",
    "Progressing",
    "Degraded",
)


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One condition's value: what a policy concluded."""

    status: ConditionStatus
    # CamelCase cause, for tools and alerts.
    reason: str
    # What happened and what to do, for people.
    message: str


@dataclasses.dataclass(frozen=True)
class ArtifactResolution:
    """Whether a servable (ONNX) artifact is known, and if not, why. The seam where optimization plugs in."""

    # True: `uri` can be served as it is.
    ready: bool
    # When not ready: Unknown while work is under way (e.g. optimizing), False when it cannot proceed.
    status: ConditionStatus = "True"
    reason: str = "Resolved"
    message: str = ""


@dataclasses.dataclass(frozen=True)
class ApplyFailure:
    """A child the API server refused to create or update."""

    kind: str
    name: str
    message: str
    # False for throttling, timeouts and conflicts that a retry can fix.
    permanent: bool


@dataclasses.dataclass(frozen=True)
class Observation:
    """Everything the policies look at, for one ModelDeployment at one moment."""

    name: str
    generation: int
    # The URI the serving pods fetch.
    model_uri: str
    artifact: ArtifactResolution
    apply_failures: tuple[ApplyFailure, ...]
    deployment: DeploymentState | None
    # Revision (pod template digest) the spec asks for; None while there is no artifact to serve.
    desired_revision: str | None
    # Replicas that must be available for Ready: spec.serving.replicas, or autoscaling.minReplicas.
    required_ready: int
    progress_deadline_seconds: int
    pods: tuple[PodSnapshot, ...] = ()
    # The rollback in effect (status.rollback): the Deployment runs rolled_back.revision, not the spec's.
    rolled_back: RolledBack | None = None
    # A failed rollout left in place (autoRollback off, or nothing to roll back to), and why.
    rollout_failure: Failure | None = None
    kept_because: str = ""
    # The resolver's Optimized condition (None: the model is served without optimization).
    optimized: Verdict | None = None


Policy = Callable[[Observation], Verdict | None]


def rolled_back_verdict(
    obs: Observation, status: ConditionStatus, explain: Callable[[RolledBack], str]
) -> Verdict | None:
    """The verdict of a condition while a rollback is in effect (reason RolledBack); None when none is."""
    back = obs.rolled_back
    if back is None:
        return None
    return Verdict(status, ROLLED_BACK, explain(back))


def present_deployment(obs: Observation) -> DeploymentState:
    """The Deployment, for a policy its chain reaches only after an earlier one answered its absence."""
    deployment = obs.deployment
    assert deployment is not None
    return deployment


def runs_desired_revision(obs: Observation, deployment: DeploymentState) -> bool:
    """Whether the Deployment's controller has picked up the revision the spec asks for."""
    return (
        deployment.revision == obs.desired_revision
        and deployment.observed_generation >= deployment.generation
    )


# --- ModelResolved ----------------------------------------------------------------------------------------


def artifact_unresolved(obs: Observation) -> Verdict | None:
    if obs.artifact.ready:
        return None
    return Verdict(obs.artifact.status, obs.artifact.reason, obs.artifact.message)


def fetch_failed(obs: Observation) -> Verdict | None:
    for pod in obs.pods:
        if pod.problem is not None and pod.problem.reason == "FetchFailed":
            return Verdict(
                "False",
                "FetchFailed",
                f"pod {pod.name} could not fetch the model from {obs.model_uri}: {pod.problem.message}. "
                "Check spec.model.uri, spec.model.sha256 and the keys of spec.model.credentialsSecret.",
            )
    return None


def fetched(obs: Observation) -> Verdict | None:
    if any(pod.fetched for pod in obs.pods) or (obs.deployment is not None and obs.deployment.ready_replicas):
        return Verdict("True", "Fetched", f"serving pods fetched the model from {obs.model_uri}")
    return None


def fetch_pending(obs: Observation) -> Verdict:
    return Verdict(
        "Unknown", "Fetching", f"waiting for a serving pod to fetch the model from {obs.model_uri}"
    )


# --- Deployed ---------------------------------------------------------------------------------------------


def waiting_for_artifact(obs: Observation) -> Verdict | None:
    if obs.artifact.ready:
        return None
    # Unknown while the artifact is being made (an optimization Job runs), False when it cannot be.
    status: ConditionStatus = "Unknown" if obs.artifact.status == "Unknown" else "False"
    return Verdict(
        status, "WaitingForArtifact", "nothing to deploy until the model is resolved (see ModelResolved)"
    )


def apply_failed(obs: Observation) -> Verdict | None:
    if not obs.apply_failures:
        return None
    message = "; ".join(f"{f.kind} {f.name}: {f.message}" for f in obs.apply_failures)
    if not any(f.permanent for f in obs.apply_failures):
        # Throttling, a timeout, a conflict: retried with back-off, and not a failure of the model (an
        # overloaded API server must not turn every ModelDeployment Failed).
        return Verdict("Unknown", "ApplyRetrying", f"retrying after a temporary API error: {message}")
    return Verdict("False", "ApplyFailed", f"the API server refused a child: {message}")


def deployment_missing(obs: Observation) -> Verdict | None:
    if obs.deployment is not None:
        return None
    return Verdict("Unknown", "Creating", f"creating the serving Deployment {obs.name}")


def deployment_current(obs: Observation) -> Verdict | None:
    deployment = obs.deployment
    if deployment is None or not runs_desired_revision(obs, deployment):
        return None
    return Verdict("True", "Applied", f"Deployment {obs.name} runs revision {obs.desired_revision}")


def deployment_catching_up(obs: Observation) -> Verdict:
    return Verdict(
        "Unknown",
        "Applying",
        f"the Deployment controller has not yet picked up revision {obs.desired_revision}",
    )


def rolled_back_deployment(obs: Observation) -> Verdict | None:
    return rolled_back_verdict(
        obs,
        "False",
        lambda back: (
            f"revision {back.failed_revision} failed to roll out (see Degraded); Deployment "
            f"{obs.name} runs the last Ready revision {back.revision} again"
        ),
    )


# --- Ready ------------------------------------------------------------------------------------------------


def not_deployable(obs: Observation) -> Verdict | None:
    if not obs.artifact.ready:
        return Verdict("False", obs.artifact.reason, obs.artifact.message)
    if any(f.permanent for f in obs.apply_failures):
        return Verdict("False", "ApplyFailed", "the serving objects could not be applied (see Deployed)")
    if obs.apply_failures:
        return Verdict("False", "ApplyRetrying", "applying the serving objects is retried (see Deployed)")
    if obs.deployment is None:
        return Verdict("False", "Creating", f"creating the serving Deployment {obs.name}")
    return None


def rolled_back_ready(obs: Observation) -> Verdict | None:
    available = obs.deployment.available_replicas if obs.deployment is not None else 0
    return rolled_back_verdict(
        obs,
        "False",
        lambda back: (
            f"this spec's revision {back.failed_revision} failed to roll out and was rolled back (see "
            f"Degraded); the last Ready revision {back.revision} serves with {available} replicas available"
        ),
    )


def scaled_to_zero(obs: Observation) -> Verdict | None:
    if obs.required_ready:
        return None
    return Verdict(
        "False",
        "ScaledToZero",
        f"spec.serving.replicas is 0, so nothing serves the model; `kubectl scale modeldeployment/{obs.name} "
        "--replicas=1` serves it again",
    )


def rollout_in_progress(obs: Observation) -> Verdict | None:
    deployment = present_deployment(obs)
    if not runs_desired_revision(obs, deployment):
        return Verdict("False", "RollingOut", f"revision {obs.desired_revision} is being rolled out")
    old = deployment.replicas - deployment.updated_replicas
    if old > 0:
        return Verdict(
            "False",
            "RollingOut",
            f"revision {obs.desired_revision}: {deployment.updated_replicas} replicas updated, {old} old "
            "replicas still running",
        )
    return None


def waiting_for_replicas(obs: Observation) -> Verdict | None:
    deployment = present_deployment(obs)
    if deployment.available_replicas >= obs.required_ready:
        return None
    return Verdict(
        "False",
        "WaitingForReplicas",
        f"{deployment.available_replicas} of {obs.required_ready} replicas of revision "
        f"{obs.desired_revision} are available",
    )


def serving(obs: Observation) -> Verdict:
    deployment = present_deployment(obs)
    return Verdict(
        "True",
        "Serving",
        f"{deployment.available_replicas} replicas serve revision {obs.desired_revision}",
    )


# --- Progressing ------------------------------------------------------------------------------------------


def nothing_to_roll_out(obs: Observation) -> Verdict | None:
    if obs.deployment is not None:
        return None
    if not obs.artifact.ready or obs.apply_failures:
        return Verdict("False", "Blocked", "no rollout can start (see ModelResolved and Deployed)")
    return Verdict("True", "Creating", f"creating the serving Deployment {obs.name}")


def rolled_back_progress(obs: Observation) -> Verdict | None:
    return rolled_back_verdict(
        obs,
        "False",
        lambda back: f"rolled back to revision {back.revision}; the spec is tried again when it changes",
    )


def deadline_exceeded(obs: Observation) -> Verdict | None:
    deployment = present_deployment(obs)
    status, reason, message = deployment.conditions.get("Progressing", ("", "", ""))
    if status == "False" and reason == "ProgressDeadlineExceeded":
        return Verdict(
            "False",
            "ProgressDeadlineExceeded",
            f"the rollout of revision {obs.desired_revision} did not finish within "
            f"spec.rollout.progressDeadlineSeconds ({obs.progress_deadline_seconds} s): {message}",
        )
    return None


def rolling_out(obs: Observation) -> Verdict | None:
    deployment = present_deployment(obs)
    target = deployment.spec_replicas if deployment.spec_replicas is not None else 1
    if not runs_desired_revision(obs, deployment):
        return Verdict("True", "RollingOut", f"rolling out revision {obs.desired_revision}")
    old = deployment.replicas - deployment.updated_replicas
    if old > 0 or deployment.updated_replicas < target or deployment.available_replicas < target:
        return Verdict(
            "True",
            "RollingOut",
            f"revision {obs.desired_revision}: {deployment.available_replicas} of {target} replicas available"
            + (f", {old} old replicas terminating" if old > 0 else ""),
        )
    return None


def rollout_complete(obs: Observation) -> Verdict:
    deployment = present_deployment(obs)
    return Verdict(
        "False",
        "Complete",
        f"revision {obs.desired_revision} is rolled out: {deployment.available_replicas} replicas available",
    )


# --- Degraded ---------------------------------------------------------------------------------------------


def rollout_rolled_back(obs: Observation) -> Verdict | None:
    return rolled_back_verdict(
        obs,
        "True",
        lambda back: (
            f"the rollout of revision {back.failed_revision} (generation {back.generation}) failed: "
            f"{back.reason}: {back.message}. Rolled back to revision {back.revision}, the last that was "
            "Ready, which keeps serving. Fix the spec and apply it: any change of the spec is a new attempt"
        ),
    )


def rollout_failed(obs: Observation) -> Verdict | None:
    failure = obs.rollout_failure
    if failure is None:
        return None
    return Verdict(
        "True",
        ROLLOUT_FAILED,
        f"the rollout failed: {failure.reason}: {failure.message}; {obs.kept_because}",
    )


def pod_in_trouble(obs: Observation) -> Verdict | None:
    problems = [pod.problem for pod in obs.pods if pod.problem is not None]
    if not problems:
        return None
    first = problems[0]
    more = f" (and {len(problems) - 1} more pods)" if len(problems) > 1 else ""
    return Verdict(
        "True", first.reason, f"pod {first.pod}: {first.reason}: {first.message}{more}".rstrip(": ")
    )


def rollout_stuck(obs: Observation) -> Verdict | None:
    if obs.deployment is None:
        return None
    verdict = deadline_exceeded(obs)
    if verdict is not None:
        return Verdict("True", verdict.reason, verdict.message)
    status, _, message = obs.deployment.conditions.get("ReplicaFailure", ("", "", ""))
    if status == "True":
        return Verdict(
            "True", "ReplicaFailure", f"pods of Deployment {obs.name} cannot be created: {message}"
        )
    return None


def as_expected(_: Observation) -> Verdict:
    return Verdict("False", "AsExpected", "no problem observed")


# --- chains -----------------------------------------------------------------------------------------------

CHAINS: Mapping[ConditionType, Sequence[Policy]] = {
    "ModelResolved": (artifact_unresolved, fetch_failed, fetched, fetch_pending),
    "Deployed": (
        waiting_for_artifact,
        apply_failed,
        rolled_back_deployment,
        deployment_missing,
        deployment_current,
        deployment_catching_up,
    ),
    "Ready": (
        not_deployable,
        rolled_back_ready,
        scaled_to_zero,
        rollout_in_progress,
        waiting_for_replicas,
        serving,
    ),
    "Progressing": (
        nothing_to_roll_out,
        rolled_back_progress,
        deadline_exceeded,
        rolling_out,
        rollout_complete,
    ),
    "Degraded": (rollout_rolled_back, rollout_failed, pod_in_trouble, rollout_stuck, as_expected),
}


def evaluate(obs: Observation) -> dict[ConditionType, Verdict]:
    """Every condition's verdict: the first policy of its chain that has one."""
    verdicts: dict[ConditionType, Verdict] = {}
    for condition_type, chain in CHAINS.items():
        for policy in chain:
            verdict = policy(obs)
            if verdict is not None:
                verdicts[condition_type] = verdict
                break
        else:  # pragma: no cover - every chain ends with a policy that always answers
            raise AssertionError(f"the {condition_type} chain has no verdict")
    if obs.optimized is not None:
        verdicts["Optimized"] = obs.optimized
        verdicts["Ready"] = ready_follows_the_newest_spec(verdicts["Ready"], obs.optimized)
    return verdicts


def ready_follows_the_newest_spec(ready: Verdict, optimized: Verdict) -> Verdict:
    """Ready is not True while the newest spec's model is still being optimized: what serves is the
    previous revision, not the one the spec asks for."""
    if optimized.status != "Unknown" or ready.status != "True":
        return ready
    return Verdict(
        "False", "Optimizing", f"{ready.message}; the new spec's model is being optimized (see Optimized)"
    )


def phase(verdicts: Mapping[ConditionType, Verdict]) -> Phase:
    """The one-word summary of the conditions."""

    def status(condition_type: ConditionType) -> str:
        verdict = verdicts.get(condition_type)
        return verdict.status if verdict is not None else "Unknown"

    degraded = verdicts.get("Degraded")
    if degraded is not None and degraded.reason == ROLLED_BACK:
        # The last Ready revision serves: the model works, just not as the newest spec asks.
        return "Degraded"
    if status("ModelResolved") == "False" or status("Optimized") == "False" or status("Deployed") == "False":
        return "Failed"
    if status("Degraded") == "True":
        return "Degraded" if status("Ready") == "True" else "Failed"
    if status("Ready") == "True":
        return "Ready"
    optimized = verdicts.get("Optimized")
    if optimized is not None and optimized.status == "Unknown":
        return "Optimizing"
    ready = verdicts.get("Ready")
    if ready is not None and ready.reason in ("ScaledToZero", "Creating"):
        return "Pending"
    return "Deploying"


def merge(
    previous: Sequence[Mapping[str, Any]],
    verdicts: Mapping[ConditionType, Verdict],
    now: str,
    generation: int,
) -> list[dict[str, Any]]:
    """The status.conditions list: one entry per verdict, lastTransitionTime kept unless the status flips."""
    before = {str(c.get("type")): c for c in previous}
    merged = []
    for condition_type in CONDITION_ORDER:
        verdict = verdicts.get(condition_type)
        if verdict is None:
            continue
        old = before.get(condition_type)
        since = (
            old.get("lastTransitionTime") if old is not None and old.get("status") == verdict.status else None
        )
        merged.append(
            {
                "type": condition_type,
                "status": verdict.status,
                "reason": verdict.reason,
                "message": verdict.message,
                "lastTransitionTime": since or now,
                "observedGeneration": generation,
            }
        )
    return merged
