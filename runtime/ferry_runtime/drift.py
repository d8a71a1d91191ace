"""Input drift: how far the inputs a replica serves have moved from the data the model was optimized on.

The optimizer summarizes its data per model input into `reference.json` beside `model.onnx` (built by
`ferry_optimizer.reference` with the binning functions below, so both sides bin alike): per feature
(one feature per value of a row; or all values pooled into one distribution when a row has many values
or a variable shape) the bin edges at the data's deciles and the share of the data in each bin, plus
mean, std, min, max and quantiles for people.

The runtime samples every `sample_every`-th request's validated inputs into a window of the last
`window_rows` rows per input. The request path only counts down and, when sampling, copies the request's
arrays into a deque (about a microsecond); the conversion, binning and scoring happen at scrape time,
only when new rows arrived, vectorized over features. The score is the population stability index,
PSI = sum over bins of (live - reference) * ln(live / reference), averaged over the input's features.
Usual reading: below 0.1 no shift, 0.1-0.25 moderate, above 0.25 significant.
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


def as_rows(array: npt.NDArray[Any], pooled: bool) -> FloatArray:
    """The input as float64 (rows, features), or (values, 1) when pooled."""
    values = np.asarray(array, dtype=np.float64)
    if values.ndim == 0:
        values = values.reshape(1)
    return values.reshape(-1, 1) if pooled else values.reshape(values.shape[0], -1)


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

    def padded(self) -> tuple[FloatArray, FloatArray]:
        """Edges (features, most edges) padded with +inf, and shares (features, most edges + 1) padded
        with 0: every feature then bins alike in one vectorized comparison (a padded bin stays empty on
        both sides and adds nothing to the PSI)."""
        width = max(len(edge) for edge in self.edges)
        edges = np.full((self.features, width), np.inf)
        shares = np.zeros((self.features, width + 1))
        for feature, (edge, share) in enumerate(zip(self.edges, self.fractions, strict=True)):
            edges[feature, : len(edge)] = edge
            shares[feature, : len(share)] = share
        return edges, shares


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
    """The sampled requests of one input (at least the last `capacity` rows), and their last PSI."""

    __slots__ = ("capacity", "chunks", "dirty", "edges", "psi", "reference", "rows", "shares")

    def __init__(self, reference: InputReference, capacity: int) -> None:
        self.reference = reference
        self.capacity = capacity
        self.edges, self.shares = reference.padded()
        # (rows of the request, a copy of its array as served).
        self.chunks: deque[tuple[int, npt.NDArray[Any]]] = deque()
        self.rows = 0
        self.dirty = False
        self.psi = math.nan

    def add(self, array: npt.NDArray[Any]) -> None:
        """The request path: a copy (a sampled window never holds a request's buffer) and a count."""
        rows = array.shape[0] if array.ndim else 1
        if rows > self.capacity:
            array, rows = array[-self.capacity :], self.capacity
        self.chunks.append((rows, array.copy()))
        self.rows += rows
        chunks = self.chunks
        while self.rows - chunks[0][0] >= self.capacity:
            self.rows -= chunks.popleft()[0]
        self.dirty = True

    def score(self) -> float:
        if self.dirty and self.rows:
            arrays = [array for _, array in self.chunks]
            if self.reference.pooled:  # rows may differ in shape (e.g. sequence lengths)
                arrays = [array.reshape(-1) for array in arrays]
            window = as_rows(np.concatenate(arrays), self.reference.pooled)
            features, bins = self.shares.shape
            # Bin of each value = how many edges are <= it (np.searchsorted(..., side="right")), one
            # comparison of the whole window per edge column (faster than one 3-D comparison).
            index = np.zeros(window.shape, dtype=np.int64)
            for column in self.edges.T:
                index += window >= column
            index += np.arange(features) * bins
            counts = np.bincount(index.ravel(), minlength=features * bins).reshape(features, bins)
            live = np.maximum(counts / len(window), PSI_FLOOR)
            expected = np.maximum(self.shares, PSI_FLOOR)
            self.psi = float(np.mean(np.sum((live - expected) * np.log(live / expected), axis=1)))
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
        """Drop reference inputs the model does not have, or whose features cannot be a row's values.

        `model_inputs` maps the model's input names to shapes (-1 = variable). Returns one problem per
        dropped input, for the log. After this, every sampled array fits its reference.
        """
        problems = []
        for name, window in list(self._windows.items()):
            shape = model_inputs.get(name)
            reference = window.reference
            problem = None
            if shape is None:
                problem = f"reference input '{name}' is not an input of the model"
            elif reference.pooled and reference.features != 1:
                problem = f"reference input '{name}' is pooled but has {reference.features} features"
            elif not reference.pooled:
                per_row = shape[1:]
                width = math.prod(per_row)
                if any(dim < 0 for dim in per_row) or width != reference.features:
                    problem = (
                        f"reference input '{name}' has {reference.features} features per row, the model's "
                        f"rows have shape {list(per_row)}"
                    )
            if problem is not None:
                problems.append(problem)
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
