"""The optimization resolver's decision table, on snapshots: every situation a Job and its pod can be in,
and what is served, reported and done about it. Pure functions, no cluster (the cluster test runs the
same code against the real API server and the real optimizer)."""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest

import ferry_operator
from ferry_operator import content_key, kinds
from ferry_operator.api import models
from ferry_operator.builders.inputs import ServedArtifact
from ferry_operator.reconcile import optimization
from ferry_operator.reconcile.optimization import JobPodSnapshot, JobSnapshot, Situation, Summary

KEY = "51a01c8e54d56f8396aee90c958a764a906a5e83b24692c8947b38451bb8d557"
JOB = f"digits-opt-{KEY[:10]}"
NOW = datetime.datetime(2026, 5, 1, 12, 0, 0, tzinfo=datetime.UTC)
PREVIOUS = ServedArtifact(uri="pvc://ferry-artifacts/ml/digits/old/model.onnx", sha256="0" * 64)
ARTIFACT = {
    "uri": f"pvc://ferry-artifacts/ml/digits/{KEY}/model.onnx",
    "sha256": "4c22cf0c" * 8,
    "sizeBytes": 21867,
}

# A generative folder's artifact: the output's model/ folder, with its KV-cache figures
# (docs/optimizer.md).
GENERATIVE_ARTIFACT = {
    "uri": f"pvc://ferry-artifacts/ml/llm/{KEY}/model/",
    "sha256": "5d33" * 16,
    "sizeBytes": 3_000_000,
    "kvCacheBytesPerToken": 4096,
    "contextLength": 256,
}


def summary(**fields: Any) -> str:
    """A termination message as ferry-optimize writes it (docs/optimizer.md's example)."""
    message = {
        "passed": True,
        "chosen": "pruned",
        "reason": "pruned: accuracy drop -0.002227 <= maxDrop 0.01; chosen as the smallest of the fastest",
        "key": KEY,
        "artifact": ARTIFACT,
        "metric": {"name": "accuracy", "baseline": 0.977728, "value": 0.979955},
        "candidates": [
            {"name": "baseline", "passed": True, "sizeBytes": 70666, "latencyMs": 0.0251, "metric": 0.977728},
            {"name": "pruned", "passed": True, "sizeBytes": 21867, "latencyMs": 0.0165, "metric": 0.979955},
        ],
    }
    message.update(fields)
    return json.dumps(message, separators=(",", ":"))


REJECTED = summary(
    passed=False,
    chosen=None,
    artifact=None,
    metric=None,
    reason="pruned: accuracy drop 0.31 > maxDrop 0.0",
)


def job(state: str = "running", **fields: Any) -> JobSnapshot:
    defaults: dict[str, Any] = {
        "name": JOB,
        "uid": "job-uid",
        "key": KEY,
        "input_hash": "hash",
        "state": state,
        "finished_at": "2026-05-01T11:59:50Z" if state != "running" else None,
    }
    return JobSnapshot(**{**defaults, **fields})


def pod(**fields: Any) -> JobPodSnapshot:
    defaults: dict[str, Any] = {"name": f"{JOB}-abcde", "job_uid": "job-uid", "phase": "Running"}
    return JobPodSnapshot(**{**defaults, **fields})


def finished_pod(message: str, exit_code: int = 0) -> JobPodSnapshot:
    return pod(
        phase="Succeeded" if exit_code == 0 else "Failed",
        exit_code=exit_code,
        message=message,
        finished_at="2026-05-01T11:59:49Z",
    )


def situation(**fields: Any) -> Situation:
    defaults: dict[str, Any] = {
        "key": KEY,
        "job_name": JOB,
        "desired_job_hash": "hash",
        "model_uri": "pvc://models/digits/model.keras",
        "model_format": "keras",
        "jobs": (),
        "pods": (),
        "recorded": None,
        "previous": None,
        "now": NOW,
        "artifact_store": "pvc://ferry-artifacts/",
    }
    return Situation(**{**defaults, **fields})


def test_no_job_yet_creates_one_and_reports_optimizing() -> None:
    decision = optimization.decide(situation())
    assert decision.action == "create"
    assert decision.artifact is None
    assert (decision.optimized.status, decision.optimized.reason) == ("Unknown", "Optimizing")
    assert JOB in decision.optimized.message
    resolution = decision.resolution()
    # Nothing to serve yet: ModelResolved is Unknown (work under way), not False.
    assert (resolution.resolution.ready, resolution.resolution.status) == (False, "Unknown")
    assert resolution.status == {"optimization": {"job": JOB, "key": KEY}}


