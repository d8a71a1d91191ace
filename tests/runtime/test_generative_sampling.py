"""OpenAI's presence and frequency penalties in the sampler (generative/sampling.py), on logits made here."""

from __future__ import annotations

import numpy as np

from ferry_runtime.generative.sampling import Sampler, SamplingParams


def test_penalties_subtract_count_times_frequency_plus_presence_from_generated_tokens() -> None:
    logits = np.array([5.0, 4.0, 3.9, 0.0], np.float32)
    sampler = Sampler(SamplingParams(temperature=0.0, frequency_penalty=0.5, presence_penalty=0.2))
    # 1st: token 0 (5.0). 2nd: token 0 at 5 - 0.5 - 0.2 = 4.3 still beats 4.0. 3rd: token 0 at
    # 5 - 1.0 - 0.2 = 3.8, token 1 (4.0) wins. 4th: token 1 at 4 - 0.7 = 3.3, token 0 at 3.8, so token 2
    # (3.9) wins.
    chosen = [sampler.choose(logits) for _ in range(4)]
    assert chosen == [0, 0, 1, 2]
    # The engine's logits row is never written: penalties apply to a copy.
    np.testing.assert_array_equal(logits, np.array([5.0, 4.0, 3.9, 0.0], np.float32))


def test_a_negative_presence_penalty_favours_repeating() -> None:
    logits = np.array([1.0, 1.5], np.float32)
    sampler = Sampler(SamplingParams(temperature=0.0, presence_penalty=-1.0))
    logits_first = np.array([2.0, 1.5], np.float32)
    assert sampler.choose(logits_first) == 0
    # Token 0 was generated: -(-1.0) lifts it from 1.0 to 2.0 above token 1's 1.5.
    assert sampler.choose(logits) == 0


def test_without_penalties_nothing_is_counted_or_copied() -> None:
    sampler = Sampler(SamplingParams(temperature=0.0))
    logits = np.array([0.0, 1.0], np.float32)
    assert [sampler.choose(logits) for _ in range(3)] == [1, 1, 1]
    assert not sampler.params.penalized
