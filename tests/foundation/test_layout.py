"""The project's shape: what a newcomer and CI rely on before any feature works."""

from __future__ import annotations

import importlib
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGES = {"operator": "ferry_operator", "runtime": "ferry_runtime", "optimizer": "ferry_optimizer"}


def test_stdlib_operator_module_is_not_shadowed() -> None:
    # A package named `operator` would shadow the standard library for every tool in the venv.
    stdlib_operator = importlib.import_module("operator")
    assert stdlib_operator.__file__ is not None
    assert Path(stdlib_operator.__file__).parent == Path(sys.modules["os"].__file__ or "").parent
    assert not (ROOT / "operator" / "__init__.py").exists()


@pytest.mark.parametrize(("folder", "package"), sorted(PACKAGES.items()))
def test_each_component_is_one_typed_package(folder: str, package: str) -> None:
    module = importlib.import_module(package)
    assert module.__file__ is not None
    assert Path(module.__file__).parent == ROOT / folder / package
    assert (ROOT / folder / package / "py.typed").is_file(), "PEP 561 marker missing: mypy users lose types"
    assert module.__version__ == PYPROJECT["project"]["version"]


def test_extras_match_the_images_the_spec_names() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert {"operator", "runtime", "optimizer", "dev"} <= set(extras)
    forbidden = {"operator": ("onnxruntime", "tensorflow"), "runtime": ("tensorflow", "kopf")}
    for extra, names in forbidden.items():
        requirements = " ".join(extras[extra])
        for name in names:
            assert name not in requirements, f"the {extra} image must not install {name}"


@pytest.mark.parametrize("script", sorted(PYPROJECT["project"]["scripts"]))
def test_console_scripts_resolve_to_callables(script: str) -> None:
    (entry_point,) = [ep for ep in metadata.entry_points(group="console_scripts") if ep.name == script]
    assert entry_point.value == PYPROJECT["project"]["scripts"][script], "reinstall: `make venv`"
    assert callable(entry_point.load())


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^([a-z].*?)\s+# ", quick_start, flags=re.MULTILINE)
    assert len(commands) == 2, f"the quick start must be two commands, found {commands}"
    ci_script = (ROOT / ".ci" / "run").read_text()
    assert f"exec {commands[1]}\n" in ci_script
