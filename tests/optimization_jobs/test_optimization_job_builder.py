"""The optimization Job builder, pinned by golden files (tests/operator/golden/optimization-job-*.yaml, like
the other builders), and the properties every optimization Job must have.

Update the golden files after an intended change with FERRY_UPDATE_GOLDEN=1 and review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from ferry_operator import content_key, kinds
from ferry_operator.api import models
from ferry_operator.builders import optimization_job
from ferry_operator.builders.inputs import Owner
from ferry_optimizer import spec as optimizer_spec

GOLDEN = Path(__file__).resolve().parents[1] / "operator" / "golden"
UPDATE = os.environ.get("FERRY_UPDATE_GOLDEN") == "1"
OWNER = Owner(name="digits", namespace="ml", uid="11111111-2222-3333-4444-555555555555")
PVC_STORE = optimization_job.OptimizerDefaults(
    image="ferry-optimizer:0.1.0", artifact_store="pvc://ferry-artifacts/"
)
S3_STORE = optimization_job.OptimizerDefaults(
    image="registry.example/ferry-optimizer:0.1.0",
    image_pull_policy="Always",
    image_pull_secrets=("regcred",),
    resources={"requests": {"cpu": "2", "memory": "6Gi"}, "limits": {"cpu": "4", "memory": "8Gi"}},
    ttl_seconds=3600,
    deadline_seconds=7200,
    artifact_store="s3://ferry-artifacts/optimized/",
    artifact_s3_endpoint="http://minio.storage:9000",
    artifact_s3_region="eu-west-1",
    artifact_credentials_secret="artifact-store",
)

CASES: dict[str, tuple[dict[str, Any], optimization_job.OptimizerDefaults]] = {
    "pvc-keras": (
        {
            "model": {"uri": "pvc://models/digits/model.keras", "format": "keras"},
            "optimize": {
                "quantize": "dynamic",
                "prune": {"sparsity": 0.5, "epochs": 2},
                "data": {"uri": "pvc://datasets/digits/data.npz"},
                "validate": {"metric": "accuracy", "maxDrop": 0.01},
            },
        },
        PVC_STORE,
    ),
    "s3-savedmodel-conversion": (
        {
            "model": {
                "uri": "s3://models/digits/saved_model/",
                "format": "tensorflow",
                "credentialsSecret": "model-store",
            }
        },
        S3_STORE,
    ),
}


def inputs(spec: dict[str, Any], defaults: optimization_job.OptimizerDefaults) -> Any:
    parsed = models.ModelDeploymentSpec.model_validate(spec)
    key = content_key.content_key(parsed, "0.1.0")
    return optimization_job.OptimizationInputs(OWNER, parsed, key, defaults)


def build(case: str) -> dict[str, Any]:
    return optimization_job.job(inputs(*CASES[case]))


@pytest.mark.parametrize("case", sorted(CASES))
def test_job_matches_golden_file(case: str) -> None:
    rendered = yaml.safe_dump(build(case), sort_keys=False, width=110)
    golden = GOLDEN / f"optimization-job-{case}.yaml"
    if UPDATE:
        golden.write_text(rendered)
    assert golden.exists(), f"no golden file {golden}: run with FERRY_UPDATE_GOLDEN=1"
    assert rendered == golden.read_text(), f"{golden.name} differs: review, then FERRY_UPDATE_GOLDEN=1"


@pytest.mark.parametrize("case", sorted(CASES))
def test_job_is_owned_labelled_named_after_the_key_and_bounded(case: str) -> None:
    the_inputs = inputs(*CASES[case])
    job = optimization_job.job(the_inputs)
    meta = job["metadata"]
    assert meta["name"] == f"digits-opt-{the_inputs.key[:10]}"
    assert meta["annotations"][kinds.OPTIMIZATION_KEY_ANNOTATION] == the_inputs.key
    assert len(meta["annotations"][kinds.INPUT_HASH_ANNOTATION]) == 16
    (reference,) = meta["ownerReferences"]
    assert (reference["kind"], reference["uid"], reference["controller"]) == (
        "ModelDeployment",
        OWNER.uid,
        True,
    )
    assert meta["labels"][kinds.MANAGED_BY_LABEL] == "ferry"
    spec = job["spec"]
    assert spec["backoffLimit"] <= 2
    assert spec["activeDeadlineSeconds"] == the_inputs.defaults.deadline_seconds
    assert spec["ttlSecondsAfterFinished"] == the_inputs.defaults.ttl_seconds
    # Bad input (exit 2) fails the Job at once instead of being retried.
    assert spec["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [2]
    assert spec["template"]["spec"]["restartPolicy"] == "Never"


@pytest.mark.parametrize("case", sorted(CASES))
def test_job_pods_meet_pod_security_restricted_and_have_limits(case: str) -> None:
    pod = build(case)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(field)
    (container,) = pod["containers"]
    context = container["securityContext"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["runAsNonRoot"] is True
    assert context["readOnlyRootFilesystem"] is True
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["resources"]["limits"]["memory"]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    for volume in pod["volumes"]:
        assert set(volume) - {"name"} <= {"emptyDir", "persistentVolumeClaim", "downwardAPI"}


def test_job_pods_are_never_taken_for_serving_pods() -> None:
    labels = build("pvc-keras")["spec"]["template"]["metadata"]["labels"]
    # The Service, the PDB and the serving pod index select on this label.
    assert kinds.MODEL_DEPLOYMENT_LABEL not in labels
    assert labels[kinds.OPTIMIZATION_OF_LABEL] == "digits"
    assert labels[kinds.MANAGED_BY_LABEL] == "ferry"


def test_arguments_mounts_and_spec_file() -> None:
    the_inputs = inputs(*CASES["pvc-keras"])
    job = optimization_job.job(the_inputs)
    template = job["spec"]["template"]
    (container,) = template["spec"]["containers"]
    assert container["command"] == ["ferry-optimize"]
    assert container["args"] == [
        "--model", "pvc://models/digits/model.keras",
        "--format", "keras",
        "--spec", "/etc/ferry/spec.json",
        "--data", "pvc://datasets/digits/data.npz",
        "--output", f"pvc://ferry-artifacts/ml/digits/{the_inputs.key}/",
        "--key", the_inputs.key,
    ]  # fmt: skip
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/mnt/pvc/models"]["readOnly"] is True
    assert mounts["/mnt/pvc/datasets"]["readOnly"] is True
    assert mounts["/mnt/pvc/ferry-artifacts"]["readOnly"] is False
    assert mounts["/etc/ferry"]["readOnly"] is True
    assert {"name": "FERRY_PVC_ROOT", "value": "/mnt/pvc"} in container["env"]
    # The spec file is the annotation, projected by the downward API: the spec the optimizer parses to the
    # same normalized spec the key was computed from.
    document = template["metadata"]["annotations"][optimization_job.SPEC_ANNOTATION]
    assert optimizer_spec.parse(json.loads(document)).to_dict() == content_key.normalized_optimize(
        the_inputs.spec.optimize
    )
    spec_volume = next(v for v in template["spec"]["volumes"] if v["name"] == "spec")
    (item,) = spec_volume["downwardAPI"]["items"]
    assert item["path"] == "spec.json"
    assert item["fieldRef"]["fieldPath"] == f"metadata.annotations['{optimization_job.SPEC_ANNOTATION}']"


def test_a_claim_both_read_and_written_is_mounted_once_writable() -> None:
    spec = {"model": {"uri": "pvc://ferry-artifacts/sources/m.keras", "format": "keras"}}
    pod = optimization_job.job(inputs(spec, PVC_STORE))["spec"]["template"]["spec"]
    claims = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert claims == [
        {
            "name": "pvc-ferry-artifacts",
            "persistentVolumeClaim": {"claimName": "ferry-artifacts", "readOnly": False},
        }
    ]


def test_s3_store_credentials_come_from_secret_key_refs_and_model_credentials_from_env_from() -> None:
    (container,) = build("s3-savedmodel-conversion")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio.storage:9000"
    assert env["AWS_REGION"]["value"] == "eu-west-1"
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"] == {
        "secretKeyRef": {"name": "artifact-store", "key": "AWS_ACCESS_KEY_ID"}
    }
    assert container["envFrom"] == [{"secretRef": {"name": "model-store"}}]
    # No optimize block: the model is only converted, with the defaults.
    assert "--data" not in container["args"]
    assert container["args"][container["args"].index("--output") + 1].startswith(
        "s3://ferry-artifacts/optimized/ml/"
    )


def test_empty_resources_fall_back_to_bounded_defaults() -> None:
    (container,) = build("pvc-keras")["spec"]["template"]["spec"]["containers"]
    assert container["resources"] == dict(optimization_job.DEFAULT_RESOURCES)


def test_job_names_fit_a_label_value_and_stay_unique() -> None:
    key = "ab" * 32
    assert optimization_job.job_name("digits", key) == f"digits-opt-{key[:10]}"
    long_a = "a" * 100 + "-x"
    long_b = "a" * 100 + "-y"
    name_a = optimization_job.job_name(long_a, key)
    name_b = optimization_job.job_name(long_b, key)
    assert len(name_a) <= 63
    assert len(name_b) <= 63
    assert name_a != name_b
    assert name_a.endswith(f"-opt-{key[:10]}")
    # Exactly at the limit nothing is cut.
    fits = "b" * (63 - len(f"-opt-{key[:10]}"))
    assert optimization_job.job_name(fits, key) == f"{fits}-opt-{key[:10]}"


def test_the_job_changes_only_with_its_inputs() -> None:
    first = build("pvc-keras")
    assert build("pvc-keras") == first
    spec, _ = CASES["pvc-keras"]
    other = optimization_job.OptimizerDefaults(image="ferry-optimizer:0.1.0", artifact_store="pvc://other/")
    other_store = optimization_job.job(inputs(spec, other))
    hash_of = kinds.INPUT_HASH_ANNOTATION
    assert other_store["metadata"]["annotations"][hash_of] != first["metadata"]["annotations"][hash_of]
    # Same key (same content), other Job inputs: same name, other input hash.
    assert other_store["metadata"]["name"] == first["metadata"]["name"]


def test_a_pinned_model_digest_reaches_the_job_and_the_key() -> None:
    # A folder pinned by its manifest digest: the key is made from the digest, and the Job refuses other
    # content at the URI, so the key covers the folder's files.
    pinned = {"model": {"uri": "pvc://models/llm/", "format": "huggingface", "sha256": "c" * 64}}
    (container,) = optimization_job.job(inputs(pinned, PVC_STORE))["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--model-sha256") + 1] == "c" * 64
    other = {"model": {**pinned["model"], "sha256": "d" * 64}}
    assert inputs(pinned, PVC_STORE).key != inputs(other, PVC_STORE).key
    unpinned = {"model": {"uri": "pvc://models/llm/", "format": "huggingface"}}
    unpinned_job = optimization_job.job(inputs(unpinned, PVC_STORE))
    assert "--model-sha256" not in unpinned_job["spec"]["template"]["spec"]["containers"][0]["args"]
