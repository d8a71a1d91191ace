"""What one image installs, from pyproject.toml: used by the Dockerfile's dependency stage.

    python image_requirements.py COMPONENT PYPROJECT OUTDIR   writes OUTDIR/requirements.txt and
                                                              OUTDIR/no-deps.txt
    python image_requirements.py --cpu-dependencies DIST      prints DIST's installed requirements
                                                              without the CUDA ones

An image installs the core dependencies and its component's extras (IMAGE_EXTRAS). The optimizer image
also builds generative models, so it carries the `generative` extra, whose torch is PyPI's CUDA build:
its nvidia-*/cuda-*/triton dependencies are 4 GB the CPU-only Jobs never call. torch therefore goes to
no-deps.txt, installed with `pip install --no-deps`, and then only its CPU dependencies (filelock, sympy,
networkx, ...; read from the installed wheel's metadata with --cpu-dependencies, so a new torch brings its
own list) and CPU_USED_CUDA; scripts/cuda_stubs.py stands in for the rest.
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

IMAGE_EXTRAS = {
    "operator": ("operator",),
    "runtime": ("runtime",),
    "optimizer": ("optimizer", "generative"),
}
# Installed without their declared dependencies (see the module docstring).
WITHOUT_DEPENDENCIES = ("torch",)
# Dependencies of those that only a GPU uses.
GPU_ONLY_PREFIXES = ("nvidia-", "cuda-", "triton")
# The CUDA libraries that torch's CPU code does call, installed for real (a few MB): cudart answers that
# there is no GPU, cupti backs the profiler, cufile is linked by torch's Python bindings. The other CUDA
# libraries torch links are stubs (scripts/cuda_stubs.py). Versions come from constraints.txt.
CPU_USED_CUDA = ("nvidia-cuda-runtime", "nvidia-cuda-cupti", "nvidia-cufile")


def distribution_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement.strip())
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return match.group(0).lower().replace("_", "-")


def image_requirements(component: str, pyproject: Path) -> tuple[list[str], list[str]]:
    """(requirements installed normally, requirements installed --no-deps) of one image."""
    if component not in IMAGE_EXTRAS:
        raise SystemExit(f"component must be one of {', '.join(IMAGE_EXTRAS)}, got {component!r}")
    project = tomllib.loads(pyproject.read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in IMAGE_EXTRAS[component]:
        wanted += project["optional-dependencies"][extra]
    normal: list[str] = []
    no_deps: list[str] = []
    for requirement in dict.fromkeys(wanted):
        target = no_deps if distribution_name(requirement) in WITHOUT_DEPENDENCIES else normal
        target.append(requirement)
    return normal, no_deps


def cpu_dependencies(distribution: str) -> list[str]:
    """The installed distribution's own requirements, without extras-only and GPU-only ones, and the CUDA
    libraries its CPU code calls when it is a CUDA build."""
    requirements = importlib.metadata.requires(distribution) or []
    cpu = [
        r
        for r in requirements
        if "extra ==" not in r and not distribution_name(r).startswith(GPU_ONLY_PREFIXES)
    ]
    if len(cpu) < len([r for r in requirements if "extra ==" not in r]):
        cpu += CPU_USED_CUDA
    return cpu


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--cpu-dependencies":
        print("\n".join(cpu_dependencies(argv[1])))
        return 0
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    component, pyproject, out = argv[0], Path(argv[1]), Path(argv[2])
    normal, no_deps = image_requirements(component, pyproject)
    (out / "requirements.txt").write_text("".join(f"{r}\n" for r in normal))
    (out / "no-deps.txt").write_text("".join(f"{r}\n" for r in no_deps))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
