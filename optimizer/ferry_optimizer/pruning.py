"""Pruning of a Keras model: magnitude (individual weights) or structured (whole units and filters).

Magnitude pruning zeroes the smallest kernel weights of every Dense/Conv layer, ramping the sparsity up
during fine-tuning (Zhu & Gupta's cubic schedule) and re-applying the masks after each training step. The
model keeps its shape: a dense ONNX file is as large and as fast as before, only its compressed size
shrinks, and the report says so.

Structured pruning removes the hidden units (Dense) and filters (Conv) with the smallest L2 norm of their
incoming weights and rebuilds a narrower model from the kept weights: fewer parameters, smaller and faster.
The output layer keeps its width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from ferry_optimizer import layers as chains


@dataclass(frozen=True)
class PruneResult:
    model: keras.Model
    sparsity: float
    # Fraction of the Dense/Conv kernel weights that are zero (magnitude) or removed (structured).
    parameters_before: int
    parameters_after: int
    # Non-zero (magnitude) or present (structured) kernel weights.


def clone(model: keras.Model) -> keras.Model:
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


class MagnitudePruner:
    """Masks that keep the largest-magnitude weights of each Dense/Conv kernel."""

    def __init__(self, model: keras.Model, target: float) -> None:
        self.model = model
        self.target = target
        self.kernels = [layer.kernel for layer in model.layers if isinstance(layer, chains.COMPUTE_LAYERS)]
        self.masks = [np.ones(tuple(k.shape), dtype=np.float32) for k in self.kernels]

    def schedule(self, epoch: int, epochs: int) -> float:
        """Sparsity at the start of `epoch` (0-based): rises over the first half of the epochs and holds the
        target for the second half, so the network recovers at the final sparsity."""
        ramp = max(1, -(-epochs // 2))
        progress = min(1.0, (epoch + 1) / ramp)
        return self.target * (1.0 - (1.0 - progress) ** 3)

    def prune_to(self, sparsity: float) -> None:
        for index, kernel in enumerate(self.kernels):
            weights = np.asarray(kernel.numpy())
            count = round(weights.size * sparsity)
            mask = np.ones(weights.size, dtype=np.float32)
            if count:
                mask[np.argsort(np.abs(weights), axis=None, kind="stable")[:count]] = 0.0
            self.masks[index] = mask.reshape(weights.shape)
        self.apply()

    def apply(self) -> None:
        for kernel, mask in zip(self.kernels, self.masks, strict=True):
            kernel.assign(kernel.numpy() * mask)

    def result(self) -> PruneResult:
        total = sum(int(np.prod(k.shape)) for k in self.kernels)
        nonzero = sum(int(np.count_nonzero(k.numpy())) for k in self.kernels)
        return PruneResult(self.model, 1.0 - nonzero / total, total, nonzero)


def structured(model: keras.Model, sparsity: float, field: str) -> PruneResult:
    """A narrower copy of `model` without the lowest-norm fraction `sparsity` of each hidden layer's units."""
    layers = chains.chain(model, field)
    last_compute = max(i for i, layer in enumerate(layers) if chains.is_compute(layer))
    kept: np.ndarray | None = None  # indices of the features, along the last axis, the current layer receives
    new_layers: list[keras.layers.Layer] = []
    new_weights: list[list[np.ndarray]] = []
    before = after = 0
    for index, layer in enumerate(layers):
        config: dict[str, Any] = layer.get_config()
        weights = [np.asarray(w) for w in layer.get_weights()]
        if chains.is_compute(layer):
            kernel = weights[0]
            before += kernel.size
            if kept is not None:
                kernel = np.take(kernel, kept, axis=-2)
            if index != last_compute:
                width = kernel.shape[-1]
                keep_count = max(1, round(width * (1.0 - sparsity)))
                norms = np.sqrt(np.sum(np.square(kernel.reshape(-1, width)), axis=0))
                kept = np.sort(np.argsort(-norms, kind="stable")[:keep_count])
                kernel = kernel[..., kept]
                config[chains.width_key(layer)] = keep_count
                weights = [kernel] + [w[kept] for w in weights[1:]]
            else:
                kept = None
                weights = [kernel, *weights[1:]]
            after += weights[0].size
        elif isinstance(layer, chains.CHANNEL_LAYERS) and kept is not None:
            weights = [w[kept] for w in weights]
        elif isinstance(layer, chains.FLATTEN_LAYERS) and kept is not None:
            shape = layer.input.shape
            positions = int(np.prod(shape[1:-1]))
            channels = int(shape[-1])
            kept = (np.arange(positions)[:, None] * channels + kept[None, :]).ravel()
        new_layers.append(type(layer).from_config(config))
        new_weights.append(weights)
    pruned = chains.sequential(model, new_layers)
    for layer, weights in zip(new_layers, new_weights, strict=True):
        if weights:
            layer.set_weights(weights)
    return PruneResult(pruned, 1.0 - after / before, before, after)