def test_while_optimizing_the_previous_artifact_keeps_serving() -> None:
    decision = optimization.decide(situation(previous=PREVIOUS, jobs=(job(),), pods=(pod(),)))
    assert decision.action == "none"
    assert decision.artifact == PREVIOUS
    assert decision.optimized.status == "Unknown"
    assert f"{PREVIOUS.uri} serves meanwhile" in decision.optimized.message
    assert decision.resolution().resolution.ready


def test_a_pod_that_cannot_start_is_named_in_the_optimizing_message() -> None:
    stuck = pod(phase="Pending", problem='Unschedulable: persistentvolumeclaim "ferry-artifacts" not found')
    decision = optimization.decide(situation(jobs=(job(),), pods=(stuck,)))
    assert decision.optimized.reason == "Optimizing"
    assert 'persistentvolumeclaim "ferry-artifacts" not found' in decision.optimized.message


def test_a_passing_result_is_served_and_recorded() -> None:
    decision = optimization.decide(situation(jobs=(job("succeeded"),), pods=(finished_pod(summary()),)))
    assert decision.artifact == ServedArtifact(
        uri=ARTIFACT["uri"], sha256=ARTIFACT["sha256"], size_bytes=ARTIFACT["sizeBytes"]
    )
    assert (decision.optimized.status, decision.optimized.reason) == ("True", "Passed")
    assert "accuracy 0.9777 -> 0.98" in decision.optimized.message
    assert decision.result is not None
    status = decision.resolution().status["optimization"]
    assert status["artifact"] == ARTIFACT
    assert status["report"]["chosen"] == "pruned"
    assert status["report"]["passed"] is True
    assert [c["name"] for c in status["report"]["candidates"]] == ["baseline", "pruned"]
    assert status["report"]["metric"] == {"name": "accuracy", "baseline": 0.977728, "value": 0.979955}
    # The status is valid against the API's schema.
    models.OptimizationStatus.model_validate(status)


@pytest.mark.parametrize("source_format", ["huggingface", "onnx-genai"])
def test_a_generative_sources_result_is_served_as_an_onnx_genai_folder(source_format: str) -> None:
    # A Hugging Face folder is never served itself: the Job's artifact is the onnxruntime-genai folder it
    # built, checked by its manifest digest; the same as for a re-quantized onnx-genai folder.
    decision = optimization.decide(
        situation(
            model_uri="pvc://models/llm/",
            model_format=source_format,
            jobs=(job("succeeded"),),
            pods=(finished_pod(summary(artifact=GENERATIVE_ARTIFACT)),),
        )
    )
    # With what the memory request is sized from (the folder's size, its KV cache per token, its context).
    assert decision.artifact == ServedArtifact(
        uri=GENERATIVE_ARTIFACT["uri"],
        sha256=GENERATIVE_ARTIFACT["sha256"],
        format="onnx-genai",
        size_bytes=3_000_000,
        kv_cache_bytes_per_token=4096,
        context_length=256,
    )
    status = decision.resolution().status["optimization"]
    assert status["artifact"] == GENERATIVE_ARTIFACT


def test_a_generative_folder_of_the_layout_before_model_is_served_unchecked() -> None:
    # An earlier optimizer wrote the model into the output folder itself, beside report.json and
    # tensorboard/, which its digest leaves out: checking that digest would fail every such pod.
    earlier = GENERATIVE_ARTIFACT | {"uri": f"pvc://ferry-artifacts/ml/llm/{KEY}/"}
    decision = optimization.decide(
        situation(
            model_uri="pvc://models/llm/",
            model_format="huggingface",
            jobs=(job("succeeded"),),
            pods=(finished_pod(summary(artifact=earlier)),),
        )
    )
    assert decision.artifact is not None
    assert decision.artifact.uri == earlier["uri"]
    assert decision.artifact.sha256 is None


