"""The `optimize` spec: parsed, validated and defaulted without any third-party library.

The same shape as `spec.optimize` of a ModelDeployment (camelCase keys), with the same defaults as the
operator's API models (tests/optimizer/test_spec.py checks the two agree), so a spec typed into a file for the
local CLI and one defaulted by the API server normalize to the same dictionary, and so to the same content
key. This module and key.py import only the standard library: the operator may copy them verbatim.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from ferry_optimizer.errors import InputError

GraphLevel = Literal["disabled", "basic", "extended", "all"]
# dynamic/static/fp16 quantize a tensor model's ONNX graph; int4/int8 are weight-only quantization of a
# generative model by onnxruntime-genai's model builder (generative.py).
Quantization = Literal["none", "dynamic", "static", "fp16", "int4", "int8"]
PruneMethod = Literal["magnitude", "structured"]
Schedule = Literal["constant", "cosine", "exponential"]
ExportFormat = Literal["onnx", "tflite", "tflite-int8"]
# perplexity and agreement score generative models (generative_quality.py), the others tensor models.
MetricName = Literal["accuracy", "cosine", "maxAbsError", "perplexity", "agreement"]

GRAPH_LEVELS: tuple[GraphLevel, ...] = ("disabled", "basic", "extended", "all")
QUANTIZATIONS: tuple[Quantization, ...] = ("none", "dynamic", "static", "fp16", "int4", "int8")
WEIGHT_ONLY: tuple[Quantization, ...] = ("int4", "int8")
PRUNE_METHODS: tuple[PruneMethod, ...] = ("magnitude", "structured")
SCHEDULES: tuple[Schedule, ...] = ("constant", "cosine", "exponential")
EXPORT_FORMATS: tuple[ExportFormat, ...] = ("onnx", "tflite", "tflite-int8")
METRICS: tuple[MetricName, ...] = ("accuracy", "cosine", "maxAbsError", "perplexity", "agreement")
# The MatMulNBits block sizes and accuracy levels onnxruntime-genai's builder accepts.
BLOCK_SIZES = (16, 32, 64, 128, 256)


@dataclass(frozen=True)
class PruneSpec:
    sparsity: float
    # Fraction of weights (magnitude) or of hidden units/filters (structured) removed.
    method: PruneMethod = "magnitude"
    epochs: int = 1
    # Fine-tuning epochs after pruning; only used when data is given, 0 disables fine-tuning.


@dataclass(frozen=True)
class StudentSpec:
    width_factor: float = 0.5
    # Units/filters of each student layer as a fraction of the teacher's.
    depth: int | None = None
    # Hidden Dense/Conv layers kept in the student; None keeps the teacher's depth.


@dataclass(frozen=True)
class DistillSpec:
    student: StudentSpec = field(default_factory=StudentSpec)
    epochs: int = 3
    temperature: float = 2.0
    # Softens the teacher's and the student's softmax so the student learns the teacher's uncertainty.


@dataclass(frozen=True)
class TrainingSpec:
    learning_rate: float = 0.001
    schedule: Schedule = "cosine"
    l2: float = 0.0
    batch_size: int = 32


@dataclass(frozen=True)
class DataSpec:
    uri: str
    samples: int = 512
    # At most this many samples are read (the first ones in the file).


@dataclass(frozen=True)
class WeightOnlySpec:
    """How int4/int8 weight-only quantization is done (MatMulNBits, onnxruntime-genai's model builder)."""

    block_size: int = 32
    # Weights per quantization scale: smaller blocks are more accurate and slightly larger.
    accuracy_level: int = 4
    # The precision MatMulNBits computes in: 1 fp32, 2 fp16, 3 bf16, 4 int8 activations (fastest on CPU).


@dataclass(frozen=True)
class ValidateSpec:
    metric: MetricName = "accuracy"
    max_drop: float | None = 0.01
    # Accuracy/cosine/agreement: largest accepted loss below the baseline (0-1); maxAbsError: largest
    # accepted error. None for perplexity, which is gated by max_increase.
    max_increase: float | None = None
    # Perplexity only: largest accepted relative increase over the baseline's (0.05 = 5% higher).

    @property
    def budget(self) -> float:
        """The accepted change: maxIncrease for perplexity, maxDrop otherwise (parse sets exactly one)."""
        value = self.max_increase if self.metric == "perplexity" else self.max_drop
        assert value is not None
        return value


@dataclass(frozen=True)
class OptimizeSpec:
    graph: GraphLevel = "extended"
    quantize: Quantization = "none"
    weight_only: WeightOnlySpec | None = None
    # Set (defaults filled in) exactly when quantize is int4 or int8, so one spec has one content key.
    prune: PruneSpec | None = None
    distill: DistillSpec | None = None
    training: TrainingSpec = field(default_factory=TrainingSpec)
    export: tuple[ExportFormat, ...] = ("onnx",)
    data: DataSpec | None = None
    validate: ValidateSpec | None = None
    # None: no gate, every candidate that converts is accepted (the operator's API says the same).

    def to_dict(self) -> dict[str, Any]:
        """The normalized camelCase form: every default filled in, absent optional blocks omitted."""
        result: dict[str, Any] = _camel(dataclasses.asdict(self))
        return result

    def with_data_uri(self, uri: str) -> OptimizeSpec:
        """The spec with data read from `uri` (the CLI's --data overrides optimize.data.uri)."""
        samples = self.data.samples if self.data is not None else DataSpec(uri).samples
        return dataclasses.replace(self, data=DataSpec(uri=uri, samples=samples))


def _camel(value: Any) -> Any:
    if isinstance(value, dict):
        return {_camel_key(k): _camel(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_camel(v) for v in value]
    return value


def _camel_key(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


class _Fields:
    """Reads one mapping of the spec, naming each field by its full path in errors."""

    def __init__(self, raw: object, path: str, known: tuple[str, ...]) -> None:
        if not isinstance(raw, Mapping):
            raise InputError(path or "spec", "a mapping", raw)
        unknown = sorted(str(k) for k in raw if k not in known)
        if unknown:
            raise InputError(
                f"{path}.{unknown[0]}" if path else unknown[0], f"one of {list(known)}", "unknown"
            )
        self.raw: Mapping[str, object] = raw
        self.path = path

    def name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        return self.raw.get(key) is not None

    def choice(self, key: str, allowed: tuple[str, ...], default: str) -> str:
        value = self.raw.get(key, default)
        if value is None:
            return default
        if value not in allowed:
            raise InputError(self.name(key), f"one of {list(allowed)}", value)
        return str(value)

    def number(
        self, key: str, default: float | None, low: float, high: float, *, open_low: bool = False
    ) -> float:
        value = self.raw.get(key, default)
        if value is None:
            raise InputError(self.name(key), f"a number from {low} to {high}", "missing")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InputError(self.name(key), f"a number from {low} to {high}", value)
        too_low = value <= low if open_low else value < low
        if too_low or value > high:
            bound = f"greater than {low}" if open_low else f"from {low}"
            raise InputError(self.name(key), f"a number {bound} to {high}", value)
        return float(value)

    def integer(self, key: str, default: int | None, low: int, high: int) -> int | None:
        value = self.raw.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(self.name(key), f"an integer from {low} to {high}", value)
        if not low <= value <= high:
            raise InputError(self.name(key), f"an integer from {low} to {high}", value)
        return value


def parse(raw: object) -> OptimizeSpec:
    """Validate and default one `optimize` mapping; raises InputError naming the first bad field."""
    top = _Fields(
        raw,
        "",
        ("graph", "quantize", "weightOnly", "prune", "distill", "training", "export", "data", "validate"),
    )
    data = _data(top.raw["data"], top.name("data")) if top.has("data") else None
    quantize = cast(Quantization, top.choice("quantize", QUANTIZATIONS, "none"))
    if top.has("weightOnly") and quantize not in WEIGHT_ONLY:
        raise InputError(
            top.name("weightOnly"), f"only with quantize {' or '.join(WEIGHT_ONLY)}", f"quantize {quantize}"
        )
    weight_only = (
        _weight_only(top.raw.get("weightOnly") or {}, top.name("weightOnly"))
        if quantize in WEIGHT_ONLY
        else None
    )
    return OptimizeSpec(
        graph=cast(GraphLevel, top.choice("graph", GRAPH_LEVELS, "extended")),
        quantize=quantize,
        weight_only=weight_only,
        prune=_prune(top.raw["prune"], top.name("prune")) if top.has("prune") else None,
        distill=_distill(top.raw["distill"], top.name("distill")) if top.has("distill") else None,
        training=_training(top.raw.get("training") or {}, top.name("training")),
        export=_export(top.raw.get("export"), top.name("export")),
        data=data,
        validate=_validate(top.raw["validate"], top.name("validate")) if top.has("validate") else None,
    )


def check_needs_data(spec: OptimizeSpec) -> None:
    """The cross-field rules of the operator's API: the steps that learn from samples need optimize.data."""
    if spec.data is not None:
        return
    if spec.quantize == "static":
        raise InputError(
            "quantize", "optimize.data (or --data) with calibration samples for static", "no data"
        )
    if spec.distill is not None:
        raise InputError("distill", "optimize.data (or --data) with samples to train the student", "no data")
    if "tflite-int8" in spec.export:
        raise InputError(
            "export", "optimize.data (or --data) with representative samples for tflite-int8", "no data"
        )


def load(path: Path) -> OptimizeSpec:
    """Read a spec file (JSON or YAML; an `optimize:` wrapper key is accepted) and parse it."""
    try:
        text = path.read_text()
    except OSError as error:
        raise InputError("--spec", "a readable JSON or YAML file", f"{path} ({error.strerror})") from error
    raw: object
    if path.suffix == ".json":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as error:
            raise InputError("--spec", "valid JSON", f"{path}: {error}") from error
    else:
        import yaml  # a core dependency of every Ferry install; imported here so key users need none

        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise InputError("--spec", "valid YAML or JSON", f"{path}: {error}") from error
    if raw is None:
        raw = {}
    if isinstance(raw, Mapping) and set(raw) == {"optimize"}:
        raw = raw["optimize"] or {}
    return parse(raw)


def _prune(raw: object, path: str) -> PruneSpec:
    fields = _Fields(raw, path, ("sparsity", "method", "epochs"))
    return PruneSpec(
        sparsity=fields.number("sparsity", None, 0.0, 0.95),
        method=cast(PruneMethod, fields.choice("method", PRUNE_METHODS, "magnitude")),
        epochs=cast(int, fields.integer("epochs", 1, 0, 1000)),
    )


def _distill(raw: object, path: str) -> DistillSpec:
    fields = _Fields(raw, path, ("student", "epochs", "temperature"))
    student = _Fields(fields.raw.get("student") or {}, fields.name("student"), ("widthFactor", "depth"))
    return DistillSpec(
        student=StudentSpec(
            width_factor=student.number("widthFactor", 0.5, 0.1, 1.0),
            depth=student.integer("depth", None, 1, 1000),
        ),
        epochs=cast(int, fields.integer("epochs", 3, 1, 1000)),
        temperature=fields.number("temperature", 2.0, 0.0, 100.0, open_low=True),
    )


def _training(raw: object, path: str) -> TrainingSpec:
    fields = _Fields(raw, path, ("learningRate", "schedule", "l2", "batchSize"))
    return TrainingSpec(
        learning_rate=fields.number("learningRate", 0.001, 0.0, 1.0, open_low=True),
        schedule=cast(Schedule, fields.choice("schedule", SCHEDULES, "cosine")),
        l2=fields.number("l2", 0.0, 0.0, 1.0),
        batch_size=cast(int, fields.integer("batchSize", 32, 1, 65536)),
    )


def _export(raw: object, path: str) -> tuple[ExportFormat, ...]:
    if raw is None:
        return ("onnx",)
    if not isinstance(raw, list) or not raw:
        raise InputError(path, f"a non-empty list of {list(EXPORT_FORMATS)}", raw)
    for item in raw:
        if item not in EXPORT_FORMATS:
            raise InputError(path, f"items from {list(EXPORT_FORMATS)}", item)
    if "onnx" not in raw:
        raise InputError(path, "a list that includes onnx (the served artifact)", raw)
    # A set in the API (x-kubernetes-list-type: set): normalized to the canonical order.
    return tuple(f for f in EXPORT_FORMATS if f in raw)


def _weight_only(raw: object, path: str) -> WeightOnlySpec:
    fields = _Fields(raw, path, ("blockSize", "accuracyLevel"))
    block_size = cast(int, fields.integer("blockSize", 32, 16, 256))
    if block_size not in BLOCK_SIZES:
        raise InputError(fields.name("blockSize"), f"one of {list(BLOCK_SIZES)}", block_size)
    return WeightOnlySpec(
        block_size=block_size, accuracy_level=cast(int, fields.integer("accuracyLevel", 4, 1, 4))
    )


def _data(raw: object, path: str) -> DataSpec:
    fields = _Fields(raw, path, ("uri", "samples"))
    uri = fields.raw.get("uri")
    if not isinstance(uri, str) or not uri:
        raise InputError(
            fields.name("uri"), "a URI of an .npz file (a text or JSONL file for a generative model)", uri
        )
    return DataSpec(uri=uri, samples=cast(int, fields.integer("samples", 512, 1, 10_000_000)))


def _validate(raw: object, path: str) -> ValidateSpec:
    fields = _Fields(raw, path, ("metric", "maxDrop", "maxIncrease"))
    metric = cast(MetricName, fields.choice("metric", METRICS, "accuracy"))
    if metric == "perplexity":
        if fields.has("maxDrop"):
            raise InputError(
                fields.name("maxDrop"), "maxIncrease for perplexity (lower is better)", fields.raw["maxDrop"]
            )
        # Greater than 0: a zero budget would reject every quantized model on rounding alone.
        increase = fields.number("maxIncrease", 0.05, 0.0, 10.0, open_low=True)
        return ValidateSpec(metric=metric, max_drop=None, max_increase=increase)
    if fields.has("maxIncrease"):
        raise InputError(fields.name("maxIncrease"), f"maxDrop for {metric}", fields.raw["maxIncrease"])
    high = float("inf") if metric == "maxAbsError" else 1.0
    return ValidateSpec(metric=metric, max_drop=fields.number("maxDrop", 0.01, 0.0, high))
