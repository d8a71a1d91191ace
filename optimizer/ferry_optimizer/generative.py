"""Generative models: a Hugging Face folder built into onnxruntime-genai folders, measured, gated, chosen.

`--format huggingface`: onnxruntime-genai's model builder turns the folder into an fp32 model (the
gate's reference) and, for `quantize: int4`, an int4 and an int8 weight-only candidate (int8 is the
fallback when int4 does not pass: smaller than fp32, closer to it than int4), for `quantize: int8` an
int8 one. Both also get `w8a8` (w8a8.py): the reference's float MatMuls as int8 weights times int8
activations quantized per token, which integer GEMM kernels (AMX, VNNI) serve batches with several
times faster than weight-only int4. `--format onnx-genai`: an already built folder, the reference
`given`, served as it is or with its float MatMuls re-quantized to the same candidates (ONNX Runtime's
quantizer).

The builder imports torch and transformers, which abort a process that has loaded TensorFlow (an LLVM
option registered twice), and the optimizer loads TensorFlow for its other formats and for TensorBoard:
so the builder always runs as a subprocess, and this process never imports torch.

Each candidate is measured (generative_quality.py), gated with selection.py against the fp32 model and
the chosen one is written to the output as the folder `ferry-runtime` serves. The report is the tensor
pipeline's (report.py), its latency the time per generated token with several sequences in flight
(generative_quality.BATCH_SEQUENCES), so the choice rule is the same: the fastest server under load
(within 5%), then the smallest.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ferry_optimizer import __version__, exports, generative_quality, locations, selection
from ferry_optimizer.context import Progress, Request
from ferry_optimizer.errors import InputError, OptimizerError, StepError
from ferry_optimizer.key import content_key
from ferry_optimizer.report import Artifact, Candidate, Measurement, Report, Step
from ferry_optimizer.spec import MetricName, OptimizeSpec
from ferry_runtime import storage
from ferry_runtime.generative.config import load_decoder_config
from ferry_runtime.generative.engine import kv_bytes_per_token

FORMATS = ("huggingface", "onnx-genai")
# The gate's reference: the unquantized build of a Hugging Face folder, or a given folder as it is.
REFERENCE = {"huggingface": "fp32", "onnx-genai": "given"}
# What the builder writes and the runtime reads; removed from the output before a run writes its own.
FOLDER_FILES = (
    "genai_config.json",
    "model.onnx",
    "model.onnx.data",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
)
# Written beside the model but not part of it (the artifact digest leaves them out).
NOT_MODEL = ("report.json", "tensorboard", "reference.json")
BUILDER_TIMEOUT_S = 3600
# The candidate made from the reference by w8a8.py (not by the builder).
W8A8 = "w8a8"
AGREEMENT_NOTE = (
    "no data given: quality is greedy-token agreement with the reference (fp32, or the given folder) "
    "on built-in prompts, a weak check; give optimize.data (text or JSONL) for perplexity on your own "
    "held-out text"
)
GRAPH_NOTE = "graph is not used for generative models: the model builder writes the optimized decoder graph"
W8A8_NOTE = (
    "w8a8 was chosen by its speed on this node's CPU ({cpu}); its integer kernels are fastest with AMX or "
    "VNNI, and a CPU without VNNI (AVX2 only) computes its u8 x s8 products with a saturating multiply-add: "
    "serve it on nodes like this one (docs/generative.md, W8A8)"
)


def check(request: Request) -> None:
    """Refuse what no step can do for a generative model, naming the field, before any work."""
    spec, fmt = request.spec, request.format
    if spec.quantize not in ("none", "int4", "int8"):
        raise InputError("quantize", "none, int4 or int8 for a generative model (weight-only)", spec.quantize)
    for name, block in (("prune", spec.prune), ("distill", spec.distill)):
        if block is not None:
            raise InputError(name, "no pruning or distillation for a generative model", f"format {fmt}")
    if spec.export != ("onnx",):
        raise InputError("export", "[onnx] for a generative model (no TFLite export)", list(spec.export))
    if spec.validate is not None:
        if spec.validate.metric not in ("perplexity", "agreement"):
            raise InputError(
                "validate.metric", "perplexity or agreement for a generative model", spec.validate.metric
            )
        if spec.validate.metric == "perplexity" and request.data is None:
            raise InputError(
                "validate.metric",
                "optimize.data (or --data), a text or JSONL file, for perplexity",
                "no data",
            )
        if spec.validate.metric == "agreement" and request.data is not None:
            raise InputError("validate.metric", "perplexity when text is given", "agreement")
    if request.settings.threads < 1:
        raise InputError("--threads", "an integer of at least 1", request.settings.threads)
    folder = request.model
    if not folder.is_dir():
        raise InputError("--model", f"a folder for format {fmt}", str(folder))
    needed = (
        ["config.json", "tokenizer.json"] if fmt == "huggingface" else ["genai_config.json", "tokenizer.json"]
    )
    missing = [name for name in needed if not (folder / name).is_file()]
    if fmt == "huggingface" and not any(folder.glob("*.safetensors")):
        missing.append("*.safetensors")
    if missing:
        raise InputError("--model", f"a {fmt} folder with {', '.join(needed)}", f"no {', '.join(missing)}")


@dataclass
class _Built:
    name: str
    folder: Path | None
    # None when the build failed (error says why).
    seconds: float
    precision: str
    # fp32 | int8 | int4 (as the builder names it); "as given" for an onnx-genai folder.
    detail: str
    error: str | None = None


def optimize(request: Request, work: Path) -> Report:
    check(request)
    spec = request.spec
    reference = REFERENCE[request.format]
    planned = {
        "none": [reference],
        "int8": [reference, "int8", W8A8],
        "int4": [reference, "int4", "int8", W8A8],
    }[spec.quantize]
    progress = Progress(total=1 + 2 * len(planned) + 1)
    try:
        return _optimize(request, work, planned, progress)
    finally:
        progress.close()


def _optimize(request: Request, work: Path, planned: list[str], progress: Progress) -> Report:
    spec = request.spec
    with progress.step("digest source"):
        digest = request.model_sha256 or locations.digest(request.model)
        key = request.key or content_key(digest, spec, __version__)
    built: list[_Built] = []
    for name in planned:
        with progress.step(f"build {name}"):
            built.append(_w8a8(built[0], work) if name == W8A8 else _build(request, name, work))
    reference = built[0]
    if reference.folder is None:
        # The unquantized build failing is the source's fault (an architecture the builder lacks).
        raise InputError(
            "--model", "a model folder onnxruntime-genai's builder supports", reference.error or "failure"
        )
    decoder = generative_quality.Decoder(reference.folder, threads=0)
    if request.data is not None:
        samples = spec.data.samples if spec.data is not None else 512
        records = generative_quality.load_text(request.data, samples)
        metric_name: MetricName = "perplexity"
    else:
        records = list(generative_quality.PROMPTS)
        metric_name = "agreement"
    token_windows = generative_quality.windows(decoder.tokenizer, records, decoder.window)
    if metric_name == "perplexity" and not token_windows:
        raise InputError("data", "text of at least two tokens to score", "none")
    # The reference's greedy continuations, scored only without text.
    continuations = (
        [
            (prompt, decoder.greedy(prompt, generative_quality.AGREEMENT_TOKENS))
            for prompt in (decoder.tokenizer.encode(text) for text in generative_quality.PROMPTS)
        ]
        if metric_name == "agreement"
        else []
    )
    prompt = generative_quality.speed_prompt(decoder.tokenizer, records)
    del decoder
    evaluation = generative_quality.Evaluation(metric_name, token_windows, continuations, prompt)

    measured: dict[str, Measurement] = {}
    for build in built:
        if build.folder is None:
            continue
        with progress.step(f"measure {build.name}"):
            try:
                measured[build.name] = generative_quality.measure(
                    build.folder, evaluation, request.settings.threads
                )
            except StepError as failure:
                if build is reference:
                    raise
                build.error = failure.message
    baseline = measured[reference.name]
    report = Report(
        optimizer_version=__version__,
        key=key,
        source={
            "uri": request.model_uri,
            "format": request.format,
            "sha256": digest,
            "sizeBytes": _folder_bytes(request.model),
        },
        spec=spec.to_dict(),
        data={
            "uri": spec.data.uri if spec.data else None,
            "source": "file" if request.data is not None else "builtin",
            "samples": len(records),
            "labels": False,
            "windows": len(token_windows) if metric_name == "perplexity" else len(continuations),
            "tokens": sum(len(w) - 1 for w in token_windows)
            if metric_name == "perplexity"
            else sum(len(c) for _, c in continuations),
        },
        metric={
            "name": metric_name,
            "higherIsBetter": metric_name == "agreement",
            "baseline": baseline.metric,
            "maxDrop": spec.validate.max_drop if spec.validate else None,
            "maxIncrease": spec.validate.max_increase if spec.validate else None,
            "gate": spec.validate is not None,
        },
        measurement={
            "threads": request.settings.threads,
            "batch": 1,
            "runs": generative_quality.ROUNDS,
            "warmup": 1,
            "statistic": "median",
            "promptTokens": len(prompt),
            "decodeTokens": generative_quality.DECODE_TOKENS,
            "latency": (
                f"milliseconds per generated token, {generative_quality.BATCH_SEQUENCES} sequences in flight"
            ),
            "provider": "CPUExecutionProvider",
            "engine": "ferry_runtime.generative.engine",
            "onnxruntime": _version("onnxruntime"),
            "onnxruntimeGenai": _version("onnxruntime-genai"),
        },
        output_uri=request.output_uri,
    )
    for build in built:
        report.steps.append(
            Step(
                build.name,
                _step_name(request.format, build, reference),
                build.detail,
                None if build is reference else baseline,
                measured.get(build.name),
                build.seconds,
                error=build.error,
            )
        )
        report.candidates.append(
            Candidate(
                build.name,
                build.name,
                []
                if request.format == "onnx-genai" and build is reference
                else [f"{_step_name(request.format, build, reference)}:{build.precision}"],
                measured.get(build.name),
                # fp32 competes only when nothing else was asked for; otherwise it is the reference.
                requested=build is not reference or len(built) == 1,
                reason="" if build.error is None else f"failed: {build.error}",
            )
        )
    if metric_name == "agreement":
        report.notes.append(AGREEMENT_NOTE)
    if spec.graph != "extended":
        report.notes.append(GRAPH_NOTE)
    selection.gate(
        report.candidates, metric_name, baseline.metric or 0.0, spec.validate, reference=reference.name
    )
    report.chosen, report.passed, report.reason = selection.choose(
        report.candidates, metric_name, gated=spec.validate is not None, reference=reference.name
    )
    if report.chosen == W8A8:
        from ferry_optimizer.onnxtools import cpu_name

        report.notes.append(W8A8_NOTE.format(cpu=cpu_name()))
    with progress.step("write"):
        chosen = next((b for b in built if b.name == report.chosen), None)
        _write(request, chosen, report)
        # TensorFlow's summary writer, as for tensor models (imported late: it loads TensorFlow).
        from ferry_optimizer import training

        training.write_scalars(request.output / "tensorboard" / "report", report.scalars())
    return report


def _build(request: Request, name: str, work: Path) -> _Built:
    """One candidate folder: the builder's output (huggingface), or the given folder (onnx-genai) as it
    is or with its MatMuls re-quantized."""
    spec: OptimizeSpec = request.spec
    if request.format == "onnx-genai":
        if name == REFERENCE["onnx-genai"]:
            return _Built(name, request.model, 0.0, "as given", "as given")
        return _requantize(request, name, work)
    if importlib.util.find_spec("onnxruntime_genai") is None:
        raise OptimizerError(
            "onnxruntime-genai's model builder is not installed in this image "
            "(pip install 'ferry[optimizer,generative]')"
        )
    output = work / name
    precision = "fp32" if name == REFERENCE["huggingface"] else name
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(request.model)]
    command += ["-o", str(output), "-p", precision, "-e", "cpu", "-c", str(work / f"{name}.cache")]
    detail = precision
    if precision != "fp32":
        weights = spec.weight_only
        assert weights is not None  # parse fills it in for int4 and int8
        command += [
            "--extra_options",
            f"block_size={weights.block_size}",
            f"accuracy_level={weights.accuracy_level}",
        ]
        detail = f"{precision} block {weights.block_size} accuracy level {weights.accuracy_level}"
    started = time.perf_counter()
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, check=False, timeout=BUILDER_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return _Built(
            name,
            None,
            time.perf_counter() - started,
            precision,
            detail,
            f"timed out after {BUILDER_TIMEOUT_S} s",
        )
    seconds = time.perf_counter() - started
    shutil.rmtree(work / f"{name}.cache", ignore_errors=True)
    if result.returncode != 0 or not (output / "genai_config.json").is_file():
        return _Built(name, None, seconds, precision, detail, _last_error(result.stderr or result.stdout))
    # The builder copies the tokenizer files but not generation_config.json, whose eos_token_id list
    # (a chat model's end-of-turn token) the runtime stops on.
    generation = request.model / "generation_config.json"
    if generation.is_file():
        shutil.copyfile(generation, output / generation.name)
    return _Built(name, output, seconds, precision, detail)


def _write(request: Request, chosen: _Built | None, report: Report) -> None:
    # The model alone, as the artifact serving pods fetch and check, without the report beside it.
    output = request.output / exports.MODEL_FOLDER
    output.mkdir(parents=True, exist_ok=True)
    # A model left by an earlier run must not pass for this run's verdict.
    for stale in FOLDER_FILES:
        (output / stale).unlink(missing_ok=True)
    if chosen is None or chosen.folder is None:
        return
    digests = {}
    # A given folder may be an earlier run's output: its report and reference are not the model's.
    for path in sorted(p for p in chosen.folder.iterdir() if p.is_file() and p.name not in NOT_MODEL):
        shutil.copyfile(path, output / path.name)
        digests[path.name] = locations.digest(output / path.name)
    measurement = next(c.measurement for c in report.candidates if c.name == chosen.name)
    decoder = load_decoder_config(output)
    report.artifacts.append(
        Artifact(
            f"{exports.MODEL_FOLDER}/",
            "onnx-genai",
            storage.manifest_digest(digests),
            sum((output / name).stat().st_size for name in digests),
            measurement.metric if measurement else None,
            kv_cache_bytes_per_token=kv_bytes_per_token(decoder),
            context_length=decoder.context_length,
        )
    )


def _w8a8(reference: _Built, work: Path) -> _Built:
    """The reference folder with its float MatMuls made W8A8 (w8a8.py): int8 weights per output
    channel, int8 activations per token at run time."""
    from ferry_optimizer import w8a8

    detail = "int8 weights per channel x int8 activations per token (MatMulIntegerToFloat)"
    started = time.perf_counter()
    if reference.folder is None:
        return _Built(W8A8, None, 0.0, W8A8, detail, "the reference did not build")
    output = work / W8A8
    try:
        decoder = generative_quality.load_decoder_file(reference.folder)
        rewritten = w8a8.quantize_folder(decoder, output, NOT_MODEL)
    except (ValueError, OSError) as error:
        shutil.rmtree(output, ignore_errors=True)
        return _Built(W8A8, None, time.perf_counter() - started, W8A8, detail, str(error))
    detail += f", {rewritten.matmuls} MatMuls"
    return _Built(W8A8, output, time.perf_counter() - started, W8A8, detail)


def _requantize(request: Request, name: str, work: Path) -> _Built:
    """The given folder with its float MatMul weights quantized to int4/int8 blocks (MatMulNBits), as the
    builder does it (symmetric, the spec's block size and accuracy level), by ONNX Runtime's quantizer in
    this process (it needs no torch). MatMuls already quantized stay as they are."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    weights = request.spec.weight_only
    assert weights is not None  # parse fills it in for int4 and int8
    detail = f"{name} block {weights.block_size} accuracy level {weights.accuracy_level} (re-quantized)"
    started = time.perf_counter()
    config = generative_quality.load_decoder_file(request.model)
    output = work / name
    shutil.copytree(request.model, output, ignore=shutil.ignore_patterns(f"{config.name}*", *NOT_MODEL))
    try:
        quantizer = MatMulNBitsQuantizer(
            onnx.load(str(config)),
            bits=4 if name == "int4" else 8,
            block_size=weights.block_size,
            is_symmetric=True,
            accuracy_level=weights.accuracy_level,
        )
        quantizer.process()
        onnx.save_model(
            quantizer.model.model,
            str(output / config.name),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=f"{config.name}.data",
        )
    except Exception as error:  # the quantizer raises assorted types for graphs it cannot handle
        return _Built(
            name, None, time.perf_counter() - started, name, detail, f"{type(error).__name__}: {error}"
        )
    return _Built(name, output, time.perf_counter() - started, name, detail)


def _step_name(fmt: str, build: _Built, reference: _Built) -> str:
    """build (the model builder), load (a given folder as it is) or quantize (a given folder's MatMuls,
    or the reference's for w8a8)."""
    if build.name == W8A8:
        return "quantize"
    if fmt == "huggingface":
        return "build"
    return "load" if build is reference else "quantize"


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _last_error(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][-500:] if lines else "the model builder failed without a message"


def _version(distribution: str) -> str | None:
    # From the installed metadata: onnxruntime-genai is never imported here (only its builder, elsewhere).
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
