"""What every candidate of a tensor model is scored against, fixed once the baseline exists.

The data (the user's samples, or generated ones), its split into training and validation samples, the
metric, the baseline's outputs on the validation samples, and the feeds latency is timed on are all
decided in the constructor: nothing here changes while the pipeline runs, except the cache of
measurements (a model file is measured once).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ferry_optimizer import data, onnxtools, quality
from ferry_optimizer.errors import InputError
from ferry_optimizer.report import Measurement
from ferry_optimizer.spec import MetricName, OptimizeSpec

if TYPE_CHECKING:
    from ferry_optimizer.context import Settings

# Fraction of the data kept for validation when a step learns from data (fine-tuning, calibration).
HOLDOUT = 0.25


class Evaluation:
    def __init__(
        self, baseline: Path, spec: OptimizeSpec, data_file: Path | None, settings: Settings
    ) -> None:
        self.spec = spec
        self.settings = settings
        session = onnxtools.session(baseline, threads=settings.threads)
        self.inputs = onnxtools.inputs_of(session)
        self.output_names = [info.name for info in onnxtools.outputs_of(session)]
        if data_file is None:
            self.dataset = data.synthetic(self.inputs)
        else:
            samples = spec.data.samples if spec.data is not None else 512
            self.dataset = data.load(data_file, self.inputs, samples, "data")
        # Steps that learn from the data see only the training part; the gate scores the rest.
        if self.dataset.source == "file" and learns_from_data(spec):
            self.train, self.validation = data.split(self.dataset, HOLDOUT)
        else:
            self.train = self.validation = self.dataset
        self.metric_name: MetricName = metric_name(spec, self.dataset)
        outputs = onnxtools.run_all(session, self.validation.inputs)
        self.reference = quality.Reference(quality.floating(outputs), self.validation.labels)
        self.latency_feeds = _latency_feeds(self.validation, settings.latency_batch)
        self._measured: dict[Path, Measurement] = {}

    def score(self, outputs: list[np.ndarray]) -> float:
        """The metric of a model's outputs on the validation samples."""
        return quality.score(self.metric_name, outputs, self.reference)

    def measure(self, path: Path) -> Measurement:
        if path not in self._measured:
            settings = self.settings
            session = onnxtools.session(path, threads=settings.threads)
            metric = self.score(onnxtools.run_all(session, self.validation.inputs))
            timing = onnxtools.measure_latency(
                path, self.latency_feeds, settings.threads, settings.runs, settings.warmup
            )
            self._measured[path] = Measurement(
                size_bytes=onnxtools.size_bytes(path),
                compressed_bytes=onnxtools.compressed_bytes(path),
                latency_ms=timing.latency_ms,
                load_ms=timing.load_ms,
                metric=metric,
            )
        return self._measured[path]

    def summary(self) -> dict[str, Any]:
        """The report's `data` block."""
        return {
            "uri": self.spec.data.uri if self.spec.data else None,
            "source": self.dataset.source,
            "samples": len(self.dataset),
            "labels": self.dataset.labels is not None,
            "trainingSamples": len(self.train) if self.train is not self.validation else 0,
            "validationSamples": len(self.validation),
        }


def learns_from_data(spec: OptimizeSpec) -> bool:
    return (
        (spec.prune is not None and spec.prune.epochs > 0)
        or spec.distill is not None
        or spec.quantize == "static"
        or "tflite-int8" in spec.export
    )


def metric_name(spec: OptimizeSpec, dataset: data.Dataset) -> MetricName:
    if spec.validate is not None:
        if spec.validate.metric == "accuracy" and dataset.labels is None:
            raise InputError(
                "validate.metric", "cosine or maxAbsError when the data has no labels `y`", "accuracy"
            )
        return spec.validate.metric
    return "accuracy" if dataset.labels is not None else "cosine"


def _latency_feeds(validation: data.Dataset, size: int) -> dict[str, np.ndarray]:
    """`size` validation samples (repeated when there are fewer) per input."""
    feeds = {}
    for name, array in validation.inputs.items():
        repeats = -(-size // len(array))
        feeds[name] = np.concatenate([array] * repeats)[:size]
    return feeds
