"""The optimization pipeline: convert, then build one candidate per lineage, measure, gate and choose.

Lineages are alternative models derived from the source: `original` (the source itself), `pruned`
(spec.prune) and `student` (spec.distill). Each is converted to ONNX and then goes through the requested
ONNX steps in this order: for a transformer encoder at graph level extended or all, ONNX Runtime's
transformer fusions (so quantization sees fused attention and fewer float ops remain around the INT8
MatMuls); quantize; then the offline graph optimization. The final model of each lineage is a requested
candidate; `baseline`, the converted and otherwise untouched source, is the gate's reference and the
fallback.

Each concept has its home: the run's inputs and shared types in context.py, conversion in conversion.py,
the Keras-derived lineages in keras_lineages.py, the ONNX steps in onnx_steps.py, measuring and scoring
in evaluation.py, the gate and the choice among candidates in selection.py, the artifacts in exports.py.
This module only orders them.
"""

from __future__ import annotations

import time
from pathlib import Path

from ferry_optimizer import (
    __version__,
    conversion,
    evaluation,
    exports,
    locations,
    onnxtools,
    quality,
    selection,
)
from ferry_optimizer.context import Lineage, Progress, Request, StepContext
from ferry_optimizer.errors import InputError
from ferry_optimizer.keras_lineages import KerasLineages
from ferry_optimizer.key import content_key
from ferry_optimizer.onnx_steps import ALL_LEVEL_NOTE, FP16_NOTE, OnnxSteps
from ferry_optimizer.report import Candidate, Report
from ferry_optimizer.spec import WEIGHT_ONLY, MetricName

FORMATS = ("onnx", "tensorflow", "keras", "tflite")


def check_request(request: Request) -> None:
    """Refuse combinations no step can carry out, before any work is done."""
    spec, fmt = request.spec, request.format
    if fmt not in FORMATS:
        raise InputError("--format", f"one of {list(FORMATS)}", fmt)
    if spec.quantize in WEIGHT_ONLY:
        raise InputError(
            "quantize", "none, dynamic, static or fp16 (int4/int8 are for generative models)", spec.quantize
        )
    if spec.validate is not None and spec.validate.metric in ("perplexity", "agreement"):
        raise InputError(
            "validate.metric", "accuracy, cosine or maxAbsError for a tensor model", spec.validate.metric
        )
    if spec.prune is not None and fmt != "keras":
        raise InputError("prune", "a model in format keras (pruning edits Keras layers)", f"format {fmt}")
    if spec.distill is not None and fmt != "keras":
        raise InputError(
            "distill", "a model in format keras (the student is derived from its layers)", f"format {fmt}"
        )
    tflite = [f for f in spec.export if f != "onnx"]
    if tflite and fmt == "onnx":
        raise InputError(
            "export",
            "only onnx for an ONNX model (Ferry does not convert ONNX to TensorFlow)",
            list(spec.export),
        )
    if "tflite-int8" in tflite and fmt == "tflite":
        raise InputError(
            "export", "onnx or tflite for a TFLite model (it cannot be re-quantized)", list(spec.export)
        )
    if request.settings.threads < 1 or request.settings.runs < 1 or request.settings.latency_batch < 1:
        raise InputError("--threads/--runs/--latency-batch", "integers of at least 1", request.settings)


