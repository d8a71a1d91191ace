"""Automatic rollback on the real local cluster: a model update whose pods cannot start misses its progress
deadline (the real Deployment controller declares it), and the operator returns to the last Ready revision.

The broken update points the model at a claim that does not exist, so the new pods stay Pending with the
scheduler's message (fake nodes run every pod that is scheduled; a pod that is never scheduled is the
failure they can show). The crash-loop path is the same decision, tested in test_operator_rollout.py.
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from operator_cases import spec_with

from conftest import Cluster, OperatorProcess, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("operator", "model_pvc")]

SMALL = {"requests": {"cpu": "10m", "memory": "16Mi"}}
GOOD = "pvc://models/digits/v1.onnx"
BROKEN = "pvc://no-such-claim/digits/v2.onnx"
# The API's minimum, so the test waits as little as the Deployment controller allows.
DEADLINE = {"progressDeadlineSeconds": 10}


def spec(uri: str, **rollout: Any) -> dict[str, Any]:
    return spec_with(
        model={"uri": uri}, serving={"resources": SMALL, "replicas": 2}, rollout={**DEADLINE, **rollout}
    )


def condition(md: dict[str, Any], condition_type: str) -> dict[str, Any]:
    return next(c for c in md["status"]["conditions"] if c["type"] == condition_type)


def template_revision(cluster: Cluster) -> str:
    deployment = cluster.get("deployment", "digits")
    assert deployment is not None
    return str(deployment["spec"]["template"]["metadata"]["annotations"]["ferry.dev/revision"])


def test_a_broken_update_is_rolled_back_once_and_the_previous_revision_keeps_serving(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    cluster.apply_md("digits", spec(GOOD))
    ready = wait_for("digits Ready", lambda: cluster.ready("digits"))
    good_revision = ready["status"]["revision"]["current"]
    assert ready["status"]["lastReadyRevision"]["revision"] == good_revision
    assert ready["status"]["lastReadyRevision"]["model"]["uri"] == GOOD

    cluster.apply_md("digits", spec(BROKEN))

    def rolled_back() -> dict[str, Any] | None:
        md = cluster.get("modeldeployment", "digits") or {}
        status = md.get("status") or {}
        return md if status.get("phase") == "Degraded" and status.get("rollback") else None

    md = wait_for("the rollback", rolled_back)
    status = md["status"]
    rollback = status["rollback"]
    assert (rollback["generation"], rollback["revision"], rollback["reason"]) == (
        2,
        good_revision,
        "ProgressDeadlineExceeded",
    )
    assert rollback["failedRevision"] != good_revision
    # The pod's own failure is in the status: the scheduler's word for the missing claim.
    assert 'persistentvolumeclaim "no-such-claim" not found' in rollback["message"]
    degraded = condition(md, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "RolledBack")
    assert (condition(md, "Ready")["status"], condition(md, "Ready")["reason"]) == ("False", "RolledBack")
    assert status["model"]["uri"] == GOOD
    assert status["revision"]["current"] == good_revision

    # The Deployment runs the Ready revision again, with both of its replicas, and no pod of the broken one.
    assert template_revision(cluster) == good_revision
    wait_for(
        "only the Ready revision's pods",
        lambda: (
            (pods := cluster.items("pods", "ferry.dev/modeldeployment=digits"))
            and all(p["metadata"]["annotations"]["ferry.dev/revision"] == good_revision for p in pods)
            and sum(1 for p in pods if p["status"].get("phase") == "Running") == 2
        ),
    )
    events = [e for e in cluster.events("digits") if e["reason"] == "RolledBack"]
    assert [e["type"] for e in events] == ["Warning"]

    # The broken spec is not retried while it stays the spec: no new rollout after more than a deadline.
    deployment = cluster.get("deployment", "digits")
    assert deployment is not None
    time.sleep(2.5 * DEADLINE["progressDeadlineSeconds"])
    again = cluster.get("deployment", "digits")
    assert again is not None
    assert again["metadata"]["generation"] == deployment["metadata"]["generation"]
    later = cluster.get("modeldeployment", "digits")
    assert later is not None
    assert later["status"]["rollback"] == rollback
    assert 'ferry_operator_rollbacks_total{reason="ProgressDeadlineExceeded"} 1.0' in operator.metrics()

    # A fixed spec is a new generation and a new attempt; the rollback record goes.
    fixed = "pvc://models/digits/v3.onnx"
    cluster.apply_md("digits", spec(fixed))
    md = wait_for("the fixed spec Ready", lambda: cluster.ready("digits", generation=3))
    assert "rollback" not in md["status"]
    assert md["status"]["lastReadyRevision"]["model"]["uri"] == fixed
    assert md["status"]["revision"]["current"] != good_revision
    assert rollout_stuck(operator) == "0.0"


def rollout_stuck(operator: OperatorProcess) -> str | None:
    """The operator's rollout-stuck gauge of digits (what FerryModelRolloutStuck fires on)."""
    found = re.search(
        r'^ferry_operator_modeldeployment_rollout_stuck\{[^}]*modeldeployment="digits"[^}]*\} (\S+)$',
        operator.metrics(),
        re.MULTILINE,
    )
    return found.group(1) if found else None


def test_without_auto_rollback_the_failed_rollout_is_left_and_the_status_says_why(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    cluster.apply_md("digits", spec(GOOD, autoRollback=False))
    ready = wait_for("digits Ready", lambda: cluster.ready("digits"))
    good_revision = ready["status"]["revision"]["current"]
    cluster.apply_md("digits", spec(BROKEN, autoRollback=False))
    degraded = wait_for(
        "Degraded=True RolloutFailed",
        lambda: (c := cluster.condition("digits", "Degraded")) and c["reason"] == "RolloutFailed" and c,
    )
    assert "autoRollback is false" in degraded["message"]
    assert "ProgressDeadlineExceeded" in degraded["message"]
    md = cluster.get("modeldeployment", "digits")
    assert md is not None
    assert "rollback" not in md["status"]
    assert md["status"]["phase"] == "Failed"
    # Left in place: the Deployment still asks for the new revision, while the old pods keep serving.
    assert template_revision(cluster) != good_revision
    deployment = cluster.get("deployment", "digits")
    assert deployment is not None
    assert deployment["status"].get("availableReplicas") == 2
    assert rollout_stuck(operator) == "1.0"
