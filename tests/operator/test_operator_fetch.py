"""The serving pod's fetch containers for an optimized artifact: the artifact store's S3 credentials (the
same environment the optimization Job writes with) and the drift reference fetched beside model.onnx.

Update the golden file after an intended change with FERRY_UPDATE_GOLDEN=1 and review the diff.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from operator_cases import DATA, spec_with

from ferry_operator import builders, kinds
from ferry_operator.api import models
from ferry_operator.builders import inputs as build_inputs
from ferry_operator.builders import optimization_job
from ferry_operator.builders.artifact_store import ArtifactStore

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("FERRY_UPDATE_GOLDEN") == "1"
OWNER = build_inputs.Owner(name="digits", namespace="ml", uid="11111111-2222-3333-4444-555555555555")
S3_STORE = ArtifactStore(
    uri="s3://ferry-artifacts/ml/",
    s3_endpoint="http://minio.storage:9000",
    s3_region="eu-west-1",
    credentials_secret="artifact-store-creds",
)
PVC_STORE = ArtifactStore(uri="pvc://ferry-artifacts/")
KEY = "51a01c8e54d56f8396aee90c958a764a906a5e83b24692c8947b38451bb8d557"
DIGEST = "4c" * 32
# The source model is in another bucket, with its own credentials.
SPEC = spec_with(
    model={"uri": "s3://models/digits/model.keras", "format": "keras", "credentialsSecret": "model-creds"},
    optimize={"quantize": "dynamic", "data": DATA},
)


def pod(store: ArtifactStore, artifact_uri: str, spec: dict[str, Any] = SPEC) -> dict[str, Any]:
    inputs = build_inputs.BuildInputs(
        owner=OWNER,
        spec=models.ModelDeploymentSpec.model_validate(spec),
        artifact=build_inputs.ServedArtifact(uri=artifact_uri, sha256=DIGEST),
        defaults=build_inputs.ServingDefaults(runtime_image="ferry-runtime:0.1.0", artifact_store=store),
    )
    deployment = builders.desired_children(inputs)[kinds.DEPLOYMENT]
    return deployment["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def test_fetch_containers_of_an_optimized_s3_artifact_match_the_golden_file() -> None:
    init = pod(S3_STORE, f"s3://ferry-artifacts/ml/digits/{KEY[:10]}/model.onnx")["initContainers"]
    rendered = yaml.safe_dump(init, sort_keys=False, width=110)
    golden = GOLDEN / "fetch-optimized-s3.yaml"
    if UPDATE:
        golden.write_text(rendered)
    assert golden.exists(), f"no golden file {golden}: run with FERRY_UPDATE_GOLDEN=1"
    assert rendered == golden.read_text(), f"{golden.name} differs: review, then FERRY_UPDATE_GOLDEN=1"


def test_an_s3_artifact_is_read_with_the_environment_the_optimization_job_wrote_it_with() -> None:
    artifact = f"s3://ferry-artifacts/ml/digits/{KEY[:10]}/model.onnx"
    fetch, reference = pod(S3_STORE, artifact)["initContainers"]
    job_defaults = optimization_job.OptimizerDefaults(
        image="ferry-optimizer:0.1.0",
        artifact_store=S3_STORE.uri,
        artifact_s3_endpoint=S3_STORE.s3_endpoint,
        artifact_s3_region=S3_STORE.s3_region,
        artifact_credentials_secret=S3_STORE.credentials_secret,
    )
    job_inputs = optimization_job.OptimizationInputs(
        owner=OWNER, spec=models.ModelDeploymentSpec.model_validate(SPEC), key=KEY, defaults=job_defaults
    )
    job_env = optimization_job.container(job_inputs)["env"]
    store_env = [entry for entry in job_env if entry["name"].startswith("AWS_")]
    assert [entry["name"] for entry in store_env] == [
        "AWS_ENDPOINT_URL",
        "AWS_REGION",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    ]
    for container in (fetch, reference):
        assert [entry for entry in container["env"] if entry["name"].startswith("AWS_")] == store_env
        # The source model's credentials are for the source's bucket, not the store's.
        assert "envFrom" not in container
    assert fetch["args"] == [artifact, "/mnt/models", "--sha256", DIGEST]
    assert reference["name"] == "fetch-drift-reference"
    assert reference["args"] == [
        artifact.removesuffix("model.onnx") + "reference.json",
        "/mnt/models/reference.json",
    ]


def test_a_pvc_artifact_gets_its_claim_and_no_s3_environment() -> None:
    artifact = f"pvc://ferry-artifacts/ml/digits/{KEY[:10]}/model.onnx"
    spec = pod(PVC_STORE, artifact)
    fetch, reference = spec["initContainers"]
    for container in (fetch, reference):
        assert [entry["name"] for entry in container["env"]] == ["FERRY_PVC_ROOT"]
        assert {"name": "pvc-ferry-artifacts", "mountPath": "/mnt/pvc/ferry-artifacts", "readOnly": True} in (
            container["volumeMounts"]
        )
    assert reference["args"][0] == f"pvc://ferry-artifacts/ml/digits/{KEY[:10]}/reference.json"


def test_a_model_with_external_data_is_fetched_as_its_folder_with_the_reference_beside_it() -> None:
    # ferry-optimize writes a model with external data as OUTPUT/model/ (model.onnx + model.onnx.data).
    folder = f"pvc://ferry-artifacts/ml/digits/{KEY[:10]}/model/"
    fetch, reference = pod(PVC_STORE, folder)["initContainers"]
    assert fetch["args"] == [folder, "/mnt/models", "--sha256", DIGEST]
    assert reference["args"][0] == f"pvc://ferry-artifacts/ml/digits/{KEY[:10]}/reference.json"


def test_a_generative_folder_fetches_no_drift_reference() -> None:
    folder = f"pvc://ferry-artifacts/ml/llm/{KEY[:10]}/model/"
    spec = spec_with(model={"uri": "pvc://models/llm/", "format": "huggingface"})
    inputs = build_inputs.BuildInputs(
        owner=OWNER,
        spec=models.ModelDeploymentSpec.model_validate(spec),
        artifact=build_inputs.ServedArtifact(uri=folder, sha256=DIGEST, format="onnx-genai"),
        defaults=build_inputs.ServingDefaults(runtime_image="ferry-runtime:0.1.0", artifact_store=PVC_STORE),
    )
    template = builders.desired_children(inputs)[kinds.DEPLOYMENT]["spec"]["template"]["spec"]
    assert [c["name"] for c in template["initContainers"]] == ["fetch-model"]


def test_a_model_served_as_it_is_keeps_its_own_credentials_and_fetches_no_reference() -> None:
    onnx_spec = spec_with(model={"uri": "s3://models/digits/model.onnx", "credentialsSecret": "model-creds"})
    (fetch,) = pod(S3_STORE, "s3://models/digits/model.onnx", onnx_spec)["initContainers"]
    assert fetch["envFrom"] == [{"secretRef": {"name": "model-creds"}}]
    assert [entry["name"] for entry in fetch["env"]] == ["FERRY_PVC_ROOT"]
    # No store configured: nothing is an optimized artifact.
    (fetch,) = pod(ArtifactStore(), f"s3://ferry-artifacts/ml/digits/{KEY[:10]}/model.onnx")["initContainers"]
    assert fetch["envFrom"] == [{"secretRef": {"name": "model-creds"}}]


def run_container(
    container: dict[str, Any], models_dir: Path, tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    """Run a fetch container's command here, with the venv's ferry-fetch and the pod's paths mapped."""
    command = [
        part.replace("/mnt/models", str(models_dir)) for part in container["command"] + container["args"]
    ]
    env = {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "FERRY_PVC_ROOT": str(tmp_path / "pvc"),
        "HOME": str(tmp_path),
    }
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_the_reference_fetch_brings_reference_json_and_tolerates_its_absence(tmp_path: Path) -> None:
    artifact_dir = tmp_path / "pvc" / "ferry-artifacts" / "ml" / "digits" / KEY[:10]
    artifact_dir.mkdir(parents=True)
    (artifact_dir / "model.onnx").write_bytes(b"not read by this test")
    reference_document = {"version": 1, "inputs": {}}
    (artifact_dir / "reference.json").write_text(json.dumps(reference_document))
    artifact = f"pvc://ferry-artifacts/ml/digits/{KEY[:10]}/model.onnx"
    (_, reference) = pod(PVC_STORE, artifact)["initContainers"]

    models_dir = tmp_path / "models"
    models_dir.mkdir()
    fetched = run_container(reference, models_dir, tmp_path)
    assert fetched.returncode == 0, fetched.stderr
    assert json.loads((models_dir / "reference.json").read_text()) == reference_document

    # An artifact optimized without data has no reference: the pod still starts, and says why.
    (artifact_dir / "reference.json").unlink()
    (models_dir / "reference.json").unlink()
    missing = run_container(reference, models_dir, tmp_path)
    assert missing.returncode == 0
    assert "no drift reference at pvc://ferry-artifacts/" in missing.stderr
    assert not (models_dir / "reference.json").exists()


def test_the_store_is_one_value_in_both_builders() -> None:
    defaults = optimization_job.OptimizerDefaults(
        image="ferry-optimizer:0.1.0",
        artifact_store=S3_STORE.uri,
        artifact_s3_endpoint=S3_STORE.s3_endpoint,
        artifact_s3_region=S3_STORE.s3_region,
        artifact_credentials_secret=S3_STORE.credentials_secret,
    )
    assert defaults.store == S3_STORE
    assert dataclasses.replace(S3_STORE, uri="s3://ferry-artifacts/ml").holds(
        "s3://ferry-artifacts/ml/x/model.onnx"
    )
    assert not S3_STORE.holds("s3://ferry-artifacts/mlx/model.onnx")
