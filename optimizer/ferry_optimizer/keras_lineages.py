"""The lineages derived from a Keras source: pruned (spec.prune) and student (spec.distill), each trained
(fine-tuned or distilled) with Keras and converted to ONNX; onnx_steps.py then finishes them like the
original."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ferry_optimizer.context import Lineage, StepContext
from ferry_optimizer.conversion import tensorflow_models
from ferry_optimizer.errors import InputError, OptimizerError, StepError
from ferry_optimizer.report import Measurement, Report, Step

if TYPE_CHECKING:
    import keras


class KerasLineages:
    """Builds the pruned and student lineages of one run."""

    def __init__(self, context: StepContext) -> None:
        self.context = context

    def prune(self, keras_model: keras.Model, baseline: Measurement, report: Report) -> Lineage:
        """The pruned lineage: spec.prune applied to the Keras model (fine-tuned when there is data)."""
        from ferry_optimizer import pruning

        spec = self.context.spec.prune
        assert spec is not None
        started = time.perf_counter()
        target = self.context.work / "pruned.onnx"
        notes: list[str] = []
        details: dict[str, Any] = {"method": spec.method, "targetSparsity": spec.sparsity}
        with self.context.progress.step(f"prune {spec.method} {spec.sparsity:.0%}"):
            try:
                fine_tune = self.context.request.data is not None and spec.epochs > 0
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
                tensorflow_models().keras_to_onnx(result.model, target, self.context.evaluation.output_names)
                after = self.context.evaluation.measure(target)
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

    def distill(self, teacher: keras.Model, baseline: Measurement, report: Report) -> Lineage:
        """The student lineage: a narrower (or shallower) model trained on the teacher's outputs."""
        from ferry_optimizer import distillation, layers

        spec = self.context.spec.distill
        assert spec is not None
        started = time.perf_counter()
        target = self.context.work / "student.onnx"
        details: dict[str, Any] = {
            "widthFactor": spec.student.width_factor,
            "depth": spec.student.depth,
            "temperature": spec.temperature,
        }
        with self.context.progress.step("distill student"):
            logits, served = distillation.student_of(teacher, spec.student)
            softmax = layers.ends_in_softmax(teacher)
            teacher_out = tensorflow_models().predict_keras(teacher, self.context.evaluation.train.inputs)[0]
            targets = [distillation.teacher_targets(teacher_out, softmax)]
            with_labels = self.context.evaluation.train.labels is not None and softmax
            if with_labels:
                assert self.context.evaluation.train.labels is not None
                targets.append(self.context.evaluation.train.labels)
            from ferry_optimizer import training

            details["epochs"] = [
                vars(epoch)
                for epoch in training.fit(
                    logits,
                    self.context.evaluation.train.inputs,
                    targets,
                    distillation.loss(spec.temperature, softmax, with_labels),
                    spec=self.context.spec.training,
                    epochs=spec.epochs,
                    log_dir=self.context.tensorboard / "distill",
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
                tensorflow_models().keras_to_onnx(served, target, self.context.evaluation.output_names)
                after = self.context.evaluation.measure(target)
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

        labels = self.context.evaluation.train.labels
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
            targets = [tensorflow_models().predict_keras(original, self.context.evaluation.train.inputs)[0]]

            def loss(batch_targets: Any, output: tf.Tensor) -> tf.Tensor:
                return tf.reduce_mean(tf.square(output - batch_targets[0]))

        history = training.fit(
            model,
            self.context.evaluation.train.inputs,
            targets,
            loss,
            spec=self.context.spec.training,
            epochs=epochs,
            log_dir=self.context.tensorboard / name,
            evaluate=lambda: self._keras_quality(model),
            before_epoch=before_epoch,
            after_batch=after_batch,
            description=name,
        )
        return [vars(epoch) for epoch in history]

    def _keras_quality(self, model: keras.Model) -> tuple[str, float]:
        outputs = tensorflow_models().predict_keras(model, self.context.evaluation.validation.inputs)
        return self.context.evaluation.metric_name, self.context.evaluation.score(outputs)
