"""`kubectl ferry` rendering: what a person reads, from a ModelDeployment status."""

from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path

import numpy as np
import pytest

from ferry_operator import plugin

NOW = dt.datetime(2026, 11, 28, 12, 0, 0, tzinfo=dt.UTC)


def _md(phase: str, ready: int, desired: int, conditions: list[dict[str, str]], **status: object) -> dict:
    return {
        "metadata": {
            "name": "digits",
            "namespace": "ml",
            "generation": 2,
            "creationTimestamp": "2026-11-28T11:58:30Z",
        },
        "status": {
            "phase": phase,
            "replicas": desired,
            "readyReplicas": ready,
            "observedGeneration": 2,
            "conditions": conditions,
            **status,
        },
    }


def test_progress_line_names_the_first_unmet_condition_and_fills_the_bar() -> None:
    md = _md(
        "Deploying",
        1,
        4,
        [
            {"type": "ModelResolved", "status": "True", "reason": "Resolved"},
            {"type": "Optimized", "status": "True", "reason": "Passed"},
            {"type": "Deployed", "status": "False", "reason": "RollingOut"},
        ],
    )
    line = plugin.progress_line(md, width=8)
    assert line.startswith("Deploying")
    assert "[##......] 1/4 ready" in line
    assert "Deployed: RollingOut" in line
    assert "has not seen the latest spec" not in line


def test_progress_line_flags_a_spec_the_operator_has_not_observed() -> None:
    md = _md("Ready", 2, 2, [{"type": t, "status": "True"} for t in plugin.PROGRESS_CONDITIONS])
    md["metadata"]["generation"] = 3
    assert "[operator has not seen the latest spec yet]" in plugin.progress_line(md)


def test_list_rows_show_ready_phase_replicas_url_and_age() -> None:
    md = _md(
        "Ready", 2, 3, [{"type": "Ready", "status": "True"}], url="http://digits.ml.svc:8080/v2/models/digits"
    )
    (row,) = plugin.list_rows([md], now=NOW)
    assert row == ["ml", "digits", "True", "Ready", "2/3", "http://digits.ml.svc:8080/v2/models/digits", "1m"]


def test_report_marks_the_chosen_candidate_and_rejections() -> None:
    report = {
        "chosen": "int8-dynamic",
        "candidates": [
            {"name": "baseline", "passed": True, "sizeBytes": 4_000_000, "latencyMs": 2.0, "metric": 0.95},
            {
                "name": "int8-dynamic",
                "passed": True,
                "sizeBytes": 1_000_000,
                "latencyMs": 1.0,
                "metric": 0.948,
            },
            {"name": "pruned", "passed": False, "sizeBytes": 4_000_000, "latencyMs": 2.0, "metric": 0.80},
        ],
    }
    rows = plugin.report_rows(report)
    assert [r[0] for r in rows] == ["  baseline", "* int8-dynamic", "  pruned"]
    assert [r[1] for r in rows] == ["pass", "pass", "REJECTED"]
    assert rows[1][2] == "1.00 MB"


def test_the_artifact_is_a_table_row_not_a_python_dict() -> None:
    artifact = {"uri": "pvc://ferry-artifacts/ab12/model.onnx", "sha256": "f" * 64, "sizeBytes": 1_250_000}
    assert plugin.artifact_row(artifact) == ["pvc://ferry-artifacts/ab12/model.onnx", "1.25 MB", "f" * 64]
    rendered = plugin.table(["ARTIFACT", "SIZE", "SHA256"], [plugin.artifact_row(artifact)])
    assert "{" not in rendered
    assert rendered.splitlines()[1].startswith("pvc://ferry-artifacts/ab12/model.onnx")


def test_plot_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    target = tmp_path / "report.png"
    plugin.plot_report(
        {"chosen": "a", "candidates": [{"name": "a", "passed": True, "sizeBytes": 10}]}, target
    )
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_npz_input_becomes_a_v2_request_typed_by_the_model_metadata(tmp_path: Path) -> None:
    path = tmp_path / "x.npz"
    np.savez(path, x=np.arange(6, dtype=np.float64).reshape(2, 3))
    request = plugin.infer_request(
        path, {"inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 3]}]}
    )
    assert request == {
        "inputs": [{"name": "input", "shape": [2, 3], "datatype": "FP32", "data": [0, 1, 2, 3, 4, 5]}]
    }


def test_bad_inputs_say_what_was_expected(tmp_path: Path) -> None:
    csv = tmp_path / "x.csv"
    csv.write_text("1,2")
    with pytest.raises(plugin.PluginError, match=r"expected a \.json v2 request or an \.npz"):
        plugin.infer_request(csv, {})
    not_v2 = tmp_path / "x.json"
    not_v2.write_text(json.dumps({"instances": [1]}))
    with pytest.raises(plugin.PluginError, match="`inputs` list"):
        plugin.infer_request(not_v2, {})
    npz = tmp_path / "y.npz"
    np.savez(npz, other=np.zeros(2))
    with pytest.raises(plugin.PluginError, match="no array for model input 'a'"):
        plugin.infer_request(
            npz, {"inputs": [{"name": "a", "datatype": "FP32"}, {"name": "b", "datatype": "FP32"}]}
        )


def test_missing_kubeconfig_tells_how_to_get_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = plugin.main(["--kubeconfig", str(tmp_path / "absent"), "list"], out=io.StringIO())
    assert code == 1
    assert "devcluster/devcluster kubeconfig" in capsys.readouterr().err


def test_common_options_are_accepted_before_and_after_the_command() -> None:
    for argv in (["-n", "demo", "report", "digits"], ["report", "digits", "-n", "demo"]):
        args = plugin.parse_args(argv)
        assert (args.namespace, args.command, args.name) == ("demo", "report", "digits")
    assert plugin.parse_args(["list"]).namespace is None


def test_unreported_conditions_are_not_steps() -> None:
    md = _md(
        "Deploying",
        0,
        1,
        [{"type": "ModelResolved", "status": "True"}, {"type": "Deployed", "status": "True"}],
    )
    assert "Ready: Waiting" in plugin.progress_line(md)
