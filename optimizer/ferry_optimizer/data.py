"""Samples for calibration, fine-tuning and the gate: an .npz file, or generated inputs when none is given.

Format: an .npz with an array `x` (a model with one input) or one array per model input name, all with
the same number of samples along axis 0, and optionally `y`: integer class labels of shape (N,) or one-hot
(N, classes). Only the first `samples` rows are read.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from ferry_optimizer.errors import InputError
from ferry_optimizer.onnxtools import Feeds, TensorInfo

# Generated inputs when no data is given: enough rows for a stable agreement metric, small enough to be quick.
SYNTHETIC_SAMPLES = 32
# Size of a symbolic non-batch dimension in generated inputs (e.g. a sequence length).
SYNTHETIC_DIM = 16


@dataclass(frozen=True)
class Dataset:
    inputs: Feeds
    labels: np.ndarray | None
    # Integer class labels of shape (N,), or None.
    source: Literal["file", "synthetic"]

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def take(self, start: int, stop: int) -> Dataset:
        labels = self.labels[start:stop] if self.labels is not None else None
        return Dataset({k: v[start:stop] for k, v in self.inputs.items()}, labels, self.source)


def load(path: Path, inputs: Sequence[TensorInfo], samples: int, where: str) -> Dataset:
    """Read an .npz and map its arrays to the model's inputs, cast to the dtypes the model expects."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise InputError(
            where, "an .npz file (numpy.savez) with an array `x`", f"{path.name}: {error}"
        ) from error
    names = [info.name for info in inputs]
    if all(name in arrays for name in names):
        chosen = {name: arrays[name] for name in names}
    elif "x" in arrays and len(names) == 1:
        chosen = {names[0]: arrays["x"]}
    else:
        expected = "an array `x`" if len(names) == 1 else f"one array per model input {names}"
        raise InputError(where, expected, f"arrays {sorted(arrays)}")
    feeds: Feeds = {}
    for info in inputs:
        array = chosen[info.name][:samples]
        _check_shape(array, info, where)
        feeds[info.name] = array.astype(info.dtype, copy=False)
    counts = {len(a) for a in feeds.values()}
    if len(counts) != 1 or 0 in counts:
        raise InputError(where, "the same number (>0) of samples in every input array", sorted(counts))
    labels = _labels(arrays.get("y"), len(next(iter(feeds.values()))), samples, where)
    return Dataset(feeds, labels, "file")


def _check_shape(array: np.ndarray, info: TensorInfo, where: str) -> None:
    expected = info.shape
    if array.ndim != len(expected) or any(
        isinstance(want, int) and index > 0 and want != got
        for index, (want, got) in enumerate(zip(expected, array.shape, strict=False))
    ):
        pretty = tuple("N" if i == 0 else (d if isinstance(d, int) else "?") for i, d in enumerate(expected))
        raise InputError(f"{where} array for input {info.name!r}", f"shape {pretty}", tuple(array.shape))


def _labels(raw: np.ndarray | None, count: int, samples: int, where: str) -> np.ndarray | None:
    if raw is None:
        return None
    labels = raw[:samples]
    if labels.ndim == 2 and labels.shape[1] > 1:
        labels = labels.argmax(axis=1)
    labels = labels.reshape(len(labels), -1)[:, 0] if labels.ndim > 1 else labels
    if len(labels) != count:
        raise InputError(f"{where} array y", f"{count} labels (one per sample)", len(labels))
    if not np.all(np.equal(np.mod(labels, 1), 0)):
        raise InputError(f"{where} array y", "integer class labels", labels.dtype.name)
    return labels.astype(np.int64)


def synthetic(inputs: Sequence[TensorInfo], seed: int = 0) -> Dataset:
    """Inputs generated from the model's signature: standard normal floats, ones for integers.

    Enough to compare a candidate's outputs with the original's, not to measure accuracy: a report made
    with them says so (data source "synthetic").
    """
    rng = np.random.default_rng(seed)
    feeds: Feeds = {}
    for info in inputs:
        shape = [SYNTHETIC_SAMPLES] + [d if isinstance(d, int) else SYNTHETIC_DIM for d in info.shape[1:]]
        if np.issubdtype(info.dtype, np.floating):
            feeds[info.name] = rng.standard_normal(shape).astype(info.dtype)
        else:
            feeds[info.name] = np.ones(shape, dtype=info.dtype)
    return Dataset(feeds, None, "synthetic")


def split(dataset: Dataset, holdout: float) -> tuple[Dataset, Dataset]:
    """(train, validation): the last `holdout` fraction validates, so fine-tuning never sees it."""
    count = len(dataset)
    validation = max(1, round(count * holdout))
    if count - validation < 1:
        return dataset, dataset
    return dataset.take(0, count - validation), dataset.take(count - validation, count)
