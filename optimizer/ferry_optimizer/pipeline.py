"""The optimization pipeline: convert, then build one candidate per lineage, measure, gate and choose.

Lineages are alternative models derived from the source: `original` (the source itself), `pruned`
(spec.prune) and `student` (spec.distill). Each is converted to ONNX and then goes through the requested
ONNX steps in this order: for a transformer encoder at graph level extended or all, ONNX Runtime's
transformer fusions (so quantization sees fused attention and fewer float ops remain around the INT8
MatMuls); quantize; then the offline graph optimization. The final model of each lineage is a requested
candidate; `baseline`, the converted and otherwise untouched source, is the gate's reference and the
fallback.

The gate and the choice among candidates are in selection.py.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from ferry_optimizer import __version__, evaluation, exports, locations, onnxtools, quality, selection
from ferry_optimizer.errors import InputError, OptimizerError, StepError
from ferry_optimizer.key import content_key
from ferry_optimizer.report import Candidate, Measurement, Report, Step
from ferry_optimizer.spec import WEIGHT_ONLY, MetricName, OptimizeSpec

if TYPE_CHECKING:
    import keras

FORMATS = ("onnx", "tensorflow", "keras", "tflite")
FP16_NOTE = (
    "fp16 halves the weights; it speeds up GPUs with fp16 units, not CPUs (ONNX Runtime inserts casts)"
)
# Graph levels that include ONNX Runtime's own fusions; the transformer fusions run at the same levels.
FUSION_LEVELS = ("extended", "all")
FUSION_NOTE = (
    "the graph is a transformer encoder: ONNX Runtime's transformer fusions (attention, layer norms, GELU, "
    "embeddings) ran before the other steps, because graph level extended or all asks for fusions"
)
STATIC_FUSION_NOTE = (
    "the graph is a transformer encoder, but its fusions were skipped: static (QDQ) quantization needs "
    "standard ONNX ops around every MatMul"
)
ALL_LEVEL_NOTE = (
    "graph level all includes layout optimizations for this machine's CPU: the optimized file may be slower "
    "or fail to load on a different CPU; use extended for portable artifacts"
)


@dataclass(frozen=True)
class Settings:
    threads: int = 1
    # ONNX Runtime intra-op threads for every latency measurement.
    runs: int = 50
    warmup: int = 5
    latency_batch: int = 1
    # Samples per timed inference.


@dataclass(frozen=True)
class Request:
    model: Path
    model_uri: str
    format: str
    spec: OptimizeSpec
    data: Path | None
    output: Path
    output_uri: str
    model_sha256: str | None = None
    # The fetcher's digest of the model when it fetched it; computed from the local files when None.
    key: str | None = None
    # Given by the operator (which names the Job after it); computed from the model bytes when None.
    settings: Settings = field(default_factory=Settings)


@dataclass
class Lineage:
    name: str
    onnx: Path
    keras_model: keras.Model | None
    # The Keras model behind this lineage (None for ONNX, SavedModel and TFLite sources).
    steps: list[str]
    error: str | None = None


class Progress:
    """A tqdm bar over the planned steps on a terminal; one log line per step otherwise (Job logs)."""

    def __init__(self, total: int) -> None:
        self.interactive = sys.stderr.isatty()
        self.bar = tqdm(
            total=total, desc="ferry-optimize", unit="step", file=sys.stderr, disable=not self.interactive
        )

    @contextlib.contextmanager
    def step(self, label: str) -> Iterator[None]:
        self.bar.set_description(label)
        started = time.perf_counter()
        if not self.interactive:
            print(f"[ferry-optimize] {label} ...", file=sys.stderr, flush=True)
        try:
            yield
        finally:
            self.bar.update(1)
            if not self.interactive:
                print(
                    f"[ferry-optimize] {label} done in {time.perf_counter() - started:.1f}s",
                    file=sys.stderr,
                    flush=True,
                )

    def add(self, steps: int) -> None:
        """Steps found to be needed after the run began (a transformer's fusion)."""
        self.bar.total = (self.bar.total or 0) + steps
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


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
    def __init__(self, request: Request, work: Path) -> None:
        check_request(request)
        self.request = request
        self.spec = request.spec
        self.work = work
        self.settings = request.settings
        self.tensorboard = request.output / "tensorboard"
        self.progress = Progress(total=self._planned_steps())
        self.tf: Any = None

    def _planned_steps(self) -> int:
        lineages = 1 + (self.spec.prune is not None) + (self.spec.distill is not None)
        # A transformer's fusion step is added to the bar's total when it is found.
        per_lineage = (self.spec.quantize != "none") + (self.spec.graph != "disabled")
        return 2 + lineages + lineages * per_lineage + len(self.spec.export)

    # --- the run -----------------------------------------------------------------------------------

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
        keras_model: keras.Model | None = None
        convert_started = time.perf_counter()
        with self.progress.step(f"convert {request.format} to ONNX"):
            keras_model = self._convert(baseline_path)
        convert_seconds = time.perf_counter() - convert_started
        self.evaluation = evaluation.Evaluation(baseline_path, spec, request.data, self.settings)
        self.metric_name: MetricName = self.evaluation.metric_name
        baseline = self.measure(baseline_path)
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
            data=self.evaluation.summary(),
            metric={
                "name": self.metric_name,
                "higherIsBetter": quality.HIGHER_IS_BETTER[self.metric_name],
                "baseline": baseline.metric,
                "maxDrop": spec.validate.max_drop if spec.validate else None,
                "gate": spec.validate is not None,
            },
            measurement={
                "threads": self.settings.threads,
                "batch": self.settings.latency_batch,
                "runs": self.settings.runs,
                "warmup": self.settings.warmup,
                "statistic": "median",
                "sessionGraphLevel": "all",
                "provider": "CPUExecutionProvider",
                "onnxruntime": onnxtools.onnxruntime_version(),
                "cpu": onnxtools.cpu_name(),
            },
            output_uri=request.output_uri,
        )
        if request.format != "onnx":
            report.steps.append(self._convert_step(baseline, convert_seconds, keras_model))
        else:
            report.notes.append("source is ONNX: passed through without conversion")
        if self.evaluation.dataset.source == "synthetic":
            report.notes.append(
                "no data given: quality is output agreement on generated inputs "
                "(normal floats, ones for integers), "
                "a weak check; give optimize.data for a real one"
            )
        lineages = [
            Lineage("original", baseline_path, keras_model, ["convert"] if request.format != "onnx" else [])
        ]
        if spec.prune is not None and keras_model is not None:
            lineages.append(self._prune(keras_model, baseline, report))
        if spec.distill is not None and keras_model is not None:
            lineages.append(self._distill(keras_model, baseline, report))
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
        for lineage in lineages:
            candidate = self._finish(lineage, report)
            if candidate is not None:
                report.candidates.append(candidate)
        selection.gate(report.candidates, self.metric_name, baseline.metric or 0.0, spec.validate)
        report.chosen, report.passed, report.reason = selection.choose(
            report.candidates, self.metric_name, gated=spec.validate is not None
        )
        exporter = exports.Exporter(request, self.work, self.evaluation, self.progress)
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

        training.write_scalars(self.tensorboard / "report", report.scalars())

    # --- steps -------------------------------------------------------------------------------------

    def _tf(self) -> Any:
        if self.tf is None:
            from ferry_optimizer import tfmodels

            self.tf = tfmodels
        return self.tf

    def _convert(self, target: Path) -> keras.Model | None:
        request = self.request
        if request.format == "onnx":
            source = request.model
            if source.is_dir():
                found = sorted(source.glob("*.onnx"))
                if len(found) != 1:
                    raise InputError(
                        "--model", "a directory with exactly one .onnx file", [p.name for p in found]
                    )
                source = found[0]
            shutil.copyfile(source, target)
            return None
        tfm = self._tf()
        if request.format == "keras":
            model = tfm.load_keras(request.model)
            tfm.keras_to_onnx(model, target)
            return model
        if request.format == "tensorflow":
            if not request.model.is_dir():
                raise InputError(
                    "--model", "a SavedModel directory for --format tensorflow", str(request.model)
                )
            tfm.saved_model_to_onnx(request.model, target)
            return None
        tfm.tflite_to_onnx(request.model, target)
        return None

    def _source_outputs(
        self, feeds: dict[str, np.ndarray], keras_model: keras.Model | None
    ) -> list[np.ndarray]:
        tfm = self._tf()
        if keras_model is not None:
            return tfm.predict_keras(keras_model, feeds)  # type: ignore[no-any-return]
        if self.request.format == "tensorflow":
            return tfm.predict_saved_model(self.request.model, feeds)  # type: ignore[no-any-return]
        return tfm.predict_tflite(self.request.model, feeds)  # type: ignore[no-any-return]

    def _convert_step(self, baseline: Measurement, seconds: float, keras_model: keras.Model | None) -> Step:
        outputs = self._source_outputs(self.evaluation.validation.inputs, keras_model)
        source_metric = self.evaluation.score(outputs)
        agreement = quality.score("maxAbsError", outputs, self.evaluation.reference)
        size = onnxtools.size_bytes(self.request.model)
        before = Measurement(size, None, None, None, source_metric)
        return Step(
            "original",
            "convert",
            f"{self.request.format} -> onnx",
            before,
            baseline,
            seconds,
            notes=[f"max abs difference from the source model: {agreement:.3g}"],
            details={"maxAbsErrorVsSource": agreement, "opset": 17},
        )

    def _prune(self, keras_model: keras.Model, baseline: Measurement, report: Report) -> Lineage:
        from ferry_optimizer import pruning

        spec = self.spec.prune
        assert spec is not None
        started = time.perf_counter()
        target = self.work / "pruned.onnx"
        notes: list[str] = []
        details: dict[str, Any] = {"method": spec.method, "targetSparsity": spec.sparsity}
        with self.progress.step(f"prune {spec.method} {spec.sparsity:.0%}"):
            try:
                fine_tune = self.request.data is not None and spec.epochs > 0
                if spec.method == "magnitude":
                    model = pruning.clone(keras_model)
                    pruner = pruning.MagnitudePruner(model, spec.sparsity)
                    if fine_tune:
                        history = self._fine_tune(
                            model,
                            keras_model,
                            epochs=spec.epochs,
                            name="prune",
                            before_epoch=lambda epoch: pruner.prune_to(pruner.schedule(epoch, spec.epochs)),
                            after_batch=pruner.apply,
                        )
                        details["epochs"] = history
                    pruner.prune_to(spec.sparsity)
                    result = pruner.result()
                    notes.append(
                        "zeroed weights keep the dense ONNX file's size and speed; "
                        "only the compressed size shrinks"
                    )
                else:
                    result = pruning.structured(keras_model, spec.sparsity, "prune")
                    if fine_tune:
                        details["epochs"] = self._fine_tune(
                            result.model, keras_model, epochs=spec.epochs, name="prune"
                        )
                    notes.append("removed units/filters: a smaller and faster dense model")
                if not fine_tune:
                    notes.append("no fine-tuning (no data or prune.epochs 0): one-shot pruning")
                details.update(
                    sparsity=result.sparsity,
                    kernelWeightsBefore=result.parameters_before,
                    kernelWeightsAfter=result.parameters_after,
                )
                self._tf().keras_to_onnx(result.model, target, self.evaluation.output_names)
                after = self.measure(target)
                lineage = Lineage("pruned", target, result.model, ["prune", "convert"])
                notes.insert(0, f"sparsity {result.sparsity:.1%}")
                error = None
            except OptimizerError as failure:
                if isinstance(failure, InputError):
                    raise
                after, error = None, failure.message
                lineage = Lineage("pruned", target, None, ["prune"], error=error)
        report.steps.append(
            Step(
                "pruned",
                "prune",
                f"{spec.method} {spec.sparsity:g}",
                baseline,
                after,
                time.perf_counter() - started,
                notes,
                details,
                error,
            )
        )
        return lineage

    def _distill(self, teacher: keras.Model, baseline: Measurement, report: Report) -> Lineage:
        from ferry_optimizer import distillation, layers

        spec = self.spec.distill
        assert spec is not None
        started = time.perf_counter()
        target = self.work / "student.onnx"
        details: dict[str, Any] = {
            "widthFactor": spec.student.width_factor,
            "depth": spec.student.depth,
            "temperature": spec.temperature,
        }
        with self.progress.step("distill student"):
            logits, served = distillation.student_of(teacher, spec.student)
            softmax = layers.ends_in_softmax(teacher)
            teacher_out = self._tf().predict_keras(teacher, self.evaluation.train.inputs)[0]
            targets = [distillation.teacher_targets(teacher_out, softmax)]
            with_labels = self.evaluation.train.labels is not None and softmax
            if with_labels:
                assert self.evaluation.train.labels is not None
                targets.append(self.evaluation.train.labels)
            from ferry_optimizer import training

            details["epochs"] = [
                vars(epoch)
                for epoch in training.fit(
                    logits,
                    self.evaluation.train.inputs,
                    targets,
                    distillation.loss(spec.temperature, softmax, with_labels),
                    spec=self.spec.training,
                    epochs=spec.epochs,
                    log_dir=self.tensorboard / "distill",
                    evaluate=lambda: self._keras_quality(served),
                    description="distill",
                )
            ]
            teacher_weights = sum(int(np.prod(w.shape)) for w in teacher.weights)
            student_weights = sum(int(np.prod(w.shape)) for w in served.weights)
            details.update(teacherWeights=teacher_weights, studentWeights=student_weights)
            error = None
            after: Measurement | None = None
            try:
                self._tf().keras_to_onnx(served, target, self.evaluation.output_names)
                after = self.measure(target)
            except StepError as failure:
                error = failure.message
        notes = [f"student has {student_weights / teacher_weights:.0%} of the teacher's weights"]
        report.steps.append(
            Step(
                "student",
                "distill",
                f"width {spec.student.width_factor:g}",
                baseline,
                after,
                time.perf_counter() - started,
                notes,
                details,
                error,
            )
        )
        return Lineage("student", target, served, ["distill", "convert"], error=error)

    def _fine_tune(
        self,
        model: keras.Model,
        original: keras.Model,
        *,
        epochs: int,
        name: str,
        before_epoch: Callable[[int], None] | None = None,
        after_batch: Callable[[], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Fine-tune on the labels of a classifier, else towards the original model's outputs."""
        import tensorflow as tf

        from ferry_optimizer import layers, training

        labels = self.evaluation.train.labels
        softmax = layers.ends_in_softmax(original)
        if labels is not None:
            targets = [labels]

            def loss(batch_targets: Any, output: tf.Tensor) -> tf.Tensor:
                return tf.reduce_mean(
                    tf.keras.losses.sparse_categorical_crossentropy(
                        batch_targets[0], output, from_logits=not softmax
                    )
                )
        else:
            targets = [self._tf().predict_keras(original, self.evaluation.train.inputs)[0]]

            def loss(batch_targets: Any, output: tf.Tensor) -> tf.Tensor:
                return tf.reduce_mean(tf.square(output - batch_targets[0]))

        history = training.fit(
            model,
            self.evaluation.train.inputs,
            targets,
            loss,
            spec=self.spec.training,
            epochs=epochs,
            log_dir=self.tensorboard / name,
            evaluate=lambda: self._keras_quality(model),
            before_epoch=before_epoch,
            after_batch=after_batch,
            description=name,
        )
        return [vars(epoch) for epoch in history]

    def _keras_quality(self, model: keras.Model) -> tuple[str, float]:
        outputs = self._tf().predict_keras(model, self.evaluation.validation.inputs)
        return self.metric_name, self.evaluation.score(outputs)

    def _finish(self, lineage: Lineage, report: Report) -> Candidate | None:
        """Apply the requested ONNX steps to a lineage; its final model is a requested candidate."""
        name = {"original": "optimized", "pruned": "pruned", "student": "student"}[lineage.name]
        current = lineage.onnx
        steps = list(lineage.steps)
        if lineage.error is not None:
            return Candidate(
                name, lineage.name, steps, None, requested=True, reason=f"failed: {lineage.error}"
            )
        spec = self.spec
        planned: list[tuple[str, str]] = [("quantize", spec.quantize), ("graph", spec.graph)]
        fusion = self._transformer_fusion(current, report)
        if fusion is not None:
            planned.insert(0, ("fuse", fusion))
            self.progress.add(1)
        for kind, detail in planned:
            if detail in {"none", "disabled"}:
                continue
            target = self.work / f"{lineage.name}-{len(steps)}-{kind}.onnx"
            started = time.perf_counter()
            before = self.measure(current)
            with self.progress.step(f"{lineage.name}: {kind} {detail}"):
                try:
                    details = self._onnx_step(kind, detail, current, target)
                    after = self.measure(target)
                except StepError as failure:
                    # The fusion is an automatic step, not a requested one: the lineage goes on unfused.
                    automatic = kind == "fuse"
                    report.steps.append(
                        Step(
                            lineage.name,
                            kind,
                            detail,
                            before,
                            None,
                            time.perf_counter() - started,
                            notes=["continued without the transformer fusions"] if automatic else [],
                            error=failure.message,
                        )
                    )
                    if automatic:
                        continue
                    return Candidate(
                        name,
                        lineage.name,
                        [*steps, f"{kind}:{detail}"],
                        None,
                        requested=True,
                        reason=f"failed: {failure.message}",
                    )
            notes = [FP16_NOTE] if detail == "fp16" else ([ALL_LEVEL_NOTE] if detail == "all" else [])
            if kind == "fuse":
                notes = [FUSION_NOTE]
            report.steps.append(
                Step(lineage.name, kind, detail, before, after, time.perf_counter() - started, notes, details)
            )
            steps.append(f"{kind}:{detail}")
            current = target
        if current == lineage.onnx and lineage.name == "original":
            # No ONNX step requested: the original lineage adds nothing beyond the baseline.
            return None
        lineage.onnx = current
        return Candidate(name, lineage.name, steps, self.measure(current), requested=True)

    def _transformer_fusion(self, model: Path, report: Report) -> str | None:
        """The transformer type to fuse for, when the graph step asks for fusions and the model is one."""
        if self.spec.graph not in FUSION_LEVELS:
            return None
        model_type = onnxtools.transformer_type(model)
        if model_type is not None and self.spec.quantize == "static":
            report.notes.append(STATIC_FUSION_NOTE)
            return None
        return model_type

    def _onnx_step(self, kind: str, detail: str, source: Path, target: Path) -> dict[str, Any]:
        """Run one ONNX step from source to target; returns the step's details for the report."""
        if kind == "fuse":
            fused = onnxtools.fuse_transformer(source, target, detail)
            return {"modelType": detail, "fusedOperators": fused}
        if kind == "graph":
            onnxtools.optimize_graph(source, target, detail)
        elif detail == "dynamic":
            onnxtools.quantize_dynamic(source, target)
        elif detail == "static":
            onnxtools.quantize_static(source, target, self.evaluation.train.inputs, batch=32)
        else:
            onnxtools.convert_fp16(source, target)
        return {}

    def measure(self, path: Path) -> Measurement:
        return self.evaluation.measure(path)