def test_a_huggingface_model_needs_a_job_even_without_an_optimize_block() -> None:
    spec = models.ModelDeploymentSpec.model_validate(
        {"model": {"uri": "pvc://models/llm/", "format": "huggingface"}}
    )
    assert optimization.needs_optimization(spec)
    # The Job builds the unquantized model only: quantize none, as the optimizer's own default.
    assert content_key.normalized_optimize(spec.optimize)["quantize"] == "none"


def test_a_recorded_result_is_reused_without_any_job() -> None:
    recorded = optimization.parse_summary(summary())
    decision = optimization.decide(situation(recorded=recorded))
    assert decision.action == "none"
    assert decision.optimized.reason == "Passed"
    assert decision.artifact is not None
    assert decision.artifact.uri == ARTIFACT["uri"]


def test_a_rejection_keeps_the_previous_revision_and_says_why() -> None:
    decision = optimization.decide(
        situation(previous=PREVIOUS, jobs=(job("succeeded"),), pods=(finished_pod(REJECTED),))
    )
    assert decision.artifact == PREVIOUS
    assert (decision.optimized.status, decision.optimized.reason) == ("False", "GateRejected")
    assert "accuracy drop 0.31 > maxDrop 0.0" in decision.optimized.message
    assert f"{PREVIOUS.uri} keeps serving" in decision.optimized.message
    status = decision.resolution().status["optimization"]
    assert status["report"]["passed"] is False
    assert "artifact" not in status


def test_a_rejection_with_nothing_serving_says_what_to_change() -> None:
    decision = optimization.decide(situation(jobs=(job("succeeded"),), pods=(finished_pod(REJECTED),)))
    assert decision.artifact is None
    assert decision.optimized.reason == "GateRejected"
    assert "maxDrop" in decision.optimized.message
    resolution = decision.resolution().resolution
    assert (resolution.status, resolution.reason) == ("False", "GateRejected")


def test_no_gate_and_no_candidate_serves_the_converted_baseline() -> None:
    baseline = summary(passed=False, chosen="baseline", reason="optimized: quantization failed")
    decision = optimization.decide(situation(jobs=(job("succeeded"),), pods=(finished_pod(baseline),)))
    assert decision.artifact is not None
    assert decision.artifact.uri == ARTIFACT["uri"]
    assert (decision.optimized.status, decision.optimized.reason) == ("False", "CandidatesFailed")


@pytest.mark.parametrize(
    ("message", "problem"),
    [
        ("", "empty"),
        ("Traceback (most recent call last): ...", "not JSON"),
        ('{"passed": true}', "lacks"),
        (summary(candidates=[{"name": "x"}]), "does not match the summary schema"),
        (summary(key="f" * 64), "reported content key"),
    ],
)
def test_a_missing_or_invalid_result_is_waited_for_then_reported(message: str, problem: str) -> None:
    just_finished = job("succeeded", finished_at="2026-05-01T11:59:50Z")
    waiting = optimization.decide(situation(jobs=(just_finished,), pods=(finished_pod(message),)))
    assert waiting.optimized.reason == "Optimizing"
    assert waiting.recheck_after == pytest.approx(optimization.RESULT_GRACE_SECONDS - 10)
    long_ago = job("succeeded", finished_at="2026-05-01T11:00:00Z")
    given_up = optimization.decide(
        situation(previous=PREVIOUS, jobs=(long_ago,), pods=(finished_pod(message),))
    )
    assert (given_up.optimized.status, given_up.optimized.reason) == ("False", "NoResult")
    assert problem in given_up.optimized.message
    assert given_up.artifact == PREVIOUS
    assert given_up.recheck_after is None


def test_a_failed_job_reports_the_optimizers_reason() -> None:
    bad_input = json.dumps(
        {
            "passed": False,
            "chosen": None,
            "reason": "bad input: --format: expected one of [...], got 'keras' for a SavedModel directory",
            "key": KEY,
            "artifact": None,
            "metric": None,
            "candidates": [],
        }
    )
    failed = job(
        "failed", reason="PodFailurePolicy", message="Container optimize for pod x failed with exit code 2"
    )
    decision = optimization.decide(
        situation(previous=PREVIOUS, jobs=(failed,), pods=(finished_pod(bad_input, exit_code=2),))
    )
    assert (decision.optimized.status, decision.optimized.reason) == ("False", "JobFailed")
    assert decision.action == "none"
    assert "bad input: --format" in decision.optimized.message
    assert "PodFailurePolicy" in decision.optimized.message
    assert f"kubectl logs job/{JOB}" in decision.optimized.message
    assert decision.artifact == PREVIOUS


