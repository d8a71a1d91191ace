"""What the operator refuses beyond the CRD's rules (reconcile/policy.py): file:// URIs, by default."""

from __future__ import annotations

from operator_cases import spec_with

from ferry_operator.api import models
from ferry_operator.config import OperatorConfig, from_env
from ferry_operator.reconcile import policy


def spec(**fields: object) -> models.ModelDeploymentSpec:
    return models.ModelDeploymentSpec.model_validate(spec_with(**fields))


def test_file_uris_of_the_model_and_the_data_are_each_named() -> None:
    local = spec(
        model={"uri": "file:///m/model.onnx"},
        optimize={"quantize": "static", "data": {"uri": "file:///d/calibration.npz"}},
    )
    refused = policy.refusals(local, OperatorConfig())
    assert [message.split(":", 1)[0] for message in refused] == ["spec.model.uri", "spec.optimize.data.uri"]
    assert refused[1].endswith("got file:///d/calibration.npz")
    assert "operator.allowFileUris" in refused[0]


def test_other_schemes_and_an_allowing_operator_refuse_nothing() -> None:
    assert policy.refusals(spec(model={"uri": "pvc://models/digits/model.onnx"}), OperatorConfig()) == []
    allowing = from_env({"FERRY_OPERATOR_ALLOW_FILE_URIS": "true"})
    assert allowing.allow_file_uris is True
    assert policy.refusals(spec(model={"uri": "file:///m/model.onnx"}), allowing) == []
