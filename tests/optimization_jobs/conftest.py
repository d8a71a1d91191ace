"""Fixtures for the optimization Job tests: the operator's cluster-test helpers (tests/operator/conftest.py:
the CRD, `Cluster`, `OperatorProcess`, `wait_for`), reused rather than copied, plus an operator configured
with an artifact store.

tests/operator/conftest.py is loaded under its own module name: every conftest.py outside a package is
imported as `conftest`, so a plain import would pick whichever one pytest loaded last.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_PATH = Path(__file__).resolve().parents[1] / "operator" / "conftest.py"
_SPEC = importlib.util.spec_from_file_location("ferry_operator_cluster_support", _PATH)
assert _SPEC is not None
assert _SPEC.loader is not None
support = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = support
_SPEC.loader.exec_module(support)

Cluster = support.Cluster
OperatorProcess = support.OperatorProcess
wait_for = support.wait_for
crd_installed = support.crd_installed
cluster = support.cluster
pytest_runtest_makereport = support.pytest_runtest_makereport

ARTIFACT_CLAIM = "ferry-artifacts"
OPTIMIZER_IMAGE = "ferry-optimizer:0.1.0"


@pytest.fixture
def optimizing_operator(
    crd_installed: Any, namespace: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[OperatorProcess]:
    """`ferry-operator --namespace NS` writing optimized artifacts to pvc://ferry-artifacts/."""
    process = OperatorProcess(
        crd_installed,
        namespace,
        tmp_path / "operator.log",
        FERRY_OPERATOR_ARTIFACT_STORE=f"pvc://{ARTIFACT_CLAIM}/",
        FERRY_OPERATOR_OPTIMIZER_IMAGE=OPTIMIZER_IMAGE,
        FERRY_OPERATOR_JOB_TTL_SECONDS="3600",
    ).start()
    try:
        wait_for("the operator's health endpoint", process.healthy, timeout=60)
    except AssertionError:
        process.stop()
        sys.stderr.write(f"\n--- ferry-operator log ---\n{process.log()[-20000:]}\n")
        raise
    yield process
    process.stop()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        sys.stderr.write(f"\n--- ferry-operator log ---\n{process.log()[-20000:]}\n")