class Pipeline:
    """One tensor-model optimization run: orders the steps and assembles the report."""

    def __init__(self, request: Request, work: Path) -> None:
        check_request(request)
        self.request = request
        self.spec = request.spec
        self.work = work
        self.progress = Progress(total=self._planned_steps())

    def _planned_steps(self) -> int:
        lineages = 1 + (self.spec.prune is not None) + (self.spec.distill is not None)
        # A transformer's fusion step is added to the bar's total when it is found.
        per_lineage = (self.spec.quantize != "none") + (self.spec.graph != "disabled")
        return 2 + lineages + lineages * per_lineage + len(self.spec.export)

    def run(self) -> Report:
        try:
            return self._run()
        finally:
            self.progress.close()

    def _run(self) -> Report:
        request, spec = self.request, self.spec
        with self.progress.step("digest source"):
            digest = request.model_sha256 or locations.digest(request.model)
            key = request.key or content_key(digest, spec, __version__)
        baseline_path = self.work / "baseline.onnx"
        convert_started = time.perf_counter()
        with self.progress.step(f"convert {request.format} to ONNX"):
            keras_model = conversion.convert(request, baseline_path)
        convert_seconds = time.perf_counter() - convert_started
        # Everything after conversion measures against the baseline: the steps get it in their context.
        evaluated = evaluation.Evaluation(baseline_path, spec, request.data, request.settings)
        context = StepContext(request, self.work, self.progress, evaluated)
        metric_name: MetricName = evaluated.metric_name
        baseline = evaluated.measure(baseline_path)
        report = Report(
            optimizer_version=__version__,
            key=key,
            source={
                "uri": request.model_uri,
                "format": request.format,
                "sha256": digest,
                "sizeBytes": onnxtools.size_bytes(request.model),
            },
            spec=spec.to_dict(),
            data=evaluated.summary(),
            metric={
                "name": metric_name,
                "higherIsBetter": quality.HIGHER_IS_BETTER[metric_name],
                "baseline": baseline.metric,
                "maxDrop": spec.validate.max_drop if spec.validate else None,
                "gate": spec.validate is not None,
            },
            measurement={
                "threads": request.settings.threads,
                "batch": request.settings.latency_batch,
                "runs": request.settings.runs,
                "warmup": request.settings.warmup,
                "statistic": "median",
                "sessionGraphLevel": "all",
                "provider": "CPUExecutionProvider",
                "onnxruntime": onnxtools.onnxruntime_version(),
                "cpu": onnxtools.cpu_name(),
            },
            output_uri=request.output_uri,
        )
        if request.format != "onnx":
            report.steps.append(
                conversion.convert_step(request, evaluated, baseline, convert_seconds, keras_model)
            )
        else:
            report.notes.append("source is ONNX: passed through without conversion")
        if evaluated.dataset.source == "synthetic":
            report.notes.append(
                "no data given: quality is output agreement on generated inputs "
                "(normal floats, ones for integers), "
                "a weak check; give optimize.data for a real one"
            )
        lineages = [
            Lineage("original", baseline_path, keras_model, ["convert"] if request.format != "onnx" else [])
        ]
        derived = KerasLineages(context)
        if spec.prune is not None and keras_model is not None:
            lineages.append(derived.prune(keras_model, baseline, report))
        if spec.distill is not None and keras_model is not None:
            lineages.append(derived.distill(keras_model, baseline, report))
        # The baseline is the requested model only when nothing but conversion was asked for.
        conversion_only = spec.quantize == "none" and spec.graph == "disabled" and len(lineages) == 1
        report.candidates = [
            Candidate(
                "baseline",
                "original",
                list(lineages[0].steps),
                baseline,
                requested=conversion_only,
                passed=True,
                reason="reference",
            )
        ]
        onnx_steps = OnnxSteps(context)
        for lineage in lineages:
            candidate = onnx_steps.finish(lineage, report)
            if candidate is not None:
                report.candidates.append(candidate)
        selection.gate(report.candidates, metric_name, baseline.metric or 0.0, spec.validate)
        report.chosen, report.passed, report.reason = selection.choose(
            report.candidates, metric_name, gated=spec.validate is not None
        )
        exporter = exports.Exporter(request, self.work, evaluated, self.progress)
        exporter.write(report, {lineage.name: lineage for lineage in lineages}, baseline_path)
        exporter.write_reference(report)
        if spec.quantize == "fp16":
            report.notes.append(FP16_NOTE)
        if spec.graph == "all":
            report.notes.append(ALL_LEVEL_NOTE)
        self._report_scalars(report)
        return report

    def _report_scalars(self, report: Report) -> None:
        from ferry_optimizer import training

        training.write_scalars(self.request.output / "tensorboard" / "report", report.scalars())
