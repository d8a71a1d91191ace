"""Fine-tuning shared by pruning and distillation: one loop, the spec's schedule and L2, TensorBoard logs.

Each call writes loss and metric per epoch (and the learning rate) as TensorBoard scalars under its log
directory, so `tensorboard --logdir OUTPUT/tensorboard` shows every training an optimization did.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2
from tqdm import tqdm

from ferry_optimizer.onnxtools import Feeds
from ferry_optimizer.spec import TrainingSpec

# Exponential schedule: the learning rate is multiplied by this once per epoch.
EXPONENTIAL_DECAY_PER_EPOCH = 0.7

LossFunction = Callable[[Sequence[tf.Tensor], tf.Tensor], tf.Tensor]
# (targets of the batch, model output) -> scalar loss.


@dataclass(frozen=True)
class EpochResult:
    epoch: int
    loss: float
    metric_name: str
    metric: float


def learning_rate(
    spec: TrainingSpec, steps_per_epoch: int, epochs: int
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    if spec.schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            spec.learning_rate, decay_steps=max(1, steps_per_epoch * epochs)
        )
    if spec.schedule == "exponential":
        return keras.optimizers.schedules.ExponentialDecay(
            spec.learning_rate, decay_steps=max(1, steps_per_epoch), decay_rate=EXPONENTIAL_DECAY_PER_EPOCH
        )
    return spec.learning_rate


def fit(
    model: keras.Model,
    inputs: Feeds,
    targets: Sequence[np.ndarray],
    loss: LossFunction,
    *,
    spec: TrainingSpec,
    epochs: int,
    log_dir: Path,
    evaluate: Callable[[], tuple[str, float]],
    before_epoch: Callable[[int], None] | None = None,
    after_batch: Callable[[], None] | None = None,
    description: str = "fine-tune",
) -> list[EpochResult]:
    """Train `model` in place; `evaluate` gives the (name, value) of the quality metric after each epoch."""
    names = [str(t.name) for t in model.inputs]
    count = len(targets[0])
    steps_per_epoch = max(1, -(-count // spec.batch_size))
    optimizer = keras.optimizers.Adam(learning_rate=learning_rate(spec, steps_per_epoch, epochs))
    kernels = [w for w in model.trainable_weights if w.path.endswith("kernel")]
    dataset = tf.data.Dataset.from_tensor_slices((tuple(inputs[n] for n in names), tuple(targets)))

    @tf.function(reduce_retracing=True)  # type: ignore[untyped-decorator]
    def step(batch_inputs: tuple[tf.Tensor, ...], batch_targets: tuple[tf.Tensor, ...]) -> tf.Tensor:
        with tf.GradientTape() as tape:
            output = model(list(batch_inputs) if len(batch_inputs) > 1 else batch_inputs[0], training=True)
            value = loss(batch_targets, output)
            if spec.l2 > 0 and kernels:
                value += spec.l2 * tf.add_n([tf.reduce_sum(tf.square(k)) for k in kernels])
        gradients = tape.gradient(value, model.trainable_weights)
        optimizer.apply_gradients(zip(gradients, model.trainable_weights, strict=True))
        return value

    writer = tf.summary.create_file_writer(str(log_dir))
    results: list[EpochResult] = []
    bar = tqdm(
        range(epochs), desc=description, unit="epoch", file=sys.stderr, disable=not sys.stderr.isatty()
    )
    for epoch in bar:
        if before_epoch is not None:
            before_epoch(epoch)
        losses = []
        for batch_inputs, batch_targets in dataset.shuffle(count, seed=epoch).batch(spec.batch_size):
            losses.append(float(step(batch_inputs, batch_targets)))
            if after_batch is not None:
                after_batch()
        metric_name, metric = evaluate()
        result = EpochResult(
            epoch=epoch + 1, loss=float(np.mean(losses)), metric_name=metric_name, metric=metric
        )
        results.append(result)
        bar.set_postfix(loss=f"{result.loss:.4f}", **{metric_name: f"{metric:.4f}"})
        with writer.as_default(step=epoch + 1):
            scalar("loss", result.loss)
            scalar(metric_name, metric)
            scalar("learning_rate", _current_rate(optimizer))
    writer.flush()
    return results


# TensorBoard's scalar plugin marker. Written with the core tf.summary.write op, so the optimizer image does
# not need the tensorboard package (tf.summary.scalar imports it); TensorBoard itself reads these as scalars.
_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
).SerializeToString()


def scalar(tag: str, value: float) -> None:
    """One scalar at the default writer's current step."""
    tf.summary.write(tag, tf.constant(value, dtype=tf.float32), metadata=_SCALAR_METADATA)


def _current_rate(optimizer: keras.optimizers.Optimizer) -> float:
    rate = optimizer.learning_rate
    return float(rate.numpy() if hasattr(rate, "numpy") else rate)


def write_scalars(log_dir: Path, scalars: dict[str, float]) -> None:
    """The report's figures as TensorBoard scalars (step 0), beside the training curves."""
    writer = tf.summary.create_file_writer(str(log_dir))
    with writer.as_default(step=0):
        for tag, value in scalars.items():
            scalar(tag, value)
    writer.flush()
