"""The optimization report: what each step did, every candidate, the gate's verdict; as JSON, a table and
the compact termination message the operator reads (schema in docs/optimizer.md)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

# Kubernetes truncates a termination message at 4096 bytes, ferry_runtime.termination at 4000 characters:
# the summary stays below both, so it is always complete JSON.
TERMINATION_LIMIT = 4000
_REASON_LIMIT = 1200


@dataclass(frozen=True)
class GenerationSpeed:
    """A generative model's speed alone (batch 1) and with `batch_sequences` sequences served together
    (generative_quality.py measures it)."""

    prompt_tokens: int
    decode_tokens: int
    prefill_tokens_per_second: float
    decode_tokens_per_second: float
    time_to_first_token_ms: float
    # The prefill of the prompt plus choosing the first token, as a client waits for it.
    batch_sequences: int
    batch_tokens_per_second: float
    # Generated tokens per second of `batch_sequences` sequences prefilled one after another and decoded
    # in one batch, prefill time included: what continuous batching serves under load.


@dataclass(frozen=True)
class Measurement:
    size_bytes: int
    compressed_bytes: int | None
    # zlib level 6 of the file: what zeroed (pruned) weights save in storage and transfer.
    latency_ms: float | None
    # Median ONNX Runtime latency; None for a model that is not ONNX (the source before conversion).
    load_ms: float | None
    metric: float | None
    generation: GenerationSpeed | None = None
    # A generative model's speeds (its latency_ms is then the decode time per token); None otherwise,
    # and then absent from the JSON.


@dataclass
class Step:
    lineage: str
    # original | pruned | student: the model this step worked on.
    name: str
    # convert | prune | distill | fuse | quantize | graph | export
    detail: str
    before: Measurement | None
    after: Measurement | None
    seconds: float
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass
class Candidate:
    name: str
    lineage: str
    steps: list[str]
    measurement: Measurement | None
    requested: bool
    # True when every requested step was applied; only requested candidates compete (baseline: fallback).
    passed: bool = False
    reason: str = ""


@dataclass(frozen=True)
class Artifact:
    name: str
    # File name in the output directory: model.onnx, model.tflite, model.int8.tflite.
    format: str
    sha256: str
    size_bytes: int
    metric: float | None
    # A generative folder's KV cache per token of one sequence (float32, all layers) and context length:
    # the operator sizes the serving pods' memory from them. None for other models.
    kv_cache_bytes_per_token: int | None = None
    context_length: int | None = None


@dataclass
class Report:
    optimizer_version: str
    key: str
    source: dict[str, Any]
    spec: dict[str, Any]
    data: dict[str, Any]
    metric: dict[str, Any]
    measurement: dict[str, Any]
    steps: list[Step] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    chosen: str | None = None
    passed: bool = False
    reason: str = ""
    artifacts: list[Artifact] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    output_uri: str = ""

    def to_json(self) -> dict[str, Any]:
        result: dict[str, Any] = _camel(_drop_absent_generation(asdict(self)))
        return result

    @property
    def generative(self) -> bool:
        return any(c.measurement is not None and c.measurement.generation for c in self.candidates)

    def scalars(self) -> dict[str, float]:
        """The report's figures as TensorBoard scalars (tensorboard/report, beside training curves)."""
        metric = self.metric["name"]
        scalars: dict[str, float] = {}
        for candidate in self.candidates:
            m = candidate.measurement
            if m is None:
                continue
            prefix = f"candidates/{candidate.name}"
            scalars[f"{prefix}/size_bytes"] = float(m.size_bytes)
            scalars[f"{prefix}/{metric}"] = float(m.metric or 0.0)
            scalars[f"{prefix}/passed"] = float(candidate.passed)
            if m.latency_ms is not None:
                scalars[f"{prefix}/latency_ms"] = m.latency_ms
            if m.compressed_bytes is not None:
                scalars[f"{prefix}/compressed_bytes"] = float(m.compressed_bytes)
            if m.generation is not None:
                scalars[f"{prefix}/prefill_tokens_per_second"] = m.generation.prefill_tokens_per_second
                scalars[f"{prefix}/decode_tokens_per_second"] = m.generation.decode_tokens_per_second
                scalars[f"{prefix}/time_to_first_token_ms"] = m.generation.time_to_first_token_ms
                scalars[f"{prefix}/batch_tokens_per_second"] = m.generation.batch_tokens_per_second
        for index, step in enumerate(self.steps):
            if step.after is not None and step.after.latency_ms is not None:
                scalars[f"steps/{index:02d}-{step.lineage}-{step.name}/latency_ms"] = step.after.latency_ms
                scalars[f"steps/{index:02d}-{step.lineage}-{step.name}/size_bytes"] = float(
                    step.after.size_bytes
                )
        return scalars

    def termination_message(self) -> str:
        """The compact summary for the termination log (the contract in docs/optimizer.md), < 4 KiB."""
        # A generative model's artifact is the output's model/ folder (its URI ends in "/").
        onnx = next((a for a in self.artifacts if a.format in ("onnx", "onnx-genai")), None)
        chosen = next((c for c in self.candidates if c.name == self.chosen), None)
        summary: dict[str, Any] = {
            "passed": self.passed,
            "chosen": self.chosen,
            "reason": _clip(self.reason, _REASON_LIMIT),
            "key": self.key,
            "artifact": None
            if onnx is None
            else {
                "uri": f"{self.output_uri.rstrip('/')}/{onnx.name}",
                "sha256": onnx.sha256,
                "sizeBytes": onnx.size_bytes,
                **(
                    {}
                    if onnx.kv_cache_bytes_per_token is None or onnx.context_length is None
                    else {
                        "kvCacheBytesPerToken": onnx.kv_cache_bytes_per_token,
                        "contextLength": onnx.context_length,
                    }
                ),
            },
            "metric": None
            if chosen is None or chosen.measurement is None or chosen.measurement.metric is None
            else {
                "name": self.metric["name"],
                "baseline": self.metric["baseline"],
                "value": chosen.measurement.metric,
            },
            "candidates": [_brief(c) for c in self.candidates],
        }
        text = json.dumps(summary, separators=(",", ":"))
        while len(text.encode()) >= TERMINATION_LIMIT and summary["candidates"]:
            summary["candidates"].pop()
            text = json.dumps(summary, separators=(",", ":"))
        return text

    def table(self) -> str:
        metric = self.metric["name"]
        rows = [["lineage", "step", "size", "latency ms", metric, "notes"]]
        for step in self.steps:
            rows.append(
                [
                    step.lineage,
                    f"{step.name} {step.detail}".strip(),
                    _change(step.before, step.after, "size_bytes", _size),
                    _change(step.before, step.after, "latency_ms", _ms),
                    _change(step.before, step.after, "metric", _metric),
                    step.error or "; ".join(step.notes[:1]),
                ]
            )
        lines = ["Steps (before -> after)", *_format(rows), ""]
        rows = [["candidate", "size", "compressed", "latency ms", metric, "gate", "reason"]]
        if self.generative:
            rows = [
                [
                    "candidate",
                    "size",
                    "prefill tok/s",
                    "decode tok/s",
                    "TTFT ms",
                    "batch tok/s",
                    metric,
                    "gate",
                    "reason",
                ]
            ]
        for candidate in self.candidates:
            m = candidate.measurement
            if self.generative:
                rows.append(_generative_row(candidate, candidate.name == self.chosen))
                continue
            rows.append(
                [
                    ("* " if candidate.name == self.chosen else "  ") + candidate.name,
                    _size(m.size_bytes) if m else "-",
                    _size(m.compressed_bytes) if m and m.compressed_bytes is not None else "-",
                    _ms(m.latency_ms) if m else "-",
                    _metric(m.metric) if m else "-",
                    "pass" if candidate.passed else "REJECT",
                    candidate.reason,
                ]
            )
        lines += ["Candidates (* = chosen)", *_format(rows), ""]
        verdict = "PASSED" if self.passed else "NOT PASSED"
        lines.append(f"{verdict}: chosen={self.chosen or 'none'}; {self.reason}")
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def _generative_row(candidate: Candidate, chosen: bool) -> list[str]:
    m = candidate.measurement
    speed = m.generation if m else None
    return [
        ("* " if chosen else "  ") + candidate.name,
        _size(m.size_bytes) if m else "-",
        f"{speed.prefill_tokens_per_second:.1f}" if speed else "-",
        f"{speed.decode_tokens_per_second:.1f}" if speed else "-",
        f"{speed.time_to_first_token_ms:.1f}" if speed else "-",
        f"{speed.batch_tokens_per_second:.1f}" if speed else "-",
        _metric(m.metric) if m else "-",
        "pass" if candidate.passed else "REJECT",
        candidate.reason,
    ]


