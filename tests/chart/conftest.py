"""Chart tests render charts/ferry with the real helm binary the devcluster builds (cached per version)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_cases import CHART, ROOT, Render, RenderError

try:
    import ferry_devcluster  # noqa: F401
except ImportError:
    sys.path.insert(0, str(ROOT / "devcluster"))
from ferry_devcluster import build


@pytest.fixture(scope="session")
def helm() -> Path:
    return build.ensure(["helm"])["helm"]


@pytest.fixture(scope="session")
def render(helm: Path) -> Render:
    def _render(
        *values_files: Path, set_values: Sequence[str] = (), namespace: str = "ferry-system"
    ) -> list[dict[str, Any]]:
        command = [str(helm), "template", "ferry", str(CHART), "--namespace", namespace, "--include-crds"]
        for values in values_files:
            command += ["--values", str(values)]
        for item in set_values:
            command += ["--set", item]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RenderError(result.stderr)
        return [doc for doc in yaml.safe_load_all(result.stdout) if doc]

    return _render