def test_a_failed_job_without_a_summary_shows_the_log_tail() -> None:
    failed = job(
        "failed", reason="BackoffLimitExceeded", message="Job has reached the specified backoff limit"
    )
    killed = finished_pod("...\nMemoryError: cannot allocate 2 GiB", exit_code=137)
    decision = optimization.decide(situation(jobs=(failed,), pods=(killed,)))
    assert decision.optimized.reason == "JobFailed"
    assert "MemoryError: cannot allocate 2 GiB" in decision.optimized.message
    assert "BackoffLimitExceeded" in decision.optimized.message


def test_a_failed_job_whose_inputs_changed_is_replaced() -> None:
    failed = job("failed", input_hash="old-hash", reason="PodFailurePolicy")
    decision = optimization.decide(situation(jobs=(failed,), desired_job_hash="new-hash"))
    assert decision.action == "replace"
    assert decision.stale == failed
    assert decision.optimized.reason == "Optimizing"


def test_pods_of_an_earlier_job_of_the_same_name_are_ignored() -> None:
    earlier = pod(job_uid="earlier-job", phase="Succeeded", exit_code=0, message=REJECTED)
    decision = optimization.decide(situation(jobs=(job(),), pods=(earlier,)))
    assert decision.optimized.reason == "Optimizing"


def test_other_keys_jobs_do_not_count() -> None:
    old = job("succeeded", name="digits-opt-0123456789", key="0123456789" + "0" * 54, uid="old")
    decision = optimization.decide(situation(jobs=(old,), pods=(finished_pod(summary()),)))
    assert decision.action == "create"


def test_a_foreign_job_with_the_name_is_not_adopted() -> None:
    decision = optimization.decide(situation(jobs=(job(key="f" * 64),)))
    assert (decision.optimized.status, decision.optimized.reason) == ("False", "JobConflict")
    assert decision.action == "none"


def test_without_an_artifact_store_nothing_is_created() -> None:
    decision = optimization.decide(situation(artifact_store="", model_format="onnx", previous=PREVIOUS))
    assert decision.action == "none"
    assert (decision.optimized.status, decision.optimized.reason) == ("False", "NoArtifactStore")
    assert "FERRY_OPERATOR_ARTIFACT_STORE" in decision.optimized.message
    assert decision.artifact == PREVIOUS
    # A model that must be converted says so first, and how else to get it served.
    keras = optimization.decide(situation(artifact_store=""))
    assert (keras.optimized.reason, keras.artifact) == ("ConversionRequired", None)
    assert "format: onnx" in keras.optimized.message
    assert "FERRY_OPERATOR_ARTIFACT_STORE" in keras.optimized.message


# --- snapshots --------------------------------------------------------------------------------------------


def job_body(conditions: list[dict[str, Any]], **status: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": JOB,
            "namespace": "ml",
            "uid": "job-uid",
            "annotations": {kinds.OPTIMIZATION_KEY_ANNOTATION: KEY, kinds.INPUT_HASH_ANNOTATION: "hash"},
            "ownerReferences": [
                {
                    "apiVersion": "ferry.dev/v1alpha1",
                    "kind": "ModelDeployment",
                    "name": "digits",
                    "controller": True,
                }
            ],
        },
        "status": {"conditions": conditions, **status},
    }


def test_job_snapshots_follow_the_job_controllers_conditions() -> None:
    running = optimization.job_entry(job_body([{"type": "SuccessCriteriaMet", "status": "True"}]))
    assert running is not None
    assert running[0] == ("ml", "digits")
    assert running[1].state == "running"
    complete = optimization.job_snapshot(
        job_body([{"type": "Complete", "status": "True"}], completionTime="2026-05-01T11:59:50Z")
    )
    assert (complete.state, complete.finished_at, complete.key) == ("succeeded", "2026-05-01T11:59:50Z", KEY)
    failed = optimization.job_snapshot(
        job_body(
            [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "DeadlineExceeded",
                    "message": "Job was active longer than specified deadline",
                    "lastTransitionTime": "2026-05-01T11:00:00Z",
                }
            ]
        )
    )
    assert (failed.state, failed.reason) == ("failed", "DeadlineExceeded")
    assert failed.finished_at == "2026-05-01T11:00:00Z"