def _drop_absent_generation(value: Any) -> Any:
    """Measurements of tensor models keep their documented keys: no `generation: null`."""
    if isinstance(value, dict):
        return {
            k: _drop_absent_generation(v) for k, v in value.items() if not (k == "generation" and v is None)
        }
    if isinstance(value, list):
        return [_drop_absent_generation(v) for v in value]
    return value


def _brief(candidate: Candidate) -> dict[str, Any]:
    m = candidate.measurement
    return {
        "name": candidate.name,
        "passed": candidate.passed,
        "sizeBytes": m.size_bytes if m else 0,
        "latencyMs": round(m.latency_ms, 4) if m and m.latency_ms is not None else 0.0,
        "metric": round(m.metric, 6) if m and m.metric is not None else 0.0,
    }


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _camel(value: Any) -> Any:
    if isinstance(value, dict):
        return {_camel_key(str(k)): _camel(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_camel(v) for v in value]
    return value


def _camel_key(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _size(value: int | None) -> str:
    if value is None:
        return "-"
    for unit in ("B", "KiB", "MiB"):
        if value < 1024 or unit == "MiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value = value / 1024  # type: ignore[assignment]
    return str(value)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _metric(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _change(before: Measurement | None, after: Measurement | None, attribute: str, show: Any) -> str:
    old = getattr(before, attribute) if before else None
    new = getattr(after, attribute) if after else None
    return f"{show(old)} -> {show(new)}"


def _format(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return lines
