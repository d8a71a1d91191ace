"""Knowledge distillation: a narrower (and optionally shallower) student trained on the teacher's outputs.

The student repeats the teacher's chain of layers (see layers.py) with each hidden Dense/Conv layer's width
scaled by widthFactor and only the first `depth` hidden Dense/Conv layers kept (with the normalization,
activation and dropout layers right after each dropped one). For a classifier ending in softmax it learns
from the teacher's temperature-softened probabilities (Hinton et al.: KL divergence times T^2), averaged
with the cross-entropy on the hard labels when the data has them; for any other output it regresses the
teacher's outputs (mean squared error).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ferry_optimizer import layers as chains
from ferry_optimizer.errors import InputError
from ferry_optimizer.spec import StudentSpec

# Weight of the soft (teacher) loss when hard labels are also given; the rest goes to the labels.
SOFT_WEIGHT_WITH_LABELS = 0.5


def student_of(teacher: keras.Model, spec: StudentSpec) -> tuple[keras.Model, keras.Model]:
    """(logits model trained, served model): the served one adds the teacher's softmax when it has one."""
    layers = chains.chain(teacher, "distill")
    compute = [i for i, layer in enumerate(layers) if chains.is_compute(layer)]
    hidden = compute[:-1]
    if not hidden:
        raise InputError(
            "distill", "a teacher with hidden Dense/Conv layers to shrink", f"{len(compute)} Dense/Conv layer"
        )
    depth = len(hidden) if spec.depth is None else spec.depth
    if depth > len(hidden):
        raise InputError(
            "distill.student.depth", f"at most {len(hidden)} (the teacher's hidden Dense/Conv layers)", depth
        )
    dropped = set(hidden[depth:])
    softmax = chains.ends_in_softmax(teacher)
    new_layers: list[keras.layers.Layer] = []
    skipping = False
    for index, layer in enumerate(layers):
        if chains.is_compute(layer):
            skipping = index in dropped
        elif not isinstance(layer, chains.PASS_THROUGH_LAYERS + chains.CHANNEL_LAYERS) or _reshapes(layer):
            skipping = False
        if skipping:
            continue
        config: dict[str, Any] = layer.get_config()
        config["name"] = f"student_{config['name']}"
        if index in hidden:
            key = chains.width_key(layer)
            config[key] = max(1, round(config[key] * spec.width_factor))
        if index == compute[-1] and softmax:
            config["activation"] = "linear"
        if index > compute[-1] and softmax and _is_softmax(layer):
            continue
        new_layers.append(type(layer).from_config(config))
    logits = chains.sequential(teacher, new_layers)
    if not softmax:
        return logits, logits
    served = keras.Model(logits.inputs, keras.layers.Softmax(name="student_softmax")(logits.outputs[0]))
    return logits, served


def _reshapes(layer: keras.layers.Layer) -> bool:
    """Pooling changes the shape for every later layer: it is kept even right after a dropped layer."""
    return "Pooling" in type(layer).__name__


def _is_softmax(layer: keras.layers.Layer) -> bool:
    return (
        isinstance(layer, keras.layers.Softmax)
        or getattr(getattr(layer, "activation", None), "__name__", "") == "softmax"
    )


def teacher_targets(teacher_outputs: np.ndarray, softmax: bool) -> np.ndarray:
    """Logits of the teacher: the log of its probabilities when it ends in softmax (same softened targets)."""
    if softmax:
        return np.asarray(np.log(np.clip(teacher_outputs, 1e-7, 1.0)), dtype=np.float32)
    return np.asarray(teacher_outputs, dtype=np.float32)


def loss(temperature: float, softmax: bool, with_labels: bool) -> Any:
    """(targets, student logits) -> loss; targets are (teacher logits,) or (teacher logits, labels)."""

    def distillation_loss(targets: Any, student: tf.Tensor) -> tf.Tensor:
        teacher = targets[0]
        if not softmax:
            return tf.reduce_mean(tf.square(student - teacher))
        soft_teacher = tf.nn.softmax(teacher / temperature)
        soft = tf.reduce_mean(
            tf.reduce_sum(
                soft_teacher * (tf.math.log(soft_teacher + 1e-9) - tf.nn.log_softmax(student / temperature)),
                axis=-1,
            )
        ) * (temperature**2)
        if not with_labels:
            return soft
        hard = tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets[1], logits=student)
        )
        return SOFT_WEIGHT_WITH_LABELS * soft + (1.0 - SOFT_WEIGHT_WITH_LABELS) * hard

    return distillation_loss
