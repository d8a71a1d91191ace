"""Which dependencies each image installs (scripts/image_requirements.py, used by the Dockerfile)."""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "image_requirements.py"
spec = importlib.util.spec_from_file_location("image_requirements", SCRIPT)
assert spec is not None
assert spec.loader is not None
image_requirements = importlib.util.module_from_spec(spec)
spec.loader.exec_module(image_requirements)
PYPROJECT = ROOT / "pyproject.toml"


def names(requirements: list[str]) -> set[str]:
    return {image_requirements.distribution_name(r) for r in requirements}


def test_only_the_optimizer_image_builds_generative_models_and_torch_comes_without_cuda() -> None:
    normal, no_deps = image_requirements.image_requirements("optimizer", PYPROJECT)
    assert names(no_deps) == {"torch"}
    assert {"transformers", "onnxruntime-genai", "tensorflow-cpu", "onnx-ir"} <= names(normal)
    assert "torch" not in names(normal)
    for component in ("runtime", "operator"):
        normal, no_deps = image_requirements.image_requirements(component, PYPROJECT)
        assert no_deps == []
        assert not names(normal) & {"torch", "transformers", "tensorflow-cpu"}, component


def test_every_extra_of_an_image_is_listed_once_with_the_core_dependencies() -> None:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    normal, no_deps = image_requirements.image_requirements("optimizer", PYPROJECT)
    expected = set(project["dependencies"]) | set(project["optional-dependencies"]["optimizer"])
    expected |= set(project["optional-dependencies"]["generative"])
    assert set(normal) | set(no_deps) == expected
    assert len(normal) == len(set(normal))


def test_torchs_cpu_dependencies_leave_out_every_gpu_only_distribution() -> None:
    # The dev environment has torch installed with its CUDA wheels: its metadata lists them.
    cpu = names(image_requirements.cpu_dependencies("torch"))
    assert {"filelock", "sympy", "networkx", "jinja2", "fsspec"} <= cpu
    gpu_named = {name for name in cpu if name.startswith(("nvidia-", "cuda-", "triton"))}
    # Only the CUDA libraries torch's CPU code calls are installed for real; the rest are stubs.
    assert gpu_named == set(image_requirements.CPU_USED_CUDA), cpu
