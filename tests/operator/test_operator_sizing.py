"""The serving container's memory request and the download volume's size when the spec sets none
(builders/sizing.py).

The expected figures are computed here from the model's facts, not read back from the module.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from operator_cases import spec_with

from ferry_operator import builders, kinds
from ferry_operator.api import models
from ferry_operator.builders import inputs as build_inputs
from ferry_operator.builders import sizing

DEFAULTS = build_inputs.ServingDefaults(runtime_image="ferry-runtime:0.1.0")
OWNER = build_inputs.Owner(name="llm", namespace="ml", uid="11111111-2222-3333-4444-555555555555")
MIB = 1 << 20
# A ~100M-parameter Llama at int4: 12 layers, 12 KV heads of 64, float32 cache, 2048 tokens of context.
WEIGHTS = 82 * MIB
KV_PER_TOKEN = 2 * 12 * 12 * 64 * 4
CONTEXT = 2048
GENERATIVE = build_inputs.ServedArtifact(
    uri="pvc://ferry-artifacts/ml/llm/key/",
    format="onnx-genai",
    size_bytes=WEIGHTS,
    kv_cache_bytes_per_token=KV_PER_TOKEN,
    context_length=CONTEXT,
)


def pod_spec(serving: dict[str, Any], artifact: build_inputs.ServedArtifact) -> dict[str, Any]:
    spec = spec_with(model={"uri": "pvc://models/llm/", "format": "huggingface"}, serving=serving)
    inputs = build_inputs.BuildInputs(
        owner=OWNER,
        spec=models.ModelDeploymentSpec.model_validate(spec),
        artifact=artifact,
        defaults=DEFAULTS,
    )
    deployment = builders.desired_children(inputs)[kinds.DEPLOYMENT]
    pod: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return pod


def runtime_container(serving: dict[str, Any], artifact: build_inputs.ServedArtifact) -> dict[str, Any]:
    container: dict[str, Any] = next(
        c for c in pod_spec(serving, artifact)["containers"] if c["name"] == "runtime"
    )
    return container


def env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"]}


def test_a_generative_pod_requests_its_weights_a_full_kv_cache_and_the_runtime() -> None:
    container = runtime_container({"generation": {"maxSequences": 8}}, GENERATIVE)
    # 82 MiB of weights + 8 sequences x 2048 tokens x 73728 bytes (1152 MiB) + 256 MiB of runtime.
    expected = math.ceil((WEIGHTS + 8 * CONTEXT * KV_PER_TOKEN + 256 * MIB) / MIB)
    assert expected == 82 + 1152 + 256
    # The download volume: the weights + 5% + 64 MiB (82 * 1.05 + 64 = 150.1 MiB, rounded up).
    assert container["resources"]["requests"] == {
        "cpu": "500m",
        "memory": f"{expected}Mi",
        "ephemeral-storage": "151Mi",
    }
    # The whole pool fits what is requested: the runtime gets no budget that would cut its sequences.
    assert "FERRY_RUNTIME_KV_CACHE_BYTES" not in env(container)


def test_more_sequences_request_more_memory() -> None:
    four = runtime_container({"generation": {"maxSequences": 4}}, GENERATIVE)["resources"]["requests"]
    sixteen = runtime_container({"generation": {"maxSequences": 16}}, GENERATIVE)["resources"]["requests"]
    grown = (sizing.quantity_bytes(sixteen["memory"]) or 0) - (sizing.quantity_bytes(four["memory"]) or 0)
    assert grown == 12 * CONTEXT * KV_PER_TOKEN


def test_a_memory_request_the_user_set_is_kept() -> None:
    resources = {"requests": {"cpu": "1", "memory": "3Gi"}}
    container = runtime_container({"resources": resources}, GENERATIVE)
    assert container["resources"]["requests"] == {"cpu": "1", "memory": "3Gi", "ephemeral-storage": "151Mi"}


def test_a_known_model_size_bounds_the_download_volume_and_requests_its_disk() -> None:
    pod = pod_spec({}, GENERATIVE)
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["models"]["emptyDir"] == {"sizeLimit": "151Mi"}
    # A 3 GiB model: 3072 * 1.05 + 64 = 3289.6 MiB.
    large = build_inputs.ServedArtifact(uri="pvc://models/big/model.onnx", size_bytes=3 << 30)
    volumes = {v["name"]: v for v in pod_spec({}, large)["volumes"]}
    assert volumes["models"]["emptyDir"] == {"sizeLimit": "3290Mi"}
    # The tmp volume is the runtime's own scratch, not the model's.
    assert volumes["tmp"]["emptyDir"] == {}


def test_an_ephemeral_storage_the_user_set_is_kept() -> None:
    requested = runtime_container({"resources": {"requests": {"ephemeral-storage": "10Gi"}}}, GENERATIVE)
    assert requested["resources"]["requests"]["ephemeral-storage"] == "10Gi"
    # A limit alone: the API server defaults the request to it, so none is added below it.
    limited = runtime_container({"resources": {"limits": {"ephemeral-storage": "100Mi"}}}, GENERATIVE)
    assert "ephemeral-storage" not in limited["resources"]["requests"]
    assert limited["resources"]["limits"]["ephemeral-storage"] == "100Mi"


def test_a_memory_limit_below_the_full_pool_caps_the_request_and_budgets_the_kv_cache() -> None:
    # 16 sequences would need 82 + 2304 + 256 MiB; the limit is 1Gi: the runtime gets what is left after
    # the weights and itself for its cache (686 MiB: 4 sequences of 2048 tokens), not an OOM kill.
    container = runtime_container(
        {"resources": {"limits": {"memory": "1Gi"}}, "generation": {"maxSequences": 16}}, GENERATIVE
    )
    assert container["resources"]["requests"]["memory"] == "1Gi"
    budget = int(env(container)["FERRY_RUNTIME_KV_CACHE_BYTES"])
    assert budget == (1024 - 82 - 256) * MIB
    assert budget // (CONTEXT * KV_PER_TOKEN) == 4


def test_a_large_tensor_model_requests_its_weights_and_the_runtime() -> None:
    # A 3 GiB model from an optimization Job: 3072 MiB x 1.1 + 256 MiB.
    large = build_inputs.ServedArtifact(uri="pvc://ferry-artifacts/ml/big/key/model/", size_bytes=3 << 30)
    requests = runtime_container({}, large)["resources"]["requests"]
    assert requests["memory"] == f"{math.ceil((3 << 30) * 1.1 / MIB) + 256}Mi"
    # ... capped by a smaller limit, as for generative models.
    capped = runtime_container({"resources": {"limits": {"memory": "2Gi"}}}, large)
    assert capped["resources"]["requests"]["memory"] == "2Gi"


def test_tensor_models_and_folders_served_as_is_keep_the_flat_default() -> None:
    # Nothing measured the model: the operator does not read model files itself.
    as_is = build_inputs.ServedArtifact(uri="pvc://models/llm/", format="onnx-genai")
    assert runtime_container({}, as_is)["resources"]["requests"] == {"cpu": "500m", "memory": "512Mi"}
    # ... and no size for the download volume either.
    assert {v["name"]: v for v in pod_spec({}, as_is)["volumes"]}["models"]["emptyDir"] == {}
    tensor = build_inputs.ServedArtifact(uri="pvc://models/digits/model.onnx", size_bytes=21867)
    assert runtime_container({}, tensor)["resources"]["requests"]["memory"] == "512Mi"
    # ... and never above a smaller limit (a request above its limit is an invalid pod).
    small = runtime_container({"resources": {"limits": {"memory": "256Mi"}}}, tensor)
    assert small["resources"]["requests"]["memory"] == "256Mi"


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [
        ("512Mi", 512 * MIB),
        ("1Gi", 1 << 30),
        ("1.5Gi", 3 << 29),
        ("2G", 2_000_000_000),
        ("1e9", 1_000_000_000),
        (1073741824, 1 << 30),
        ("129M", 129_000_000),
        ("1500m", 2),
        ("lots", None),
        ("1Gb", None),
    ],
)
def test_quantities_are_read_as_kubernetes_reads_them(quantity: int | str, expected: int | None) -> None:
    assert sizing.quantity_bytes(quantity) == expected
