"""`ferry-optimize` as a process: the table on stdout, the files, the termination message, the exit codes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from optimizer_cases import Digits, DigitsModels

from ferry_optimizer import key

CONTRACT_KEYS = {"passed", "chosen", "reason", "key", "artifact", "metric", "candidates"}


def ferry_optimize(*args: str | Path) -> subprocess.CompletedProcess[str]:
    executable = Path(sys.executable).with_name("ferry-optimize")
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(
        [str(executable), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        env=environment,
        check=False,
    )


@pytest.mark.slow
def test_cli_end_to_end(digits: Digits, digits_models: DigitsModels, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "quantize: dynamic\ngraph: extended\ndata: {uri: placeholder, samples: 1797}\n"
        "validate: {metric: accuracy, maxDrop: 0.01}\n"
    )
    termination = tmp_path / "termination-log"
    output = tmp_path / "artifacts"
    result = ferry_optimize(
        "--model", f"file://{digits_models.keras}", "--format", "keras", "--spec", spec,
        "--data", f"file://{digits.data}", "--output", f"file://{output}", "--termination-log", termination,
        "--runs", "5", "--key", "0123abcd" * 8,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    # The report as a table on stdout; progress lines (no TTY) on stderr.
    assert "Steps (before -> after)" in result.stdout
    assert "* optimized" in result.stdout
    assert "PASSED: chosen=optimized" in result.stdout
    assert "[ferry-optimize] original: quantize dynamic done" in result.stderr

    message = termination.read_text()
    assert len(message.encode()) < 4096
    summary = json.loads(message)
    assert set(summary) == CONTRACT_KEYS
    assert summary["passed"] is True
    assert summary["chosen"] == "optimized"
    assert summary["key"] == "0123abcd" * 8
    assert summary["artifact"]["uri"] == f"file://{output}/model.onnx"
    assert summary["artifact"]["sha256"] == key.file_sha256(output / "model.onnx")
    assert summary["artifact"]["sizeBytes"] == (output / "model.onnx").stat().st_size
    assert summary["metric"]["name"] == "accuracy"
    assert summary["metric"]["baseline"] - summary["metric"]["value"] <= 0.01
    assert [c["name"] for c in summary["candidates"]] == ["baseline", "optimized"]

    report = json.loads((output / "report.json").read_text())
    assert report["key"] == "0123abcd" * 8
    assert report["chosen"] == "optimized"
    assert report["source"]["sha256"] == key.file_sha256(digits_models.keras)
    assert [s["name"] for s in report["steps"]] == ["convert", "quantize", "graph"]
    assert set(report["steps"][1]["before"]) == {
        "sizeBytes",
        "compressedBytes",
        "latencyMs",
        "loadMs",
        "metric",
    }
    assert (output / "tensorboard" / "report").is_dir()


def test_bad_spec_exits_2_and_says_why_in_the_termination_log(tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"quantize": "int2"}))
    termination = tmp_path / "termination-log"
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not used")
    result = ferry_optimize(
        "--model", model, "--format", "onnx", "--spec", spec, "--output", tmp_path / "out",
        "--termination-log", termination,
    )  # fmt: skip
    assert result.returncode == 2
    expected = "['none', 'dynamic', 'static', 'fp16', 'int4', 'int8']"
    assert f"quantize: expected one of {expected}, got 'int2'" in result.stderr
    summary = json.loads(termination.read_text())
    assert set(summary) == CONTRACT_KEYS
    assert summary["passed"] is False
    assert summary["artifact"] is None
    assert "quantize" in summary["reason"]


@pytest.mark.parametrize(
    ("spec_text", "fmt", "fragment"),
    [
        ('{"prune": {"sparsity": 0.5}}', "onnx", "prune: expected a model in format keras"),
        ('{"export": ["onnx", "tflite"]}', "onnx", "export: expected only onnx for an ONNX model"),
        ('{"quantize": "static"}', "onnx", "quantize: expected optimize.data (or --data)"),
    ],
)
def test_requests_no_step_can_carry_out_are_refused_up_front(
    tmp_path: Path, minilm: Path, spec_text: str, fmt: str, fragment: str
) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(spec_text)
    result = ferry_optimize("--model", minilm, "--format", fmt, "--spec", spec, "--output", tmp_path / "out")
    assert result.returncode == 2, result.stderr[-2000:]
    assert fragment in result.stderr


def test_missing_model_names_the_flag(tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text("{}")
    result = ferry_optimize(
        "--model", tmp_path / "nope.onnx", "--format", "onnx", "--spec", spec, "--output", tmp_path / "out"
    )  # fmt: skip
    assert result.returncode == 2
    assert "--model: expected an existing file or directory" in result.stderr


def test_a_model_whose_digest_is_not_the_pinned_one_is_refused(tmp_path: Path, minilm: Path) -> None:
    # A folder, as the operator passes spec.model.sha256 for one: its manifest digest, as ferry-fetch and
    # `find . -type f | sort | xargs sha256sum | sha256sum` compute it.
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(minilm.read_bytes())
    manifest = f"{hashlib.sha256((folder / 'model.onnx').read_bytes()).hexdigest()}  ./model.onnx\n"
    digest = hashlib.sha256(manifest.encode()).hexdigest()
    spec = tmp_path / "spec.json"
    spec.write_text('{"export": ["onnx"]}')
    wrong = "0" * 64
    termination = tmp_path / "termination-log"
    result = ferry_optimize(
        "--model", f"{folder}/", "--format", "onnx", "--model-sha256", wrong, "--spec", spec,
        "--output", tmp_path / "out", "--termination-log", termination,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"the model whose digest is {wrong} (spec.model.sha256)" in result.stderr
    assert f"with digest {digest}" in result.stderr
    assert json.loads(termination.read_text())["reason"].startswith("bad input: --model:")
    # The same folder with its own digest is taken (the request carries the digest the key stands for).
    from ferry_optimizer import cli

    arguments = cli.parser().parse_args(
        ["--model", f"{folder}/", "--format", "onnx", "--model-sha256", digest.upper(), "--spec", str(spec),
         "--output", str(tmp_path / "out")]
    )  # fmt: skip
    assert cli._request(arguments, tmp_path / "scratch").model_sha256 == digest
