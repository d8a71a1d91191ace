"""The generated CRD: structural, fully described, and in step with the models and the committed file."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_cases import KERAS_MODEL, VALID_SPEC, spec_with

from ferry_operator import crdgen
from ferry_operator.api import models

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return crdgen.crd()


@pytest.fixture(scope="module")
def version(crd: dict[str, Any]) -> dict[str, Any]:
    (only,) = crd["spec"]["versions"]
    return only  # type: ignore[no-any-return]


def walk(node: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    found = [(path, node)]
    for name, child in node.get("properties", {}).items():
        found += walk(child, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            found += walk(node[key], f"{path}[{key}]")
    return found


def test_committed_files_are_what_the_models_generate() -> None:
    for rel, content in crdgen.generate().items():
        assert (ROOT / rel).read_text() == content, f"{rel} drifted: run python scripts/generate.py"


def test_every_property_has_a_description(version: dict[str, Any]) -> None:
    root = version["schema"]["openAPIV3Schema"]
    for part in ("spec", "status"):
        for path, node in walk(root["properties"][part], part):
            for name, child in node.get("properties", {}).items():
                assert child.get("description", "").strip(), f"{path}.{name} has no description"


def test_schema_is_structural(version: dict[str, Any]) -> None:
    root = version["schema"]["openAPIV3Schema"]
    for path, node in walk(root, ""):
        assert not {"$ref", "anyOf", "oneOf", "allOf", "not", "title", "uniqueItems"} & set(node), path
        if node.get("x-kubernetes-int-or-string"):
            assert "type" not in node, path
        else:
            assert node.get("type") in {"object", "array", "string", "integer", "number", "boolean"}, path
        if "properties" in node:
            assert "additionalProperties" not in node, path
        assert node.get("default", 0) is not None, path


def test_subresources_and_printer_columns(crd: dict[str, Any], version: dict[str, Any]) -> None:
    assert crd["spec"]["names"]["shortNames"] == ["md"]
    assert version["subresources"]["status"] == {}
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.serving.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    names = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert names == ["Ready", "Phase", "Replicas", "URL", "Age"]


def test_every_python_rule_is_in_the_schema(version: dict[str, Any]) -> None:
    schema_rules = {
        rule["rule"]
        for _, node in walk(version["schema"]["openAPIV3Schema"], "")
        for rule in node.get("x-kubernetes-validations", [])
    }
    python_rules = {
        rule.cel
        for model in vars(models).values()
        if isinstance(model, type) and issubclass(model, models.ApiModel)
        for rule in model.cel_rules
    }
    assert python_rules
    assert python_rules <= schema_rules


def apply_schema_defaults(value: Any, node: dict[str, Any]) -> Any:
    """What the API server's structural defaulting does to an object, for the comparison below."""
    if isinstance(value, dict) and "properties" in node:
        value = dict(value)
        for name, child in node["properties"].items():
            if name not in value and "default" in child:
                value[name] = copy.deepcopy(child["default"])
            if name in value:
                value[name] = apply_schema_defaults(value[name], child)
    elif isinstance(value, list) and "items" in node:
        value = [apply_schema_defaults(item, node["items"]) for item in value]
    return value


@pytest.mark.parametrize(
    "spec",
    [
        VALID_SPEC,
        spec_with(
            model=KERAS_MODEL, optimize={"distill": {}, "data": {"uri": "file:///d.npz"}, "validate": {}}
        ),
        spec_with(
            model=KERAS_MODEL,
            serving={"autoscaling": {"maxReplicas": 3}},
            optimize={"prune": {"sparsity": 0.3}},
        ),
    ],
)
def test_schema_defaults_equal_model_defaults(version: dict[str, Any], spec: dict[str, Any]) -> None:
    # The API server fills defaults from the schema; the operator parses with pydantic's defaults. Both
    # must arrive at the same object, or the operator would act on a spec the user never sees.
    spec_schema = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    defaulted = apply_schema_defaults(spec, spec_schema)
    from_models = models.ModelDeploymentSpec.model_validate(spec).model_dump(by_alias=True, exclude_none=True)
    assert defaulted == from_models


def test_crd_file_parses_as_one_document() -> None:
    documents = list(yaml.safe_load_all((ROOT / crdgen.CRD_PATH).read_text()))
    assert len(documents) == 1
    assert documents[0]["kind"] == "CustomResourceDefinition"
