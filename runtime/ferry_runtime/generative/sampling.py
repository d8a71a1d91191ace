"""Choosing the next token from a row of logits: greedy, or temperature with top-k and top-p (nucleus).

temperature 0 is greedy (argmax, deterministic). Otherwise the order is the one transformers and vLLM
apply: scale by 1/temperature, keep the top_k largest, keep the smallest set whose probability reaches
top_p, sample. A request's `seed` seeds its own generator, so a seeded request repeats its output
whatever else shares its batch.

Before either, OpenAI's penalties, over the tokens this request has generated so far (as OpenAI and vLLM
count them; the prompt is not penalized): `logit[t] -= frequency_penalty * count[t] + presence_penalty *
(count[t] > 0)`. They apply to greedy decoding too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, slots=True)
class SamplingParams:
    # 0 = greedy.
    temperature: float = 1.0
    # 1.0 = no nucleus cut.
    top_p: float = 1.0
    # 0 = no top-k cut.
    top_k: int = 0
    seed: int | None = None
    # -2..2, 0 = none (OpenAI's ranges).
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    @property
    def penalized(self) -> bool:
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


class Sampler:
    """One request's sampler (it owns the request's random generator)."""

    __slots__ = ("_counts", "_generator", "params")

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self._generator = np.random.default_rng(params.seed)
        # How often each token was chosen, kept only when a penalty needs it.
        self._counts: dict[int, int] = {}

    def choose(self, logits: npt.NDArray[np.float32]) -> int:
        token = self._choose(self._penalize(logits) if self.params.penalized else logits)
        if self.params.penalized:
            self._counts[token] = self._counts.get(token, 0) + 1
        return token

    def _penalize(self, logits: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        if not self._counts:
            return logits
        params = self.params
        tokens = np.fromiter(self._counts.keys(), np.int64, len(self._counts))
        counts = np.fromiter(self._counts.values(), np.float32, len(self._counts))
        # A copy: the logits row is the engine's buffer, shared with the rest of the batch's step.
        penalized = logits.copy()
        penalized[tokens] -= params.frequency_penalty * counts + params.presence_penalty
        return penalized

    def _choose(self, logits: npt.NDArray[np.float32]) -> int:
        params = self.params
        if params.greedy:
            return int(np.argmax(logits))
        scaled = logits.astype(np.float64) / params.temperature
        if 0 < params.top_k < scaled.shape[0]:
            candidates = np.argpartition(scaled, -params.top_k)[-params.top_k :]
        else:
            candidates = np.arange(scaled.shape[0])
        values = scaled[candidates]
        order = np.argsort(-values, kind="stable")
        candidates, values = candidates[order], values[order]
        probabilities = np.exp(values - values[0])
        probabilities /= probabilities.sum()
        if params.top_p < 1.0:
            # Keep tokens until the cumulative probability reaches top_p (always at least the first).
            keep = int(np.searchsorted(np.cumsum(probabilities), params.top_p) + 1)
            candidates, probabilities = candidates[:keep], probabilities[:keep]
            probabilities /= probabilities.sum()
        return int(candidates[self._generator.choice(len(candidates), p=probabilities)])
