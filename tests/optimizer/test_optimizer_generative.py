"""`ferry-optimize --format huggingface` on a Llama made in this session: int4 and int8 candidates built by
onnxruntime-genai's builder, measured, gated on perplexity (recomputed here, independently), chosen, and
the chosen folder served by `ferry-runtime`."""

from __future__ import annotations

import inspect
import json
import json.decoder
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from optimizer_cases import ROOT
from test_optimizer_cli import ferry_optimize

from ferry_optimizer import generative, spec
from ferry_optimizer.context import Request
from ferry_optimizer.errors import InputError

sys.path.insert(0, str(ROOT / "bench"))
import generative_models

# Held-out text: the tokenizer was trained on other modules' source (generative_models.corpus).
HELD_OUT = inspect.getsource(json.decoder)
# A random tiny model's outputs are near-uniform, so quantization moves its perplexity little; on this
# text int4 (block 64) raises it by ~1e-3 and int8 changes it by ~1e-5: this budget lies between them.
MAX_INCREASE = 0.0002
WINDOW = 512


@dataclass(frozen=True)
class Run:
    output: Path
    report: dict[str, Any]
    result: subprocess.CompletedProcess[str]
    termination: dict[str, Any]


def optimize(
    tmp: Path, model: Path, fmt: str, spec_text: str, *, data: Path | None = None, name: str = "out"
) -> Run:
    spec_file = tmp / f"{name}.yaml"
    spec_file.write_text(spec_text)
    output, log = tmp / name, tmp / f"{name}.termination"
    args: list[str | Path] = ["--model", model, "--format", fmt, "--spec", spec_file, "--output", output]
    args += ["--termination-log", log]
    if data is not None:
        args += ["--data", data]
    result = ferry_optimize(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((output / "report.json").read_text())
    return Run(output, report, result, json.loads(log.read_text()))


@pytest.fixture(scope="module")
def hf_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # torch in a process of its own (it aborts where TensorFlow is loaded: see generative_models).
    return Path(generative_models.reference("make", tmp_path_factory.mktemp("llama") / "hf"))


@pytest.fixture(scope="module")
def gated(hf_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    tmp = tmp_path_factory.mktemp("gated")
    text = tmp / "held-out.txt"
    text.write_text(HELD_OUT)
    return optimize(
        tmp,
        hf_llama,
        "huggingface",
        "quantize: int4\nweightOnly: {blockSize: 64}\n"
        f"validate: {{metric: perplexity, maxIncrease: {MAX_INCREASE}}}\n",
        data=text,
    )


def candidates(run: Run) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in run.report["candidates"]}


def chosen_by_the_rule(found: dict[str, dict[str, Any]]) -> str:
    """selection.choose recomputed from the report: the fastest passing requested candidate under load
    (within 5%), then the smallest."""
    passing = [c for c in found.values() if c["requested"] and c["passed"]]
    fastest = min(c["measurement"]["latencyMs"] for c in passing)
    tied = [c for c in passing if c["measurement"]["latencyMs"] <= fastest * 1.05]
    return str(min(tied, key=lambda c: c["measurement"]["sizeBytes"])["name"])


@pytest.mark.slow
def test_int4_over_the_budget_is_rejected_and_an_int8_candidate_chosen(gated: Run) -> None:
    found = candidates(gated)
    assert list(found) == ["fp32", "int4", "int8", "w8a8"]
    fp32, int4, int8, w8a8 = found["fp32"], found["int4"], found["int8"], found["w8a8"]
    assert fp32["reason"] == "reference"
    assert not fp32["requested"]
    assert int4["passed"] is False
    assert int4["reason"].startswith("perplexity increase ")
    assert f"> maxIncrease {MAX_INCREASE:g}" in int4["reason"]
    # Both int8 candidates stay within the budget: weight-only int8 and W8A8 (int8 activations per token).
    assert int8["passed"] is True
    assert w8a8["passed"] is True
    assert w8a8["steps"] == ["quantize:w8a8"]
    # Which of the two wins depends on this CPU's kernels (W8A8 wins batches on AMX): the report's own
    # figures must give the choice.
    assert gated.report["chosen"] == chosen_by_the_rule(found)
    assert gated.report["chosen"] in ("int8", "w8a8")
    # A W8A8 choice says which CPU it was measured on and what it needs of the serving nodes.
    w8a8_notes = [note for note in gated.report["notes"] if note.startswith("w8a8 was chosen")]
    assert len(w8a8_notes) == (gated.report["chosen"] == "w8a8")
    assert gated.report["passed"] is True
    # Quantization shrinks the decoder: int4 below int8 (and W8A8, int8 too) below fp32.
    sizes = [found[n]["measurement"]["sizeBytes"] for n in ("int4", "int8", "fp32")]
    assert sizes == sorted(sizes)
    assert sizes[2] > 1.5 * sizes[1]
    assert sizes[2] > 1.5 * w8a8["measurement"]["sizeBytes"]
    for candidate in found.values():
        speed = candidate["measurement"]["generation"]
        assert speed["promptTokens"] == 128
        assert speed["decodeTokens"] == 64
        assert speed["prefillTokensPerSecond"] > 0
        assert speed["decodeTokensPerSecond"] > 0
        assert speed["timeToFirstTokenMs"] > 0
        assert speed["batchSequences"] == 8
        # Latency is the time per generated token with eight sequences in flight.
        assert candidate["measurement"]["latencyMs"] == pytest.approx(1000 / speed["batchTokensPerSecond"])
    # The table shows every candidate with its speeds; the termination message names the folder.
    assert "decode tok/s" in gated.result.stdout
    assert "batch tok/s" in gated.result.stdout
    assert "REJECT" in gated.result.stdout
    assert f"* {gated.report['chosen']}" in gated.result.stdout
    assert gated.termination["chosen"] == gated.report["chosen"]
    # The artifact is the model/ folder alone: report.json and tensorboard/ are written beside it.
    assert gated.termination["artifact"]["uri"] == f"{gated.output}/model/"
    assert [c["name"] for c in gated.termination["candidates"]] == ["fp32", "int4", "int8", "w8a8"]
    # What the operator sizes the serving pods' memory from, read here from the folder's own config.
    decoder = json.loads((gated.output / "model" / "genai_config.json").read_text())["model"]
    layer = decoder["decoder"]
    kv_per_token = 2 * layer["num_hidden_layers"] * layer["num_key_value_heads"] * layer["head_size"] * 4
    assert gated.termination["artifact"]["kvCacheBytesPerToken"] == kv_per_token
    assert gated.termination["artifact"]["contextLength"] == decoder["context_length"]
    served = [p for p in (gated.output / "model").iterdir() if p.is_file()]
    assert gated.termination["artifact"]["sizeBytes"] == sum(p.stat().st_size for p in served)
    # ... and its digest is the folder's own manifest digest: what ferry-fetch --sha256 checks.
    from ferry_runtime import storage

    assert gated.termination["artifact"]["sha256"] == storage.directory_digest(gated.output / "model")
    assert {p.name for p in gated.output.iterdir()} >= {"model", "report.json", "tensorboard"}


@pytest.mark.slow
def test_reported_perplexity_is_recomputed_independently(gated: Run, hf_llama: Path) -> None:
    records = [part.strip() for part in HELD_OUT.split("\n\n") if part.strip()]
    # fp32: transformers on the source weights (the same documented windows, its own tokenizer).
    expected = generative_models.reference("perplexity", hf_llama, {"records": records, "window": WINDOW})
    fp32 = candidates(gated)["fp32"]["measurement"]["metric"]
    assert gated.report["metric"]["baseline"] == fp32
    assert gated.report["data"]["tokens"] == expected["tokens"]
    assert fp32 == pytest.approx(expected["perplexity"], rel=1e-4)
    # The chosen folder: plain ONNX Runtime on the written model, without Ferry's engine.
    chosen = candidates(gated)[gated.report["chosen"]]["measurement"]["metric"]
    assert chosen == pytest.approx(onnx_perplexity(gated.output / "model", records), rel=1e-5)
    int8 = candidates(gated)["int8"]["measurement"]["metric"]
    increase = (int8 - fp32) / fp32
    # Well inside the budget. Accuracy level 4 quantizes activations to int8 in ONNX Runtime's CPU kernels,
    # which differ by instruction set: 5.6e-5 on an AVX2-only EPYC, under 5e-5 where this was first run.
    assert abs(increase) < MAX_INCREASE / 2
    # int4's increase, from its reported perplexity, clearly exceeds the budget (not by rounding).
    int4 = candidates(gated)["int4"]["measurement"]["metric"]
    assert (int4 - fp32) / fp32 > 2 * MAX_INCREASE


@pytest.mark.slow
def test_the_spec_reaches_the_builder_and_the_folder_is_served(gated: Run) -> None:
    if gated.report["chosen"] == "int8":
        assert matmul_nbits(gated.output / "model", "block_size") == {64}
        assert matmul_nbits(gated.output / "model", "bits") == {8}
    else:  # W8A8: every weight MatMul became an integer one; no weight-only MatMul is left
        assert matmul_nbits(gated.output / "model", "bits") == set()
        assert operators(gated.output / "model")["MatMulIntegerToFloat"] > 0
    assert (gated.output / "model" / "generation_config.json").is_file()
    assert (gated.output / "tensorboard" / "report").is_dir()
    assert gated.report["spec"]["weightOnly"] == {"blockSize": 64, "accuracyLevel": 4}

    from ferry_devcluster.testing import ferry_runtime_command

    port = _free_port()
    command = ferry_runtime_command(gated.output / "model", "tiny", port, grpc_port=_free_port())
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        body = json.dumps({"model": "tiny", "prompt": "def main", "max_tokens": 5, "temperature": 0})
        answer = _post_when_ready(f"http://127.0.0.1:{port}/v1/completions", body.encode())
        assert answer["usage"]["completion_tokens"] >= 1
    finally:
        process.terminate()
        process.wait(60)


@pytest.mark.slow
def test_without_data_quality_is_greedy_agreement_with_fp32(hf_llama: Path, tmp_path: Path) -> None:
    run = optimize(tmp_path, hf_llama, "huggingface", "quantize: int8\n", name="agreement")
    found = candidates(run)
    assert list(found) == ["fp32", "int8", "w8a8"]
    assert run.report["metric"]["name"] == "agreement"
    assert run.report["metric"]["gate"] is False
    # The reference's own teacher-forced argmax repeats its greedy decode exactly.
    assert found["fp32"]["measurement"]["metric"] == 1.0
    assert 0.5 <= found["int8"]["measurement"]["metric"] <= 1.0
    assert 0.5 <= found["w8a8"]["measurement"]["metric"] <= 1.0
    assert run.report["chosen"] == chosen_by_the_rule(found)
    assert any("greedy-token agreement" in note for note in run.report["notes"])


@pytest.mark.slow
def test_a_built_folder_is_served_as_is_or_re_quantized(hf_llama: Path, tmp_path: Path) -> None:
    built = generative_models.build_genai_model(hf_llama, tmp_path / "fp32")
    as_is = optimize(tmp_path, built, "onnx-genai", "{}\n", name="as-is")
    assert [c["name"] for c in as_is.report["candidates"]] == ["given"]
    assert as_is.report["chosen"] == "given"
    assert as_is.report["passed"] is True
    served = as_is.output / "model"
    assert (served / "model.onnx.data").read_bytes() == (built / "model.onnx.data").read_bytes()

    again = optimize(tmp_path, built, "onnx-genai", "quantize: int4\n", name="re-quantized")
    found = candidates(again)
    assert list(found) == ["given", "int4", "int8", "w8a8"]
    assert [found[n]["steps"] for n in found] == [
        [],
        ["quantize:int4"],
        ["quantize:int8"],
        ["quantize:w8a8"],
    ]
    sizes = [found[n]["measurement"]["sizeBytes"] for n in ("int4", "int8", "given")]
    assert sizes == sorted(sizes)
    assert found["int4"]["measurement"]["metric"] >= 0.5  # agreement with the given model
    assert again.report["chosen"] == chosen_by_the_rule(found)
    if again.report["chosen"] == "w8a8":
        assert operators(again.output / "model")["MatMulIntegerToFloat"] > 0
    else:
        bits = {4 if again.report["chosen"] == "int4" else 8}
        assert matmul_nbits(again.output / "model", "bits") == bits
        assert matmul_nbits(again.output / "model", "block_size") == {32}


@pytest.mark.parametrize(
    ("fmt", "raw", "field"),
    [
        ("huggingface", {"quantize": "dynamic"}, "quantize"),
        ("onnx-genai", {"quantize": "fp16"}, "quantize"),
        ("huggingface", {"prune": {"sparsity": 0.5}}, "prune"),
        ("huggingface", {"export": ["onnx", "tflite"]}, "export"),
        ("huggingface", {"validate": {"metric": "cosine"}}, "validate.metric"),
        ("huggingface", {"validate": {"metric": "perplexity"}}, "validate.metric"),
    ],
)
def test_what_a_generative_model_cannot_do_is_refused_naming_the_field(
    fmt: str, raw: dict[str, Any], field: str, tmp_path: Path
) -> None:
    with pytest.raises(InputError) as caught:
        generative.check(_request(tmp_path, fmt, raw))
    assert caught.value.where == field


def test_a_folder_without_weights_is_refused_naming_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(InputError, match=r"--model: .*got 'no tokenizer.json, \*.safetensors'"):
        generative.check(_request(tmp_path, "huggingface", {}))


def test_int4_on_a_tensor_model_is_refused(tmp_path: Path) -> None:
    from ferry_optimizer.pipeline import check_request

    with pytest.raises(InputError) as caught:
        check_request(_request(tmp_path, "onnx", {"quantize": "int4"}))
    assert caught.value.where == "quantize"


def _request(folder: Path, fmt: str, raw: dict[str, Any]) -> Request:
    return Request(
        model=folder,
        model_uri=str(folder),
        format=fmt,
        spec=spec.parse(raw),
        data=None,
        output=folder / "out",
        output_uri=str(folder / "out"),
    )


def matmul_nbits(folder: Path, attribute_name: str) -> set[int]:
    """The values of one attribute over the folder's weight-only quantized MatMuls."""
    import onnx

    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    return {
        attribute.i
        for node in model.graph.node
        if node.op_type == "MatMulNBits"
        for attribute in node.attribute
        if attribute.name == attribute_name
    }


def operators(folder: Path) -> dict[str, int]:
    """How many nodes of each operator the folder's decoder has."""
    import collections

    import onnx

    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    return collections.Counter(node.op_type for node in model.graph.node)


def onnx_perplexity(folder: Path, records: list[str]) -> float:
    """Perplexity from a plain ONNX Runtime session on the folder's decoder (empty past, one window per
    run), tokenized by `tokenizers` directly: a second computation beside the optimizer's engine."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    config = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]
    session = ort.InferenceSession(str(folder / config["filename"]), providers=["CPUExecutionProvider"])
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    past = np.zeros((1, config["num_key_value_heads"], 0, config["head_size"]), np.float32)
    total, count = 0.0, 0
    for record in records:
        ids = tokenizer.encode(record).ids
        for start in range(0, len(ids), WINDOW):
            chunk = ids[start : start + WINDOW]
            if len(chunk) < 2:
                continue
            feeds: dict[str, np.ndarray] = {
                "input_ids": np.asarray([chunk], np.int64),
                "attention_mask": np.ones((1, len(chunk)), np.int64),
            }
            for layer in range(config["num_hidden_layers"]):
                feeds[config["inputs"]["past_key_names"] % layer] = past
                feeds[config["inputs"]["past_value_names"] % layer] = past
            logits = session.run([config["outputs"]["logits"]], feeds)[0][0].astype(np.float64)
            shifted = logits[:-1] - logits[:-1].max(axis=1, keepdims=True)
            log_probabilities = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
            total -= float(log_probabilities[np.arange(len(chunk) - 1), chunk[1:]].sum())
            count += len(chunk) - 1
    return float(np.exp(total / count))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _post_when_ready(url: str, body: bytes, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=30) as reply:
                return json.loads(reply.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_text_data_is_jsonl_records_or_paragraphs_and_a_bad_line_is_named(tmp_path: Path) -> None:
    from ferry_optimizer import generative_quality

    jsonl = tmp_path / "held-out.jsonl"
    jsonl.write_text('{"text": "first"}\n\n{"text": "second"}\n{"text": "third"}\n')
    assert generative_quality.load_text(jsonl, samples=2) == ["first", "second"]
    plain = tmp_path / "held-out.txt"
    plain.write_text("one\nparagraph\n\n\n  two  \n")
    assert generative_quality.load_text(plain, samples=10) == ["one\nparagraph", "two"]
    jsonl.write_text('{"text": "fine"}\n{"content": "wrong key"}\n')
    with pytest.raises(InputError) as caught:
        generative_quality.load_text(jsonl, samples=10)
    assert caught.value.where == "data line 2"
    assert 'a "text" string' in str(caught.value)
