"""Types and paths shared by the optimizer tests (imported by conftest.py and the test modules)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
# bench/optimizer_sentences.py: the MiniLM sentences, shared with the benchmark.
sys.path.insert(0, str(ROOT / "bench"))

# The digits teacher trains on the first samples; the pipeline validates on the last quarter of data.npz.
TEACHER_SAMPLES = 1200
VALIDATION = slice(1348, None)


@dataclass(frozen=True)
class Digits:
    x: np.ndarray
    y: np.ndarray
    data: Path
    # data.npz with every sample: `x` float32 (N, 64) in [0, 1] and integer labels `y`.


@dataclass(frozen=True)
class DigitsModels:
    keras: Path
    saved_model: Path
    tflite: Path
    accuracy: float
    # The Keras model's accuracy on the samples it was not trained on.
