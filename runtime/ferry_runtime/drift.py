"""Input drift: how far the inputs a replica serves have moved from the data the model was optimized on.

The optimizer summarizes its data per model input into `reference.json` beside `model.onnx` (built by
`ferry_optimizer.reference` with the binning functions below, so both sides bin alike): per feature
(one feature per value of a row; or all values pooled into one distribution when a row has many values
or a variable shape) the bin edges at the data's deciles and the share of the data in each bin, plus
mean, std, min, max and quantiles for people.

The runtime samples every `sample_every`-th request's validated inputs into a window of the last
`window_rows` rows per input (a copy of the rows, appended on the event loop: a countdown and, when
sampled, a small copy). At scrape time the window is binned with the reference edges and compared with
the population stability index, PSI = sum over bins of (live - reference) * ln(live / reference), averaged
over the input's features. Usual reading: below 0.1 no shift, 0.1-0.25 moderate, above 0.25 significant.
The score is recomputed only when new rows arrived since the last scrape.
"""

from __future__ import annotations

import json
import logging
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

REFERENCE_FILE = "reference.json"
REFERENCE_VERSION = 1
# Internal bin edges sit at these quantiles of the reference data (deciles: ten bins where values differ).
EDGE_QUANTILES = tuple(step / 10 for step in range(1, 10))
# A row with more values than this is summarized pooled (one distribution for the whole input).
MAX_FEATURES = 64
# Bin shares are floored at this before the logarithm: an empty bin on one side is a large, finite term.
PSI_FLOOR = 1e-4

FloatArray = npt.NDArray[np.float64]


class InvalidReference(ValueError):
    """reference.json is unreadable or does not describe the served model's inputs."""


def bin_edges(values: FloatArray) -> FloatArray:
    """Ascending, distinct internal bin edges at the deciles of `values` (ties collapse bins)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(0)
    return np.unique(np.quantile(finite, EDGE_QUANTILES))


def bin_counts(values: FloatArray, edges: FloatArray) -> npt.NDArray[np.int64]:
    """Counts per bin; bin i holds edges[i-1] <= value < edges[i] (bin 0 below the first edge)."""
    indices = np.searchsorted(edges, values, side="right")
    return np.bincount(indices, minlength=len(edges) + 1).astype(np.int64)


def population_stability_index(reference: FloatArray, live: FloatArray) -> float:
    """PSI between two share vectors over the same bins (each summing to 1)."""
    expected = np.maximum(reference, PSI_FLOOR)
    actual = np.maximum(live, PSI_FLOOR)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def as_rows(array: npt.NDArray[Any], pooled: bool, last: int | None = None) -> FloatArray:
    """A float64 copy of the input's (last `last`) rows as (rows, features), or (values, 1) when pooled."""
    values = np.asarray(array)
    if values.ndim == 0:
        values = values.reshape(1)
    if last is not None:
        values = values[-last:]
    rows = values.reshape(-1, 1) if pooled else values.reshape(values.shape[0], -1)
    # np.array copies: a sampled window must never hold a request's buffer alive.
    return np.array(rows, dtype=np.float64)


@dataclass(frozen=True, slots=True)
class InputReference:
    name: str
    # True: all values of the input form one distribution; False: one distribution per value of a row.
    pooled: bool
    # Per feature: internal bin edges, and the reference's share of values in each of len(edges)+1 bins.
    edges: tuple[FloatArray, ...]
    fractions: tuple[FloatArray, ...]

    @property
    def features(self) -> int:
        return len(self.edges)


@dataclass(frozen=True, slots=True)
class Reference:
    inputs: tuple[InputReference, ...]
    # The chosen model's accuracy on the optimizer's validation data; None when it had no labels.
    accuracy: float | None
    # Rows the reference was computed from.
    samples: int


def load_reference(path: Path) -> Reference:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise InvalidReference(f"{path}: not readable JSON: {error}") from None
    return parse_reference(document, str(path))


