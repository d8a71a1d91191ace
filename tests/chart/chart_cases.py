"""Shared by the chart tests (a uniquely named module: tests/ folders are not packages)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "ferry"
SCENARIOS = sorted((CHART / "ci").glob("*-values.yaml"))

Render = Callable[..., list[dict[str, Any]]]


class RenderError(Exception):
    """helm template refused the values (its message is the exception text)."""
