"""The optimization Job's figures for a generative model: `ferry-optimize --format huggingface` end to end.

Makes the benchmark Llama (generative_models.BENCH, ~113M parameters, random weights, nothing from a
hub; cached under the work directory), writes held-out text (the source of standard library modules the
tokenizer was not trained on), runs `ferry-optimize` with `quantize: int4` and a perplexity gate as the
Job would, and prints: the wall time of the whole run, each candidate's decode and prefill tokens/s at
batch 1, time to first token, generated tokens/s with 8 sequences in flight (what the choice ranks),
perplexity and its increase over fp32, and the speed-ups over fp32.

    .venv/bin/python bench/generative_optimize.py [--shape bench|tiny] [--threads 1] [--max-increase 0.05]

Random weights give near-uniform next-token distributions, so the perplexity increase measured here is
much smaller than on a trained model: it shows the gate works on a model of this size, not what int4
costs a trained one.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import generative_models

# Not in generative_models.corpus(), so the text is held out from the tokenizer's training too.
# About 11,000 tokens of the benchmark tokenizer: each candidate's scoring time scales with it.
HELD_OUT_MODULES = ("json.decoder", "json.encoder", "shlex")


def held_out_text() -> str:
    import importlib

    return "\n\n".join(inspect.getsource(importlib.import_module(name)) for name in HELD_OUT_MODULES)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=("bench", "tiny"), default="bench")
    parser.add_argument(
        "--work", type=Path, default=Path(os.environ.get("FERRY_CACHE", "~/.cache/ferry")).expanduser()
    )
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for the timing (default 1)")
    parser.add_argument("--max-increase", type=float, default=0.05)
    args = parser.parse_args()

    work = args.work / f"bench-generative-optimize-{args.shape}"
    hf = work / "hf"
    if not (hf / "config.json").is_file():
        print(f"making the {args.shape} Llama in {hf} ...", file=sys.stderr)
        generative_models.reference("make", hf, {"shape": args.shape})
    text = work / "held-out.txt"
    text.write_text(held_out_text())
    spec = work / "spec.yaml"
    spec.write_text(f"quantize: int4\nvalidate: {{metric: perplexity, maxIncrease: {args.max_increase}}}\n")
    output = work / "output"
    command = [str(Path(sys.executable).with_name("ferry-optimize")), "--model", str(hf)]
    command += ["--format", "huggingface", "--spec", str(spec), "--data", str(text), "--output", str(output)]
    command += ["--threads", str(args.threads)]
    load_before = os.getloadavg()
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    load_after = os.getloadavg()
    if result.returncode != 0:
        print(result.stderr[-4000:], file=sys.stderr)
        return result.returncode
    print(result.stdout)
    report = json.loads((output / "report.json").read_text())
    found = {c["name"]: c["measurement"] for c in report["candidates"] if c["measurement"]}
    fp32 = found["fp32"]
    print(f"command: {' '.join(command)}")
    print(f"model: {args.shape} Llama, {fp32['sizeBytes'] / 2**20:.1f} MiB fp32 decoder")
    print(f"text: {report['data']['tokens']} scored tokens in {report['data']['windows']} windows")
    print(f"optimization wall time: {wall:.1f} s (load averages {load_before[0]:.1f} -> {load_after[0]:.1f})")
    # Where the time went: the optimizer's own progress lines (`[ferry-optimize] <step> done in <s>s`).
    for line in result.stderr.splitlines():
        if line.startswith("[ferry-optimize]") and " done in " in line:
            print(f"  {line.removeprefix('[ferry-optimize] ')}")
    for name, m in found.items():
        speed = m["generation"]
        increase = (m["metric"] - fp32["metric"]) / fp32["metric"]
        print(
            f"{name}: {m['sizeBytes'] / 2**20:.1f} MiB, decode {speed['decodeTokensPerSecond']:.1f} tok/s "
            f"({speed['decodeTokensPerSecond'] / fp32['generation']['decodeTokensPerSecond']:.2f}x fp32), "
            f"prefill {speed['prefillTokensPerSecond']:.1f} tok/s, "
            f"TTFT {speed['timeToFirstTokenMs']:.1f} ms, {speed['batchSequences']} in flight "
            f"{speed['batchTokensPerSecond']:.1f} tok/s "
            f"({speed['batchTokensPerSecond'] / fp32['generation']['batchTokensPerSecond']:.2f}x fp32), "
            f"perplexity {m['metric']:.4f} ({increase:+.4%})"
        )
    print(f"chosen: {report['chosen']} ({report['reason']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
