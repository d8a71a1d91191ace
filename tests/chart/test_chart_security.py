"""Security scan of the rendered chart with checkov (PyPI), for the default values and every ci/ scenario.

Severity: checkov's open-source policies carry no severity without a Prisma Cloud account (every result
says `severity: null` with --skip-download), so every failed check is treated as HIGH: the gate passes only
when nothing fails. A finding is fixed in charts/ferry/templates or accepted with checkov's own inline
suppression, a `checkov.io/skipN: CHECK_ID=reason` annotation on the object, and the accepted ones are
listed with their reasons in docs/operations.md#security-scan (checked below), so a platform engineer who
runs checkov on the chart sees the same verdicts and why.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_cases import ROOT, SCENARIOS, Render

from ferry_devcluster import build

CHECKOV_LOCK = Path(__file__).parent / "checkov-requirements.txt"
OPERATIONS_DOC = ROOT / "docs" / "operations.md"


def checkov_executable() -> Path:
    """checkov from its own venv, made once per lock file content under ${FERRY_CACHE}/tools/ (see the
    lock file for why it cannot share the project venv)."""
    digest = hashlib.sha256(CHECKOV_LOCK.read_bytes()).hexdigest()[:12]
    tools = build.cache_dir() / "tools"
    venv = tools / f"checkov-{digest}"
    executable, installed = venv / "bin" / "checkov", venv / ".installed"
    if installed.exists():
        return executable
    tools.mkdir(parents=True, exist_ok=True)
    with (tools / ".checkov.lock").open("w") as lock:
        # parallel test sessions wait for one install instead of racing into the same directory
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not installed.exists():
            shutil.rmtree(venv, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            pip = [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check"]
            subprocess.run([*pip, "--requirement", str(CHECKOV_LOCK)], check=True)
            # written last: a half-made venv is never taken for a working one
            installed.write_text(CHECKOV_LOCK.read_text())
    return executable


def _scenario_name(values: Path | None) -> str:
    return values.name.removesuffix("-values.yaml") if values else "default"


@pytest.fixture(scope="module")
def scan(render: Render, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One checkov run over one file of rendered manifests per scenario."""
    rendered = tmp_path_factory.mktemp("rendered")
    for values in [None, *SCENARIOS]:
        objects = render(values) if values else render()
        (rendered / f"{_scenario_name(values)}.yaml").write_text(yaml.safe_dump_all(objects))
    result = subprocess.run(
        [
            str(checkov_executable()),
            "--directory",
            str(rendered),
            "--framework",
            "kubernetes",
            # offline: no Prisma Cloud guideline or policy download (this machine has no internet)
            "--skip-download",
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    # exit 1 means "checks failed", which the tests report in detail; anything else is a crash
    assert result.returncode in (0, 1), f"checkov exit {result.returncode}:\n{result.stderr[-4000:]}"
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    assert [r["check_type"] for r in reports] == ["kubernetes"], result.stdout[:2000]
    return dict(reports[0])


def test_checkov_scanned_every_scenario(scan: dict[str, Any]) -> None:
    # a scan that read nothing would pass the other tests vacuously
    assert scan["summary"]["parsing_errors"] == 0
    scanned = {Path(c["file_path"]).stem for c in scan["results"]["passed_checks"]}
    assert scanned == {_scenario_name(values) for values in [None, *SCENARIOS]}


def test_checkov_finds_nothing_that_is_neither_fixed_nor_explained(scan: dict[str, Any]) -> None:
    failed = [
        f"{c['check_id']} {c['check_name']}: {c['resource']} in {Path(c['file_path']).name}"
        for c in scan["results"]["failed_checks"]
    ]
    assert not failed, (
        "fix these in charts/ferry/templates, or accept one with a `checkov.io/skipN: ID=reason` annotation "
        "and a line in docs/operations.md#security-scan:\n" + "\n".join(sorted(set(failed)))
    )


def test_every_accepted_finding_has_a_reason_in_the_operations_doc(scan: dict[str, Any]) -> None:
    section = OPERATIONS_DOC.read_text().split("\n## Security scan", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`(CKV2?_K8S_\d+)`", section))
    skipped = scan["results"]["skipped_checks"]
    assert skipped, "expected the accepted findings of docs/operations.md#security-scan to show as skipped"
    for check in skipped:
        where = f"{check['check_id']} on {check['resource']}"
        reason = check["check_result"].get("suppress_comment", "")
        # checkov's placeholder when an annotation names a check without `=reason`
        assert reason != "No comment provided", f"{where}: no reason given"
        assert len(reason) > 20, f"{where}: a reason, not a word ({reason!r})"
        assert check["check_id"] in documented, f"{where} is accepted but not listed in {OPERATIONS_DOC.name}"
    stale = documented - {c["check_id"] for c in skipped}
    assert not stale, f"{OPERATIONS_DOC.name} lists acceptances the chart no longer has: {sorted(stale)}"
