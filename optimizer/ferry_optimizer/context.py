"""What one optimization run works with: its inputs (Request, Settings), the lineages it builds, its
progress display, and the context every step gets once the source is converted (StepContext).

Their own module so the steps (conversion.py, keras_lineages.py, onnx_steps.py, exports.py) and the
orchestration (pipeline.py) share them without importing each other.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from ferry_optimizer.spec import OptimizeSpec

if TYPE_CHECKING:
    import keras

    from ferry_optimizer.evaluation import Evaluation


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


@dataclass(frozen=True)
class StepContext:
    """What every step after conversion reads: the request, where to work, the progress display, and the
    evaluation (validation data, reference outputs, the metric) made from the converted baseline."""

    request: Request
    work: Path
    progress: Progress
    evaluation: Evaluation

    @property
    def spec(self) -> OptimizeSpec:
        return self.request.spec

    @property
    def tensorboard(self) -> Path:
        """Where training curves and the report's scalars go (beside the artifact)."""
        return self.request.output / "tensorboard"