def pod_body(status: dict[str, Any], labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"{JOB}-abcde",
            "namespace": "ml",
            "labels": labels
            if labels is not None
            else {kinds.MANAGED_BY_LABEL: "ferry", kinds.OPTIMIZATION_OF_LABEL: "digits", "job-name": JOB},
            "ownerReferences": [{"kind": "Job", "name": JOB, "uid": "job-uid", "controller": True}],
        },
        "status": status,
    }


def test_job_pod_snapshots_carry_the_termination_message_and_problems() -> None:
    done = pod_body(
        {
            "phase": "Succeeded",
            "containerStatuses": [
                {
                    "name": "optimize",
                    "state": {
                        "terminated": {
                            "exitCode": 0,
                            "message": summary(),
                            "finishedAt": "2026-05-01T11:59:49Z",
                        }
                    },
                }
            ],
        }
    )
    entry = optimization.job_pod_entry(done)
    assert entry is not None
    key, snapshot = entry
    assert key == ("ml", "digits")
    assert (snapshot.job_uid, snapshot.exit_code, snapshot.message) == ("job-uid", 0, summary())
    pulling = optimization.job_pod_snapshot(
        pod_body(
            {
                "phase": "Pending",
                "containerStatuses": [
                    {
                        "name": "optimize",
                        "state": {"waiting": {"reason": "ImagePullBackOff", "message": "no such image"}},
                    }
                ],
            }
        )
    )
    assert pulling.problem == "ImagePullBackOff: no such image"
    unschedulable = optimization.job_pod_snapshot(
        pod_body(
            {
                "phase": "Pending",
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": "0/3 nodes",
                    }
                ],
            }
        )
    )
    assert unschedulable.problem == "Unschedulable: 0/3 nodes"
    # Serving pods and other pods are not optimization pods.
    assert optimization.job_pod_entry(pod_body({}, labels={kinds.MODEL_DEPLOYMENT_LABEL: "digits"})) is None
    assert optimization.job_pod_entry(pod_body({}, labels={kinds.OPTIMIZATION_OF_LABEL: "digits"})) is None


def test_recorded_result_and_served_artifact_come_from_the_status() -> None:
    parsed = optimization.parse_summary(summary())
    status = {
        "model": {"format": "onnx", "uri": ARTIFACT["uri"], "digest": f"sha256:{ARTIFACT['sha256']}"},
        "optimization": {
            "job": JOB,
            "key": KEY,
            "artifact": ARTIFACT,
            "report": parsed.report.model_dump(by_alias=True, exclude_none=True),
        },
    }
    recorded = optimization.recorded_result(status, KEY)
    assert recorded == Summary(key=KEY, report=parsed.report, artifact=parsed.artifact)
    assert optimization.recorded_result(status, "other") is None
    assert optimization.recorded_result({"optimization": {"job": JOB, "key": KEY}}, KEY) is None
    assert optimization.served_from_status(status) == ServedArtifact(
        uri=ARTIFACT["uri"], sha256=ARTIFACT["sha256"]
    )
    assert optimization.served_from_status({}) is None


def test_which_specs_are_optimized_and_the_optimizer_version() -> None:
    def spec(**fields: Any) -> models.ModelDeploymentSpec:
        return models.ModelDeploymentSpec.model_validate(fields)

    assert not optimization.needs_optimization(spec(model={"uri": "pvc://m/m.onnx", "format": "onnx"}))
    assert optimization.needs_optimization(spec(model={"uri": "pvc://m/m.keras", "format": "keras"}))
    assert optimization.needs_optimization(
        spec(model={"uri": "pvc://m/m.onnx", "format": "onnx"}, optimize={"quantize": "dynamic"})
    )
    assert optimization.optimizer_version("ferry-optimizer:0.1.0") == "0.1.0"
    assert optimization.optimizer_version("registry:5000/team/ferry-optimizer:0.2.0") == "0.2.0"
    assert optimization.optimizer_version("registry:5000/ferry-optimizer@sha256:abc") == "sha256:abc"
    assert optimization.optimizer_version("registry:5000/ferry-optimizer") == ferry_operator.__version__
