"""The condition policy chains, the phase summary and the status diff, as pure functions."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from ferry_operator.reconcile import conditions, status
from ferry_operator.reconcile.conditions import ApplyFailure, ArtifactResolution, Observation
from ferry_operator.reconcile.observe import (
    DeploymentState,
    PodProblem,
    PodSnapshot,
    deployment_state,
    pod_snapshot,
)

REVISION = "abc1234567"


def deployment(**changes: Any) -> DeploymentState:
    base = DeploymentState(
        generation=2,
        observed_generation=2,
        spec_replicas=2,
        replicas=2,
        updated_replicas=2,
        ready_replicas=2,
        available_replicas=2,
        revision=REVISION,
        conditions={
            "Available": ("True", "MinimumReplicasAvailable", ""),
            "Progressing": ("True", "NewReplicaSetAvailable", ""),
        },
        replicas_owned_by_operator=True,
    )
    return dataclasses.replace(base, **changes)


def observation(**changes: Any) -> Observation:
    base = Observation(
        name="digits",
        generation=3,
        model_uri="pvc://models/digits/model.onnx",
        artifact=ArtifactResolution(ready=True),
        apply_failures=(),
        deployment=deployment(),
        desired_revision=REVISION,
        required_ready=2,
        progress_deadline_seconds=600,
    )
    return dataclasses.replace(base, **changes)


def summary(obs: Observation) -> dict[str, tuple[str, str]]:
    return {kind: (v.status, v.reason) for kind, v in conditions.evaluate(obs).items()}


def test_a_fully_rolled_out_model_is_ready() -> None:
    verdicts = conditions.evaluate(observation())
    assert summary(observation()) == {
        "ModelResolved": ("True", "Fetched"),
        "Deployed": ("True", "Applied"),
        "Ready": ("True", "Serving"),
        "Progressing": ("False", "Complete"),
        "Degraded": ("False", "AsExpected"),
    }
    assert conditions.phase(verdicts) == "Ready"


def test_nothing_created_yet_is_pending() -> None:
    obs = observation(deployment=None)
    assert summary(obs)["Ready"] == ("False", "Creating")
    assert summary(obs)["ModelResolved"] == ("Unknown", "Fetching")
    assert conditions.phase(conditions.evaluate(obs)) == "Pending"


def test_a_new_revision_rolls_out_before_ready() -> None:
    obs = observation(deployment=deployment(revision="old0000000", generation=3, observed_generation=2))
    assert summary(obs)["Ready"] == ("False", "RollingOut")
    assert summary(obs)["Deployed"] == ("Unknown", "Applying")
    assert summary(obs)["Progressing"] == ("True", "RollingOut")
    assert conditions.phase(conditions.evaluate(obs)) == "Deploying"


def test_old_pods_still_running_keep_the_rollout_open() -> None:
    obs = observation(deployment=deployment(replicas=3, updated_replicas=2))
    assert summary(obs)["Ready"] == ("False", "RollingOut")
    assert "1 old replicas" in conditions.evaluate(obs)["Ready"].message


def test_scaling_up_waits_for_the_requested_replicas() -> None:
    obs = observation(
        required_ready=3, deployment=deployment(spec_replicas=3, replicas=3, updated_replicas=3)
    )
    verdicts = conditions.evaluate(obs)
    assert (verdicts["Ready"].status, verdicts["Ready"].reason) == ("False", "WaitingForReplicas")
    assert verdicts["Ready"].message.startswith("2 of 3 replicas")
    assert verdicts["Progressing"].status == "True"


def test_autoscaled_model_is_ready_at_min_replicas_whatever_the_autoscaler_did() -> None:
    obs = observation(
        required_ready=1, deployment=deployment(spec_replicas=5, replicas=5, updated_replicas=5)
    )
    assert summary(obs)["Ready"] == ("True", "Serving")


def test_scaled_to_zero_says_how_to_serve_again() -> None:
    obs = observation(
        required_ready=0,
        deployment=deployment(
            spec_replicas=0, replicas=0, updated_replicas=0, ready_replicas=0, available_replicas=0
        ),
    )
    ready = conditions.evaluate(obs)["Ready"]
    assert (ready.status, ready.reason) == ("False", "ScaledToZero")
    assert "kubectl scale modeldeployment/digits --replicas=1" in ready.message
    assert conditions.phase(conditions.evaluate(obs)) == "Pending"


def test_fetch_failure_names_the_pod_and_the_fields_to_check() -> None:
    pod = PodSnapshot(
        "digits-abc",
        fetched=False,
        problem=PodProblem("digits-abc", "FetchFailed", "ferry-fetch exited 1: digest mismatch"),
    )
    obs = observation(pods=(pod,), deployment=deployment(ready_replicas=0, available_replicas=0))
    verdicts = conditions.evaluate(obs)
    assert (verdicts["ModelResolved"].status, verdicts["ModelResolved"].reason) == ("False", "FetchFailed")
    assert "digits-abc" in verdicts["ModelResolved"].message
    assert "spec.model.sha256" in verdicts["ModelResolved"].message
    assert conditions.phase(verdicts) == "Failed"


def test_crash_looping_pod_while_serving_is_degraded() -> None:
    pods = (
        PodSnapshot("digits-a", fetched=True, problem=None),
        PodSnapshot(
            "digits-b", fetched=True, problem=PodProblem("digits-b", "CrashLoopBackOff", "back-off 5m0s")
        ),
    )
    verdicts = conditions.evaluate(observation(pods=pods))
    assert (verdicts["Degraded"].status, verdicts["Degraded"].reason) == ("True", "CrashLoopBackOff")
    assert conditions.phase(verdicts) == "Degraded"


def test_progress_deadline_is_reported_with_the_setting_to_change() -> None:
    stuck = deployment(
        ready_replicas=0,
        available_replicas=0,
        conditions={
            "Progressing": (
                "False",
                "ProgressDeadlineExceeded",
                'ReplicaSet "digits-1" has timed out progressing.',
            )
        },
    )
    verdicts = conditions.evaluate(observation(deployment=stuck))
    assert (verdicts["Progressing"].status, verdicts["Progressing"].reason) == (
        "False",
        "ProgressDeadlineExceeded",
    )
    assert "spec.rollout.progressDeadlineSeconds (600 s)" in verdicts["Progressing"].message
    assert verdicts["Degraded"].status == "True"
    assert conditions.phase(verdicts) == "Failed"


def test_refused_child_fails_with_the_servers_message() -> None:
    failure = ApplyFailure(
        "Deployment", "digits", "422 Unprocessable Entity: spec.template...: Invalid value", True
    )
    verdicts = conditions.evaluate(observation(apply_failures=(failure,), deployment=None))
    assert (verdicts["Deployed"].status, verdicts["Deployed"].reason) == ("False", "ApplyFailed")
    assert "Invalid value" in verdicts["Deployed"].message
    assert conditions.phase(verdicts) == "Failed"


def test_a_temporary_api_error_is_retried_not_a_failure() -> None:
    failure = ApplyFailure("Service", "digits", "no answer in time", permanent=False)
    verdicts = conditions.evaluate(observation(apply_failures=(failure,), deployment=None))
    assert (verdicts["Deployed"].status, verdicts["Deployed"].reason) == ("Unknown", "ApplyRetrying")
    assert "no answer in time" in verdicts["Deployed"].message
    assert conditions.phase(verdicts) == "Deploying"


def test_unresolvable_artifact_blocks_everything_with_its_own_reason() -> None:
    artifact = ArtifactResolution(
        ready=False, status="False", reason="ConversionRequired", message="convert it"
    )
    verdicts = conditions.evaluate(observation(artifact=artifact, deployment=None, desired_revision=None))
    assert (verdicts["ModelResolved"].status, verdicts["ModelResolved"].reason) == (
        "False",
        "ConversionRequired",
    )
    assert verdicts["Ready"].reason == "ConversionRequired"
    assert conditions.phase(verdicts) == "Failed"


def test_optimizing_phase_comes_from_the_optimized_seam() -> None:
    artifact = ArtifactResolution(ready=False, status="Unknown", reason="Optimizing", message="job running")
    verdicts = conditions.evaluate(observation(artifact=artifact, deployment=None, desired_revision=None))
    verdicts["Optimized"] = conditions.Verdict("Unknown", "Optimizing", "quantizing")
    verdicts["Deployed"] = conditions.Verdict("Unknown", "WaitingForArtifact", "")
    assert conditions.phase(verdicts) == "Optimizing"


def test_ready_follows_the_newest_spec_while_its_model_is_optimized() -> None:
    # The previous revision is Ready and serving; the new spec's model is still in its optimization Job.
    serving = observation(
        required_ready=1,
        deployment=deployment(
            spec_replicas=1, replicas=1, updated_replicas=1, ready_replicas=1, available_replicas=1
        ),
    )
    assert conditions.evaluate(serving)["Ready"].status == "True"
    optimizing = conditions.Verdict("Unknown", "Optimizing", "quantizing")
    verdicts = conditions.evaluate(dataclasses.replace(serving, optimized=optimizing))
    assert verdicts["Optimized"] == optimizing
    assert (verdicts["Ready"].status, verdicts["Ready"].reason) == ("False", "Optimizing")
    assert "being optimized" in verdicts["Ready"].message
    # Once optimized (or failed), Ready is the chain's own verdict again.
    done = conditions.Verdict("True", "Optimized", "int8 passed the gate")
    assert conditions.evaluate(dataclasses.replace(serving, optimized=done))["Ready"].status == "True"


def test_merge_keeps_transition_time_unless_the_status_flips() -> None:
    first = conditions.merge([], conditions.evaluate(observation(deployment=None)), "2026-01-01T00:00:00Z", 1)
    assert all(c["lastTransitionTime"] == "2026-01-01T00:00:00Z" for c in first)
    scaled = observation(
        required_ready=3, deployment=deployment(spec_replicas=3, replicas=3, updated_replicas=3)
    )
    second = {
        c["type"]: c for c in conditions.merge(first, conditions.evaluate(scaled), "2026-01-01T00:05:00Z", 2)
    }
    # Ready stayed False (Creating -> WaitingForReplicas): same time, new reason and generation.
    assert second["Ready"]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert second["Ready"]["reason"] == "WaitingForReplicas"
    assert second["Ready"]["observedGeneration"] == 2
    # ModelResolved flipped Unknown -> True: new time.
    assert second["ModelResolved"]["lastTransitionTime"] == "2026-01-01T00:05:00Z"
    assert [c["type"] for c in second.values()] == [
        "ModelResolved",
        "Deployed",
        "Ready",
        "Progressing",
        "Degraded",
    ]


def compose(previous: dict[str, Any], obs: Observation, now: str = "2026-01-01T00:00:00Z") -> dict[str, Any]:
    return status.compose(
        previous,
        obs,
        conditions.evaluate(obs),
        now=now,
        url="http://digits.ml.svc.cluster.local:8080/v2/models/digits",
        selector="ferry.dev/modeldeployment=digits",
        model={"format": "onnx", "uri": obs.model_uri},
    )


def test_an_unchanged_observation_writes_nothing() -> None:
    first = compose({}, observation())
    assert first["phase"] == "Ready"
    assert (first["replicas"], first["readyReplicas"], first["observedGeneration"]) == (2, 2, 3)
    assert first["revision"] == {"current": REVISION}
    again = compose(first, observation(), now="2026-01-01T01:00:00Z")
    assert status.diff(first, again) is None


def test_the_patch_carries_only_what_changed_and_removes_dropped_fields() -> None:
    first = {**compose({}, observation()), "optimization": {"job": "x"}}
    changed = compose(first, observation(deployment=deployment(ready_replicas=1)))
    patch = status.diff(first, changed)
    assert patch is not None
    assert set(patch) == {"readyReplicas"}  # optimization is another integration's field: left alone
    del changed["revision"]
    assert status.diff(first, changed) == {"readyReplicas": 1, "revision": None}
    assert status.applied(first, {"readyReplicas": 1, "revision": None})["readyReplicas"] == 1


def test_revision_history_remembers_the_last_ready_revision() -> None:
    ready = compose({}, observation())
    rolling = compose(
        ready,
        observation(
            desired_revision="new0000000",
            deployment=deployment(revision="new0000000", generation=3, observed_generation=2),
        ),
    )
    assert rolling["revision"] == {"current": "new0000000", "previous": REVISION}
    # A further change before the new one got ready keeps the last *ready* revision as the previous one.
    again = compose(rolling, observation(desired_revision="newer00000", deployment=None))
    assert again["revision"] == {"current": "newer00000", "previous": REVISION}


def kwok_pod(**status_fields: Any) -> dict[str, Any]:
    return {"metadata": {"name": "digits-abc", "namespace": "ml"}, "status": status_fields}


@pytest.mark.parametrize(
    ("pod_status", "fetched", "problem"),
    [
        (
            {
                "initContainerStatuses": [{"state": {"terminated": {"exitCode": 0}}}],
                "containerStatuses": [{"ready": True, "state": {"running": {}}}],
            },
            True,
            None,
        ),
        ({"initContainerStatuses": [{"state": {"running": {}}}]}, False, None),
        (
            {
                "initContainerStatuses": [
                    {
                        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                        "lastState": {
                            "terminated": {
                                "exitCode": 2,
                                "message": "sha256 mismatch: expected ab.. got cd..",
                            }
                        },
                    }
                ]
            },
            False,
            "FetchFailed",
        ),
        (
            {
                "containerStatuses": [
                    {"state": {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}}
                ]
            },
            False,
            "ImagePullBackOff",
        ),
    ],
)
def test_pod_snapshots(pod_status: dict[str, Any], fetched: bool, problem: str | None) -> None:
    snapshot = pod_snapshot(kwok_pod(**pod_status))
    assert snapshot.fetched is fetched
    assert (snapshot.problem.reason if snapshot.problem else None) == problem


def test_deployment_state_reads_replica_ownership_from_managed_fields() -> None:
    body = {
        "metadata": {
            "generation": 4,
            "managedFields": [
                {
                    "manager": "ferry-operator",
                    "operation": "Apply",
                    "fieldsV1": {"f:spec": {"f:replicas": {}, "f:template": {}}},
                },
                {
                    "manager": "kube-controller-manager",
                    "operation": "Update",
                    "subresource": "status",
                    "fieldsV1": {},
                },
            ],
        },
        "spec": {"replicas": 3, "template": {"metadata": {"annotations": {"ferry.dev/revision": REVISION}}}},
        "status": {
            "observedGeneration": 4,
            "replicas": 3,
            "readyReplicas": 1,
            "conditions": [{"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable"}],
        },
    }
    state = deployment_state(body)
    assert state.replicas_owned_by_operator
    assert (state.spec_replicas, state.ready_replicas, state.revision) == (3, 1, REVISION)
    assert state.conditions["Available"][0] == "False"
