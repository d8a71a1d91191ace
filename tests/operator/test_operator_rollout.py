"""Automatic rollback: the pure decision (a table of situations), the conditions and phase it produces, the
pod facts it reads, and the status fields that remember the last Ready revision."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from test_operator_conditions import deployment, observation

from ferry_operator.api import models
from ferry_operator.builders.inputs import ServedArtifact
from ferry_operator.reconcile import conditions, rollout, status
from ferry_operator.reconcile.observe import PodProblem, PodSnapshot, pod_snapshot

NEW = "new0000000"
OLD = "old0000000"
SPEC = models.ModelDeploymentSpec.model_validate(
    {"model": {"uri": "pvc://models/digits/v1.onnx", "format": "onnx"}}
)
LAST_READY = rollout.LastReady(OLD, 4, SPEC, ServedArtifact("pvc://models/digits/v1.onnx"))
DEADLINE = {"Progressing": ("False", "ProgressDeadlineExceeded", 'ReplicaSet "digits-7f" has timed out')}


def crashing(restarts: int, reason: str = "CrashLoopBackOff", revision: str = NEW) -> PodSnapshot:
    message = "exited 1: cannot serve model 'digits': ONNX Runtime cannot load /mnt/models/model.onnx"
    return PodSnapshot(
        "digits-new-1",
        fetched=True,
        problem=PodProblem("digits-new-1", reason, message),
        revision=revision,
        restarts=restarts,
    )


def situation(**changes: Any) -> rollout.Situation:
    base = rollout.Situation(
        generation=5,
        desired_revision=NEW,
        auto_rollback=True,
        progress_deadline_seconds=30,
        deployment=deployment(revision=NEW, available_replicas=2, updated_replicas=1, replicas=3),
        pods=(),
        last_ready=LAST_READY,
        rolled_back=None,
        now="2026-11-28T20:00:00Z",
    )
    return dataclasses.replace(base, **changes)


ROLLED_BACK_5 = rollout.RolledBack(
    5, NEW, OLD, "CrashLoopBackOff", "pod digits-new-1 ...", "2026-11-28T19:00:00Z"
)


@pytest.mark.parametrize(
    ("name", "changes", "action", "reason"),
    [
        ("a rollout under way is followed", {}, "follow", None),
        (
            "the deadline passes: rolled back",
            {"deployment": deployment(revision=NEW, conditions=DEADLINE)},
            "roll-back",
            "ProgressDeadlineExceeded",
        ),
        (
            "a crash loop past the bound: rolled back",
            {"pods": (crashing(3),)},
            "roll-back",
            "CrashLoopBackOff",
        ),
        ("a crash loop below the bound: waited for", {"pods": (crashing(2),)}, "follow", None),
        (
            "a model that cannot be fetched, past the bound",
            {"pods": (crashing(5, reason="FetchFailed"),)},
            "roll-back",
            "FetchFailed",
        ),
        (
            "an image that cannot be pulled waits for the deadline (it does not restart)",
            {"pods": (crashing(0, reason="ImagePullBackOff"),)},
            "follow",
            None,
        ),
        (
            "crashing pods of another revision do not fail this one",
            {"pods": (crashing(9, revision=OLD),)},
            "follow",
            None,
        ),
        (
            "the Ready revision crashing later is not a failed rollout",
            {"desired_revision": OLD, "pods": (crashing(9, revision=OLD),)},
            "follow",
            None,
        ),
        (
            "a deadline the controller reported for an older template is not this rollout's",
            {"deployment": deployment(revision=OLD, conditions=DEADLINE)},
            "follow",
            None,
        ),
        (
            "a deadline before the controller saw the new generation is stale",
            {
                "deployment": deployment(
                    revision=NEW, conditions=DEADLINE, generation=3, observed_generation=2
                )
            },
            "follow",
            None,
        ),
        ("the failed generation stays rolled back", {"rolled_back": ROLLED_BACK_5, "pods": ()}, "hold", None),
        (
            "a new generation is a new attempt",
            {"rolled_back": ROLLED_BACK_5, "generation": 6},
            "follow",
            None,
        ),
    ],
)
def test_decision_table(name: str, changes: dict[str, Any], action: str, reason: str | None) -> None:
    decision = rollout.decide(situation(**changes))
    assert decision.action == action, name
    if action == "roll-back":
        assert decision.rolled_back is not None
        assert decision.rolled_back.reason == reason
        assert (decision.rolled_back.generation, decision.rolled_back.failed_revision) == (5, NEW)
        assert decision.rolled_back.revision == OLD
        assert decision.failure is None
    if action == "follow":
        assert decision.rolled_back is None, "a rollback of another generation is dropped"


def test_the_rollback_message_carries_the_pods_own_words() -> None:
    decision = rollout.decide(situation(pods=(crashing(3),)))
    assert decision.rolled_back is not None
    assert "restarted 3 times" in decision.rolled_back.message
    assert "ONNX Runtime cannot load" in decision.rolled_back.message


def test_the_deadline_message_names_the_deadline_and_a_stuck_pod() -> None:
    unschedulable = PodSnapshot(
        "digits-new-1",
        fetched=False,
        problem=PodProblem("digits-new-1", "Unschedulable", "0/10 nodes are available: 10 Insufficient cpu."),
        revision=NEW,
    )
    decision = rollout.decide(
        situation(deployment=deployment(revision=NEW, conditions=DEADLINE), pods=(unschedulable,))
    )
    assert decision.rolled_back is not None
    message = decision.rolled_back.message
    assert "progressDeadlineSeconds (30 s)" in message
    assert "10 Insufficient cpu" in message


@pytest.mark.parametrize(
    ("changes", "why"),
    [({"auto_rollback": False}, "autoRollback is false"), ({"last_ready": None}, "nothing to roll back to")],
)
def test_a_failure_that_is_not_rolled_back_is_reported_with_why(changes: dict[str, Any], why: str) -> None:
    decision = rollout.decide(situation(pods=(crashing(4),), **changes))
    assert decision.action == "follow"
    assert decision.failure is not None
    assert decision.failure.reason == "CrashLoopBackOff"
    assert why in decision.kept_because
    verdicts = conditions.evaluate(
        observation(
            rollout_failure=decision.failure, kept_because=decision.kept_because, desired_revision=NEW
        )
    )
    assert (verdicts["Degraded"].status, verdicts["Degraded"].reason) == ("True", "RolloutFailed")
    assert why in verdicts["Degraded"].message
    assert "ONNX Runtime cannot load" in verdicts["Degraded"].message


def test_rolled_back_conditions_and_phase() -> None:
    obs = observation(rolled_back=ROLLED_BACK_5, desired_revision=OLD, deployment=deployment(revision=OLD))
    verdicts = conditions.evaluate(obs)
    assert {kind: (v.status, v.reason) for kind, v in verdicts.items() if kind != "ModelResolved"} == {
        "Deployed": ("False", "RolledBack"),
        "Ready": ("False", "RolledBack"),
        "Progressing": ("False", "RolledBack"),
        "Degraded": ("True", "RolledBack"),
    }
    # The last Ready revision serves: Degraded, not Failed, and Ready stays False so that
    # `kubectl wait --for=condition=Ready` after applying the broken spec does not succeed.
    assert conditions.phase(verdicts) == "Degraded"
    assert "Fix the spec" in verdicts["Degraded"].message
    assert OLD in verdicts["Ready"].message


def test_pod_snapshot_reads_revision_restarts_and_the_crash_message() -> None:
    body = {
        "metadata": {"name": "digits-new-1", "annotations": {"ferry.dev/revision": NEW}},
        "status": {
            "initContainerStatuses": [
                {"name": "fetch-model", "restartCount": 0, "state": {"terminated": {"exitCode": 0}}}
            ],
            "containerStatuses": [
                {
                    "name": "runtime",
                    "restartCount": 4,
                    "state": {
                        "waiting": {"reason": "CrashLoopBackOff", "message": "back-off 1m20s restarting"}
                    },
                    "lastState": {
                        "terminated": {"exitCode": 1, "message": "cannot serve model 'digits': bad protobuf"}
                    },
                }
            ],
        },
    }
    snapshot = pod_snapshot(body)
    assert (snapshot.revision, snapshot.restarts) == (NEW, 4)
    assert snapshot.problem == PodProblem(
        "digits-new-1", "CrashLoopBackOff", "exited 1: cannot serve model 'digits': bad protobuf"
    )


def test_last_ready_status_records_a_new_ready_generation_and_keeps_it_otherwise() -> None:
    spec = {"model": {"uri": "pvc://models/digits/v1.onnx", "format": "onnx"}}
    model = {"format": "onnx", "uri": "pvc://models/digits/v1.onnx"}
    first = rollout.last_ready_status(None, ready=True, revision=OLD, generation=4, spec=spec, model=model)
    assert first == {"revision": OLD, "generation": 4, "model": model, "spec": spec}
    assert (
        rollout.last_ready_status(first, ready=False, revision=NEW, generation=5, spec={}, model={}) is first
    )
    parsed = rollout.last_ready_from_status({"lastReadyRevision": first})
    assert parsed is not None
    assert (parsed.revision, parsed.generation, parsed.artifact.uri) == (OLD, 4, model["uri"])
    assert parsed.spec.model.uri == "pvc://models/digits/v1.onnx"
    # A stored spec the current API no longer accepts is no rollback target.
    broken = {**first, "spec": {"model": {"uri": "nowhere"}}}
    assert rollout.last_ready_from_status({"lastReadyRevision": broken}) is None


def test_rolled_back_round_trips_through_the_status() -> None:
    assert rollout.rolled_back_from_status({"rollback": ROLLED_BACK_5.as_status()}) == ROLLED_BACK_5


def test_revision_history_after_a_rollback_does_not_name_the_same_revision_twice() -> None:
    ready = [{"type": "Ready", "status": "True"}]
    at_new = status.revisions({"revision": {"current": OLD}, "conditions": ready}, NEW)
    assert at_new == {"current": NEW, "previous": OLD}
    back = status.revisions({"revision": at_new, "conditions": [{"type": "Ready", "status": "False"}]}, OLD)
    assert back == {"current": OLD}
