"""The layer structure that structured pruning and distillation understand: a chain of Keras layers.

A model qualifies when it has one input and one output and each layer feeds the next (a Sequential model,
or a functional model without branches), built from Dense/Conv layers and the shape-preserving layers
between them (activations, dropout, batch normalization, pooling, flatten). Anything else is refused with
the offending layer named: rebuilding a narrower version of an arbitrary graph is not attempted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

from ferry_optimizer.errors import InputError

COMPUTE_LAYERS: tuple[Any, ...] = (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D)
PASS_THROUGH_LAYERS: tuple[Any, ...] = (
    keras.layers.Dropout,
    keras.layers.Activation,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.Softmax,
    keras.layers.Rescaling,
    keras.layers.MaxPooling1D,
    keras.layers.MaxPooling2D,
    keras.layers.AveragePooling1D,
    keras.layers.AveragePooling2D,
    keras.layers.GlobalAveragePooling1D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalMaxPooling1D,
    keras.layers.GlobalMaxPooling2D,
)
CHANNEL_LAYERS: tuple[Any, ...] = (keras.layers.BatchNormalization,)
FLATTEN_LAYERS: tuple[Any, ...] = (keras.layers.Flatten,)


def chain(model: keras.Model, field: str) -> list[keras.layers.Layer]:
    """The model's layers in order (input layer excluded), or InputError naming what does not fit."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise InputError(
            field,
            "a Keras model with one input and one output",
            f"{len(model.inputs)} inputs, {len(model.outputs)} outputs",
        )
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    supported = COMPUTE_LAYERS + PASS_THROUGH_LAYERS + CHANNEL_LAYERS + FLATTEN_LAYERS
    for layer in layers:
        if not isinstance(layer, supported):
            names = sorted({cls.__name__ for cls in supported})
            raise InputError(
                field,
                f"a chain of {', '.join(names)} layers",
                f"layer {layer.name!r} ({type(layer).__name__})",
            )
        if (
            isinstance(layer, keras.layers.Conv1D | keras.layers.Conv2D)
            and layer.data_format != "channels_last"
        ):
            raise InputError(
                field, "channels_last convolutions", f"layer {layer.name!r} ({layer.data_format})"
            )
    if not isinstance(model, keras.Sequential):
        previous = model.inputs[0]
        for layer in layers:
            if layer.input is not previous:
                raise InputError(
                    field,
                    "a model whose layers form one chain (no branches or skips)",
                    f"layer {layer.name!r}",
                )
            previous = layer.output
    compute = [layer for layer in layers if isinstance(layer, COMPUTE_LAYERS)]
    if not compute:
        raise InputError(
            field, "a model with Dense or Conv layers", [type(layer).__name__ for layer in layers]
        )
    return layers


def is_compute(layer: keras.layers.Layer) -> bool:
    return isinstance(layer, COMPUTE_LAYERS)


def width_key(layer: keras.layers.Layer) -> str:
    """The config key that sets a compute layer's output width."""
    return "units" if isinstance(layer, keras.layers.Dense) else "filters"


def ends_in_softmax(model: keras.Model) -> bool:
    last = model.layers[-1]
    if isinstance(last, keras.layers.Softmax):
        return True
    activation = getattr(last, "activation", None)
    return getattr(activation, "__name__", "") == "softmax"


def sequential(model: keras.Model, layers: Sequence[keras.layers.Layer]) -> keras.Sequential:
    """A new Sequential model with the original model's input and the given (new) layers, built."""
    source = model.inputs[0]
    return keras.Sequential(
        [keras.Input(shape=source.shape[1:], dtype=source.dtype, name=str(source.name)), *layers]
    )
