"""h2spec, the HTTP/2 conformance suite (RFC 9113 and RFC 7541), against the gRPC port of a real
ferry-runtime: every case, strict ones included, passes.

h2spec is built from its Go module like the devcluster's binaries (devcluster/components/h2spec, cached
under ${FERRY_CACHE}/bin). Its cases that need a response send `GET /`: the gRPC port answers that,
per RFC 9110, with 405 Method Not Allowed, `allow: POST` and a text body saying what the endpoint expects
(and a POST that is not `application/grpc` with 415); h2spec checks the frames, not the status, and the
body is what lets it hold a stream open behind a zero flow-control window.
"""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import RuntimeProcess, start_runtime
from ferry_devcluster import build
from runtime_models import DigitsModel


@pytest.fixture(scope="module")
def h2spec() -> Path:
    return build.ensure(["h2spec"])["h2spec"]


@pytest.fixture(scope="module")
def server(digits: DigitsModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    runtime = start_runtime(digits.path.parent, "digits", tmp_path_factory.mktemp("h2spec-logs"))
    yield runtime
    assert runtime.stop() == 0, runtime.log()


def test_h2spec_passes_every_case_against_the_grpc_port(
    h2spec: Path, server: RuntimeProcess, tmp_path: Path
) -> None:
    report = tmp_path / "h2spec.xml"
    result = subprocess.run(
        [
            str(h2spec),
            "--strict",
            "-h",
            "127.0.0.1",
            "-p",
            str(server.grpc_port),
            "-o",
            "5",
            "-j",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr
    cases = [case for suite in ET.parse(report).getroot() for case in suite]
    failed = [
        f"{case.get('package')}: {case.get('classname')}: {(problem.text or '').strip()}"
        for case in cases
        for problem in case
        if problem.tag in ("failure", "error")
    ]
    skipped = [case.get("classname") for case in cases for problem in case if problem.tag == "skipped"]
    # The suite has 146 cases with --strict (v2.2.1); fewer would mean h2spec gave up early.
    assert len(cases) >= 146, summary
    assert not failed, "\n".join([summary, *failed])
    assert not skipped, skipped
    assert result.returncode == 0, summary
    assert "0 failed" in summary
