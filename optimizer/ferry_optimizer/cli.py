"""`ferry-optimize`: optimize a model, print the report as a table, write the artifacts and the summary.

Exit status: 0 when the run completed (whether or not a candidate passed the gate: the verdict is in the
report and the termination message), 2 for bad input (a flag, the spec, the model or data file), 1 when
a step failed unexpectedly. The termination message is written in every case.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import traceback
from collections.abc import Sequence
from pathlib import Path

from ferry_optimizer import __version__, generative, locations, spec
from ferry_optimizer.context import Request, Settings
from ferry_optimizer.errors import InputError, OptimizerError
from ferry_optimizer.pipeline import FORMATS, Pipeline
from ferry_runtime import termination

DEFAULT_TERMINATION_LOG = termination.TERMINATION_LOG
EXIT_INPUT = 2
EXIT_FAILURE = 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ferry-optimize",
        description="Convert, optimize, quantize, prune and distill a model (or build and quantize a "
        "generative one); gate it on quality; write the chosen one.",
    )
    p.add_argument("--model", required=True, help="model URI: a path, file://, pvc://, s3:// or http(s)://")
    p.add_argument(
        "--format",
        required=True,
        choices=(*FORMATS, *generative.FORMATS),
        help="the model's format (huggingface and onnx-genai: a generative model's folder)",
    )
    p.add_argument(
        "--model-sha256",
        help="the model's expected digest (a file's SHA-256, or a directory's manifest digest as ferry-fetch "
        "computes it): a model with another digest is refused, so a content key made from it is honest",
    )
    p.add_argument("--spec", required=True, type=Path, help="the optimize spec, a JSON or YAML file")
    p.add_argument(
        "--data", help="data URI (.npz; text or JSONL for a generative model); overrides optimize.data.uri"
    )
    p.add_argument("--output", required=True, help="output directory URI: a path, file://, pvc:// or s3://")
    p.add_argument(
        "--termination-log",
        type=Path,
        help=f"where the JSON summary goes (default {DEFAULT_TERMINATION_LOG} when it is writable)",
    )
    p.add_argument(
        "--key",
        help="content key recorded in the report (the operator passes the one it named the Job after)",
    )
    p.add_argument(
        "--threads", type=int, default=1, help="ONNX Runtime threads for latency measurement (default 1)"
    )
    p.add_argument(
        "--runs", type=int, default=50, help="timed runs per latency measurement; the median is reported"
    )
    p.add_argument("--warmup", type=int, default=5, help="untimed runs before timing")
    p.add_argument("--latency-batch", type=int, default=1, help="samples per timed inference (default 1)")
    p.add_argument("--version", action="version", version=f"ferry-optimize {__version__}")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # The default only inside a pod, where the kubelet created the file: never create /dev/termination-log.
    log = args.termination_log or (
        DEFAULT_TERMINATION_LOG if os.access(DEFAULT_TERMINATION_LOG, os.W_OK) else None
    )
    with tempfile.TemporaryDirectory(prefix="ferry-optimize-") as scratch:
        try:
            request = _request(args, Path(scratch))
            work = Path(scratch) / "work"
            work.mkdir()
            if request.format in generative.FORMATS:
                report = generative.optimize(request, work)
            else:
                report = Pipeline(request, work).run()
            (request.output / "report.json").write_text(json.dumps(report.to_json(), indent=2) + "\n")
            locations.publish(request.output, args.output)
        except InputError as error:
            return _fail(log, args.key, f"bad input: {error.message}", EXIT_INPUT)
        except OptimizerError as error:
            return _fail(log, args.key, f"optimization failed: {error.message}", EXIT_FAILURE)
        except Exception as error:  # a bug or an unexpected library failure: still tell the operator why
            traceback.print_exc()
            reason = f"optimization failed: {type(error).__name__}: {error}"
            return _fail(log, args.key, reason, EXIT_FAILURE)
    print(report.table())
    if log is not None:
        termination.write_termination_message(report.termination_message(), log)
    return 0


def _request(args: argparse.Namespace, scratch: Path) -> Request:
    optimize = spec.load(args.spec)
    if args.data:
        optimize = optimize.with_data_uri(args.data)
    spec.check_needs_data(optimize)
    model = locations.fetch(args.model, scratch / "fetched", "--model")
    expected = (args.model_sha256 or "").strip().lower()
    if expected and model.sha256 != expected:
        # The operator's content key stands for `expected`: optimizing other bytes under it would serve a
        # model no one asked for, and stay cached for the key.
        raise InputError(
            "--model",
            f"the model whose digest is {expected} (spec.model.sha256)",
            f"{args.model} with digest {model.sha256}",
        )
    data = locations.fetch(optimize.data.uri, scratch / "fetched", "--data").path if optimize.data else None
    return Request(
        model=model.path,
        model_sha256=model.sha256,
        model_uri=args.model,
        format=args.format,
        spec=optimize,
        data=data,
        output=locations.output_dir(args.output, scratch),
        output_uri=args.output,
        key=args.key,
        settings=Settings(
            threads=args.threads, runs=args.runs, warmup=args.warmup, latency_batch=args.latency_batch
        ),
    )


def _fail(log: Path | None, key: str | None, reason: str, code: int) -> int:
    print(f"ferry-optimize: {reason}", file=sys.stderr)
    if log is not None:
        summary: dict[str, object] = {
            "passed": False,
            "chosen": None,
            "reason": reason[:1500],
            "key": key or "",
            "artifact": None,
            "metric": None,
            "candidates": [],
        }
        termination.write_termination_message(json.dumps(summary, separators=(",", ":")), log)
    return code


if __name__ == "__main__":
    sys.exit(main())
