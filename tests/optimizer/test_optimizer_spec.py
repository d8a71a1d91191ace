"""The optimize spec parser and the content key: the operator's defaults, errors that name the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ferry_optimizer import key, spec
from ferry_optimizer.errors import InputError

FULL = {
    "graph": "all",
    "quantize": "static",
    "prune": {"sparsity": 0.5, "method": "structured", "epochs": 2},
    "distill": {"student": {"widthFactor": 0.25, "depth": 1}, "epochs": 4, "temperature": 3.0},
    "training": {"learningRate": 0.01, "schedule": "exponential", "l2": 0.0001, "batchSize": 64},
    "export": ["tflite-int8", "onnx", "tflite"],
    "data": {"uri": "pvc://data/digits.npz", "samples": 1000},
    "validate": {"metric": "cosine", "maxDrop": 0.02},
}


@pytest.mark.parametrize(
    "raw",
    [
        {},
        {"prune": {"sparsity": 0.5}, "distill": {}, "data": {"uri": "file:///d.npz"}, "validate": {}},
        FULL,
    ],
    ids=["empty", "defaults-of-nested-blocks", "every-field"],
)
def test_normalized_spec_matches_the_operator_api_defaults(raw: dict[str, object]) -> None:
    """The operator (pydantic, the CRD's source) and the optimizer (stdlib) default a spec identically,
    so a spec defaulted by the API server and the same spec typed for the CLI get the same content key."""
    from ferry_operator import content_key
    from ferry_operator.api.models import Optimize

    # The operator's own normalized form: what it defaults that the schema leaves unset (validate.maxDrop
    # is unset in the API since perplexity uses maxIncrease) is filled in as the optimizer fills it.
    parsed = Optimize.model_validate(raw)
    operator_view = content_key.normalized_optimize(parsed)
    assert spec.parse(raw).to_dict() == operator_view
    # and every field the schema defaults is in it, with the same value
    schema_view = parsed.model_dump(by_alias=True, exclude_none=True, mode="json")
    schema_view["export"] = [f for f in spec.EXPORT_FORMATS if f in schema_view["export"]]
    for name, value in schema_view.items():
        expected = value if name != "validate" else {**value, **operator_view["validate"]}
        assert operator_view[name] == expected, name


@pytest.mark.parametrize(
    ("raw", "field", "fragment"),
    [
        ({"graph": "max"}, "graph", "one of ['disabled', 'basic', 'extended', 'all']"),
        ({"quantize": "int2"}, "quantize", "'int2'"),
        ({"weightOnly": {"blockSize": 32}}, "weightOnly", "only with quantize int4 or int8"),
        ({"quantize": "int4", "weightOnly": {"blockSize": 48}}, "weightOnly.blockSize", "one of [16, 32"),
        ({"quantize": "int8", "weightOnly": {"accuracyLevel": 0}}, "weightOnly.accuracyLevel", "1 to 4"),
        ({"validate": {"metric": "perplexity", "maxIncrease": 0}}, "validate.maxIncrease", "greater than 0"),
        ({"validate": {"metric": "perplexity", "maxIncrease": -1}}, "validate.maxIncrease", "greater than 0"),
        ({"validate": {"metric": "perplexity", "maxDrop": 0.1}}, "validate.maxDrop", "maxIncrease"),
        ({"validate": {"metric": "accuracy", "maxIncrease": 0.1}}, "validate.maxIncrease", "maxDrop"),
        ({"prune": {"sparsity": 0.99}}, "prune.sparsity", "from 0.0 to 0.95"),
        ({"prune": {}}, "prune.sparsity", "missing"),
        ({"prune": {"sparsity": 0.5, "method": "random"}}, "prune.method", "'random'"),
        ({"distill": {"student": {"widthFactor": 2}}}, "distill.student.widthFactor", "0.1 to 1.0"),
        ({"distill": {"temperature": 0}}, "distill.temperature", "greater than 0.0"),
        ({"training": {"batchSize": 0}}, "training.batchSize", "an integer from 1"),
        ({"training": {"learningRate": "fast"}}, "training.learningRate", "'fast'"),
        ({"export": ["tflite"]}, "export", "includes onnx"),
        ({"export": ["onnx", "coreml"]}, "export", "'coreml'"),
        ({"validate": {"metric": "f1"}}, "validate.metric", "'f1'"),
        ({"validate": {"maxDrop": 2}}, "validate.maxDrop", "to 1.0"),
        ({"data": {"samples": 3}}, "data.uri", "a URI"),
        ({"qauntize": "dynamic"}, "qauntize", "unknown"),
    ],
)
def test_bad_spec_names_the_field_and_what_was_expected(
    raw: dict[str, object], field: str, fragment: str
) -> None:
    with pytest.raises(InputError) as caught:
        spec.parse(raw)
    assert caught.value.where == field
    assert fragment in str(caught.value)


def test_weight_only_quantization_fills_its_defaults_so_one_spec_has_one_key() -> None:
    parsed = spec.parse({"quantize": "int4"})
    assert parsed.weight_only == spec.WeightOnlySpec(block_size=32, accuracy_level=4)
    assert parsed.to_dict()["weightOnly"] == {"blockSize": 32, "accuracyLevel": 4}
    spelled = spec.parse({"quantize": "int4", "weightOnly": {"blockSize": 32, "accuracyLevel": 4}})
    assert key.content_key("a" * 64, spelled, "0.1.0") == key.content_key("a" * 64, parsed, "0.1.0")
    # A tensor spec's normalized form (and so its key) does not change: no weightOnly, no maxIncrease.
    tensor = spec.parse({"quantize": "dynamic", "validate": {}}).to_dict()
    assert "weightOnly" not in tensor
    assert tensor["validate"] == {"metric": "accuracy", "maxDrop": 0.01}


def test_perplexity_is_gated_by_a_relative_increase() -> None:
    parsed = spec.parse({"validate": {"metric": "perplexity"}})
    assert parsed.validate == spec.ValidateSpec(metric="perplexity", max_drop=None, max_increase=0.05)
    assert parsed.validate.budget == 0.05
    assert parsed.to_dict()["validate"] == {"metric": "perplexity", "maxIncrease": 0.05}


def test_max_abs_error_accepts_drops_above_one() -> None:
    parsed = spec.parse({"validate": {"metric": "maxAbsError", "maxDrop": 5}})
    assert parsed.validate == spec.ValidateSpec(metric="maxAbsError", max_drop=5.0)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"quantize": "static"}, "quantize"),
        ({"distill": {}}, "distill"),
        ({"export": ["onnx", "tflite-int8"]}, "export"),
    ],
)
def test_steps_that_learn_from_samples_need_data(raw: dict[str, object], field: str) -> None:
    with pytest.raises(InputError) as caught:
        spec.check_needs_data(spec.parse(raw))
    assert caught.value.where == field
    spec.check_needs_data(spec.parse(raw).with_data_uri("file:///d.npz"))


def test_spec_file_in_yaml_with_an_optimize_wrapper(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text("optimize:\n  quantize: dynamic\n  prune: {sparsity: 0.3}\n")
    assert spec.load(path) == spec.parse({"quantize": "dynamic", "prune": {"sparsity": 0.3}})


def test_unreadable_spec_file_names_the_flag(tmp_path: Path) -> None:
    path = tmp_path / "spec.json"
    path.write_text("{not json")
    with pytest.raises(InputError, match="--spec: expected valid JSON"):
        spec.load(path)
    with pytest.raises(InputError, match="--spec: expected a readable"):
        spec.load(tmp_path / "missing.json")


def test_content_key_follows_the_documented_algorithm() -> None:
    parsed = spec.parse({"quantize": "dynamic"})
    payload = {"model": "ab" * 32, "optimize": parsed.to_dict(), "optimizer": "0.1.0"}
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    import hashlib

    assert key.content_key("ab" * 32, parsed, "0.1.0") == hashlib.sha256(canonical.encode()).hexdigest()


def test_content_key_changes_with_each_input_and_only_then() -> None:
    base = key.content_key("a" * 64, spec.parse({"quantize": "dynamic"}), "0.1.0")
    # Spelling a default out or reordering export does not change what will be computed.
    assert (
        key.content_key("a" * 64, spec.parse({"quantize": "dynamic", "graph": "extended"}), "0.1.0") == base
    )
    assert key.content_key("a" * 64, spec.parse({"quantize": "dynamic", "export": ["onnx"]}), "0.1.0") == base
    assert key.content_key("b" * 64, spec.parse({"quantize": "dynamic"}), "0.1.0") != base
    assert key.content_key("a" * 64, spec.parse({"quantize": "static"}), "0.1.0") != base
    assert key.content_key("a" * 64, spec.parse({"quantize": "dynamic"}), "0.2.0") != base


def test_model_digest_is_the_fetchers_digest(tmp_path: Path) -> None:
    """The key's model digest is what `ferry-fetch --sha256` verifies, so spec.model.sha256 can serve as it:
    a file's sha256, or for a directory `find . -type f | sort | xargs sha256sum | sha256sum`."""
    import hashlib
    import subprocess

    from ferry_optimizer import locations

    model = tmp_path / "saved_model"
    (model / "variables").mkdir(parents=True)
    (model / "saved_model.pb").write_bytes(b"graph")
    (model / "variables" / "variables.index").write_bytes(b"index")
    shell = subprocess.run(
        "find . -type f | sort | xargs sha256sum | sha256sum",
        shell=True,
        cwd=model,
        capture_output=True,
        text=True,
        check=True,
    )
    assert locations.digest(model) == shell.stdout.split()[0]
    single = tmp_path / "model.onnx"
    single.write_bytes(b"onnx")
    assert locations.digest(single) == hashlib.sha256(b"onnx").hexdigest()


def test_key_and_spec_modules_import_only_the_standard_library() -> None:
    """The operator may copy key.py and spec.py: they must not pull in ML libraries."""
    import ast

    package = Path(key.__file__).parent
    allowed_local = {"ferry_optimizer.spec", "ferry_optimizer.errors"}
    for module in ("key.py", "spec.py", "errors.py"):
        tree = ast.parse((package / module).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert name in allowed_local or top in {"__future__", "yaml"} or top in _stdlib(), (
                    module,
                    name,
                )


def _stdlib() -> frozenset[str]:
    import sys

    return frozenset(sys.stdlib_module_names)
