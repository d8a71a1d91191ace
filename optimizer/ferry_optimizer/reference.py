"""Reference statistics of the optimization data: `reference.json`, written beside `model.onnx`.

The serving runtime scores input drift against it (`ferry_runtime.drift` reads the file and owns the
binning, which this module reuses so both sides put a value in the same bin) and exports the chosen
model's validation accuracy as the baseline of the online accuracy from feedback.

Per model input: `pooled` (all values of the input form one distribution, for rows with more than
`ferry_runtime.drift.MAX_FEATURES` values or a variable shape, e.g. token ids; otherwise one
distribution per value of a row, e.g. the 64 pixels of a digit), `features`, and per feature `mean`,
`std`, `min`, `max`, `quantiles` (at `QUANTILES`) and `bins` (`edges`: the distinct deciles; `fractions`:
the share of the data in each of the len(edges)+1 bins, bin i holding edges[i-1] <= value < edges[i]).
Only real data is summarized: generated inputs (no `optimize.data`) describe no traffic.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ferry_optimizer.onnxtools import TensorInfo
from ferry_runtime import drift

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
# The file name the runtime looks for beside model.onnx.
FILE = drift.REFERENCE_FILE


def is_pooled(info: TensorInfo, array: np.ndarray) -> bool:
    """Pooled when a row has a variable shape or too many values for one distribution per value."""
    variable = any(not isinstance(dim, int) or dim < 0 for dim in info.shape[1:])
    return variable or math.prod(array.shape[1:]) > drift.MAX_FEATURES


def summarize_input(info: TensorInfo, array: np.ndarray) -> dict[str, Any] | None:
    """The summary of one input's samples, or None for a non-numeric input (e.g. strings)."""
    if array.dtype.kind not in "biuf" or len(array) == 0:
        return None
    pooled = is_pooled(info, array)
    rows = drift.as_rows(array, pooled)
    columns = [rows[:, feature] for feature in range(rows.shape[1])]
    edges = [drift.bin_edges(column) for column in columns]
    fractions = [
        drift.bin_counts(column, edge) / len(column) for column, edge in zip(columns, edges, strict=True)
    ]
    return {
        "dtype": array.dtype.name,
        "shape": [dim if isinstance(dim, int) else -1 for dim in info.shape],
        "pooled": pooled,
        "features": len(columns),
        "mean": rows.mean(axis=0).tolist(),
        "std": rows.std(axis=0).tolist(),
        "min": rows.min(axis=0).tolist(),
        "max": rows.max(axis=0).tolist(),
        "quantiles": {
            "probabilities": list(QUANTILES),
            "values": np.quantile(rows, QUANTILES, axis=0).T.tolist(),
        },
        "bins": {"edges": [e.tolist() for e in edges], "fractions": [f.tolist() for f in fractions]},
    }


def build(
    inputs: Sequence[TensorInfo], samples: Mapping[str, np.ndarray], accuracy: float | None
) -> dict[str, Any] | None:
    """The reference document, or None when no input can be summarized."""
    summaries = {}
    for info in inputs:
        array = samples.get(info.name)
        summary = summarize_input(info, array) if array is not None else None
        if summary is not None:
            summaries[info.name] = summary
    if not summaries:
        return None
    return {
        "version": drift.REFERENCE_VERSION,
        "samples": len(next(iter(samples.values()))),
        "accuracy": accuracy,
        "inputs": summaries,
    }


def write(directory: Path, document: Mapping[str, Any]) -> Path:
    path = directory / FILE
    path.write_text(json.dumps(document, separators=(",", ":")) + "\n")
    return path
