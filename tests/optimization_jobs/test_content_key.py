"""The operator's content key is byte-identical to the optimizer's (docs/optimizer.md, "The content key").

The operator computes the key (it names the Job and passes it with --key) from its typed API; the optimizer
computes it from its own parser when run without --key. Both must agree for every spec, however it is
written: sparse or with every default spelled out, integers where numbers are expected, export in any order.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from ferry_operator import content_key
from ferry_operator.api import models
from ferry_optimizer import key as optimizer_key
from ferry_optimizer import spec as optimizer_spec

VERSION = "0.1.0"
SHA = "4c22cf0c" * 8

OPTIMIZE_SPECS: dict[str, dict[str, Any] | None] = {
    "absent (conversion only)": None,
    "empty": {},
    "dynamic": {"quantize": "dynamic"},
    "fp16-all": {"quantize": "fp16", "graph": "all"},
    "integers-for-numbers": {
        "prune": {"sparsity": 0, "epochs": 0},
        "training": {"learningRate": 1, "l2": 0, "batchSize": 8},
        "validate": {"metric": "maxAbsError", "maxDrop": 3},
        "data": {"uri": "pvc://data/digits.npz"},
    },
    "everything": {
        "graph": "basic",
        "quantize": "static",
        "prune": {"sparsity": 0.5, "method": "structured", "epochs": 2},
        "distill": {"student": {"widthFactor": 0.25, "depth": 1}, "epochs": 4, "temperature": 3.5},
        "training": {"learningRate": 0.01, "schedule": "exponential", "l2": 0.0001, "batchSize": 64},
        "export": ["tflite-int8", "onnx", "tflite"],
        "data": {"uri": "s3://bucket/digits.npz", "samples": 900},
        "validate": {"metric": "accuracy", "maxDrop": 0.02},
    },
    "distill-default-student": {"distill": {}, "data": {"uri": "pvc://data/d.npz"}},
    "cosine-gate": {"validate": {"metric": "cosine"}, "quantize": "dynamic"},
    "unicode-uri": {"data": {"uri": "https://example.com/données/d.npz"}},
}


def operator_key(model: dict[str, Any], optimize: dict[str, Any] | None, version: str = VERSION) -> str:
    spec: dict[str, Any] = {"model": model}
    if optimize is not None:
        spec["optimize"] = optimize
    return content_key.content_key(models.ModelDeploymentSpec.model_validate(spec), version)


def optimizer_side(identity: str, optimize: dict[str, Any] | None, version: str = VERSION) -> str:
    return optimizer_key.content_key(identity, optimizer_spec.parse(optimize or {}), version)


@pytest.mark.parametrize("case", sorted(OPTIMIZE_SPECS))
def test_keys_equal_the_optimizers_with_a_pinned_digest(case: str) -> None:
    model = {"uri": "pvc://models/digits/model.keras", "format": "keras", "sha256": SHA}
    assert operator_key(model, OPTIMIZE_SPECS[case]) == optimizer_side(SHA, OPTIMIZE_SPECS[case])


@pytest.mark.parametrize("case", sorted(OPTIMIZE_SPECS))
def test_without_a_digest_the_uri_stands_for_the_model(case: str) -> None:
    uri = "s3://models/digits/model.keras"  # keras: the specs prune and distill, which need it
    model = {"uri": uri, "format": "keras"}
    assert operator_key(model, OPTIMIZE_SPECS[case]) == optimizer_side(uri, OPTIMIZE_SPECS[case])


@pytest.mark.parametrize("case", sorted(OPTIMIZE_SPECS))
def test_the_normalized_spec_is_the_optimizers(case: str) -> None:
    raw = OPTIMIZE_SPECS[case]
    parsed = models.Optimize.model_validate(raw) if raw is not None else None
    assert content_key.normalized_optimize(parsed) == optimizer_spec.parse(raw or {}).to_dict()


def test_spelled_out_defaults_give_the_same_key() -> None:
    model = {"uri": "pvc://models/m.keras", "format": "keras"}
    sparse = {"quantize": "dynamic", "prune": {"sparsity": 0.5}}
    # What the API server stores after defaulting (and a user copying it back).
    defaulted = models.Optimize.model_validate(sparse).model_dump(by_alias=True, exclude_none=True)
    assert defaulted != sparse
    assert operator_key(model, defaulted) == operator_key(model, sparse)


def test_every_input_of_the_key_changes_it() -> None:
    model = {"uri": "pvc://models/m.keras", "format": "keras", "sha256": SHA}
    base = operator_key(model, {"quantize": "dynamic"})
    other_model = {**model, "sha256": "0" * 64}
    assert operator_key(other_model, {"quantize": "dynamic"}) != base
    assert operator_key(model, {"quantize": "static", "data": {"uri": "pvc://d/x.npz"}}) != base
    assert operator_key(model, {"quantize": "dynamic"}, version="0.2.0") != base
    # The URI does not matter once the digest pins the bytes (the same file elsewhere is the same model).
    moved = {**model, "uri": "s3://elsewhere/m.keras"}
    assert operator_key(moved, {"quantize": "dynamic"}) == base


def test_export_is_a_set() -> None:
    model = {"uri": "pvc://models/m.keras", "format": "keras"}
    first = operator_key(model, {"export": ["tflite", "onnx"]})
    assert first == operator_key(model, {"export": ["onnx", "tflite"]})


def test_the_documented_example_spec_round_trips() -> None:
    # docs/optimizer.md's example spec, as a user would type it into a ModelDeployment.
    example: dict[str, Any] = {
        "graph": "extended",
        "quantize": "none",
        "prune": {"sparsity": 0.5, "method": "magnitude", "epochs": 1},
        "distill": {"student": {"widthFactor": 0.5}, "epochs": 3, "temperature": 2.0},
        "training": {"learningRate": 0.001, "schedule": "cosine", "l2": 0.0, "batchSize": 32},
        "export": ["onnx"],
        "data": {"uri": "pvc://data/digits.npz", "samples": 512},
        "validate": {"metric": "accuracy", "maxDrop": 0.01},
    }
    model = {"uri": "pvc://models/m.keras", "format": "keras", "sha256": SHA}
    assert operator_key(model, copy.deepcopy(example)) == optimizer_side(SHA, example)


GENERATIVE_SPECS: dict[str, dict[str, Any]] = {
    "int4-defaults": {"quantize": "int4"},
    "int8-block-64": {"quantize": "int8", "weightOnly": {"blockSize": 64, "accuracyLevel": 2}},
    "perplexity-gate": {
        "quantize": "int4",
        "data": {"uri": "pvc://models/llm-data/heldout.txt"},
        "validate": {"metric": "perplexity", "maxIncrease": 0.1},
    },
    "perplexity-default-budget": {"quantize": "int4", "validate": {"metric": "perplexity"}},
    "agreement-gate": {"quantize": "int8", "validate": {"metric": "agreement", "maxDrop": 0.2}},
}


@pytest.mark.parametrize("case", sorted(GENERATIVE_SPECS))
def test_a_generative_models_key_and_spec_are_the_optimizers(case: str) -> None:
    raw = GENERATIVE_SPECS[case]
    uri = "pvc://models/llm/"
    assert operator_key({"uri": uri, "format": "onnx-genai"}, raw) == optimizer_side(uri, raw)
    parsed = models.Optimize.model_validate(raw)
    assert content_key.normalized_optimize(parsed) == optimizer_spec.parse(raw).to_dict()