def parse_reference(document: Any, where: str = REFERENCE_FILE) -> Reference:
    if not isinstance(document, dict) or document.get("version") != REFERENCE_VERSION:
        shown = document.get("version") if isinstance(document, dict) else type(document).__name__
        raise InvalidReference(f"{where}: expected an object with version {REFERENCE_VERSION}, got {shown!r}")
    inputs = document.get("inputs")
    if not isinstance(inputs, dict) or not inputs:
        raise InvalidReference(f"{where}: expected 'inputs' to map input names to summaries")
    parsed = []
    for name, summary in inputs.items():
        context = f"{where} input '{name}'"
        try:
            bins = summary["bins"]
            edges = tuple(np.asarray(feature, dtype=np.float64) for feature in bins["edges"])
            fractions = tuple(np.asarray(feature, dtype=np.float64) for feature in bins["fractions"])
            pooled = bool(summary["pooled"])
        except (KeyError, TypeError, ValueError) as error:
            raise InvalidReference(
                f"{context}: expected 'pooled' and 'bins' with 'edges' and 'fractions' lists ({error!r})"
            ) from None
        if not edges or len(edges) != len(fractions):
            raise InvalidReference(
                f"{context}: expected as many 'fractions' as 'edges' lists (one per feature), "
                f"got {len(fractions)} and {len(edges)}"
            )
        for index, (edge, share) in enumerate(zip(edges, fractions, strict=True)):
            if edge.ndim != 1 or share.shape != (len(edge) + 1,) or np.any(np.diff(edge) <= 0):
                raise InvalidReference(
                    f"{context} feature {index}: expected ascending edges and one more fraction than "
                    f"edges, got {len(edge)} edges and {share.size} fractions"
                )
        parsed.append(InputReference(str(name), pooled, edges, fractions))
    accuracy = document.get("accuracy")
    return Reference(
        tuple(parsed),
        float(accuracy) if isinstance(accuracy, int | float) else None,
        int(document.get("samples", 0)),
    )


class _InputWindow:
    """The sampled rows of one input (whole requests, at least the last `capacity` rows), and their PSI."""

    __slots__ = ("capacity", "chunks", "dirty", "psi", "reference", "rows")

    def __init__(self, reference: InputReference, capacity: int) -> None:
        self.reference = reference
        self.capacity = capacity
        # (rows of the request, its values as (rows or values, features)).
        self.chunks: deque[tuple[int, FloatArray]] = deque()
        self.rows = 0
        self.dirty = False
        self.psi = math.nan

    def add(self, array: npt.NDArray[Any]) -> None:
        rows = min(array.shape[0] if array.ndim else 1, self.capacity)
        values = as_rows(array, self.reference.pooled, rows)
        if values.shape[1] != self.reference.features:
            return
        self.chunks.append((rows, values))
        self.rows += rows
        while self.rows - self.chunks[0][0] >= self.capacity:
            self.rows -= self.chunks.popleft()[0]
        self.dirty = True

    def score(self) -> float:
        if self.dirty and self.rows:
            window = np.concatenate([values for _, values in self.chunks])
            reference = self.reference
            total = 0.0
            for feature, (edges, fractions) in enumerate(
                zip(reference.edges, reference.fractions, strict=True)
            ):
                counts = bin_counts(window[:, feature], edges)
                total += population_stability_index(fractions, counts / len(window))
            self.psi = total / reference.features
            self.dirty = False
        return self.psi


class DriftMonitor:
    """Samples served inputs and scores them against the reference; event-loop thread only."""

    def __init__(self, reference: Reference, window_rows: int, sample_every: int) -> None:
        self.reference = reference
        self.sample_every = sample_every
        self._countdown = 1
        self._windows = {
            spec.name: _InputWindow(spec, window_rows) for spec in reference.inputs if spec.features
        }

    def check_inputs(self, model_inputs: Mapping[str, tuple[int, ...]]) -> list[str]:
        """Drop reference inputs the model does not have, or whose feature count cannot match a row.

        Returns a problem per dropped input, for the log; `model_inputs` maps names to shapes (-1 =
        variable).
        """
        problems = []
        for name, window in list(self._windows.items()):
            shape = model_inputs.get(name)
            if shape is None:
                problems.append(f"reference input '{name}' is not an input of the model")
                del self._windows[name]
                continue
            per_row = shape[1:]
            if not window.reference.pooled and all(dim > 0 for dim in per_row):
                width = math.prod(per_row)
                if width != window.reference.features:
                    problems.append(
                        f"reference input '{name}' has {window.reference.features} features, "
                        f"the model's rows have {width} values"
                    )
                    del self._windows[name]
        return problems

    @property
    def inputs(self) -> list[str]:
        return list(self._windows)

    def observe(self, feed: Mapping[str, npt.NDArray[Any]]) -> None:
        """Called with every request's validated inputs; samples one request in `sample_every`."""
        self._countdown -= 1
        if self._countdown:
            return
        self._countdown = self.sample_every
        for name, window in self._windows.items():
            array = feed.get(name)
            if array is not None:
                window.add(array)

    def scores(self) -> dict[str, tuple[float, int]]:
        """input name -> (PSI over the window, rows in the window); inputs with no rows yet are left out."""
        return {name: (window.score(), window.rows) for name, window in self._windows.items() if window.rows}
