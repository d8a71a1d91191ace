"""Continuous batching is exact: Ferry's greedy tokens equal transformers' own `generate` on the source
weights, for sequences that join a running batch, leave it and have their cache slot moved.

The model is a Llama made in the session (conftest.py); transformers runs the Hugging Face folder and
Ferry the onnxruntime-genai folder the model builder made from it, in fp32 without quantization.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from conftest import TinyLlama
from ferry_runtime.generative.model import (
    GenerationLimits,
    GenerationRequest,
    GenerationResult,
    GenerativeModel,
)
from ferry_runtime.generative.sampling import SamplingParams
from ferry_runtime.metrics import GenerationRecorder, Metrics

pytestmark = pytest.mark.slow

PROMPTS = [
    "def parse_args(self, args=None, namespace=None):",
    "class HelpFormatter(object):",
    "import",
    "    def _get_values(self, action, arg_strings):\n        # for everything but PARSER, REMAINDER args",
    "Return a list of the best",
    "s = SequenceMatcher(None, a, b)",
    "msg = EmailMessage()",
]


def transformers_greedy(hf: Path, prompts: list[list[int]], lengths: list[int]) -> list[list[int]]:
    import generative_models

    requests = [{"prompt": p, "max_new_tokens": n} for p, n in zip(prompts, lengths, strict=True)]
    return [answer["generated"] for answer in generative_models.reference("greedy", hf, requests)]


def run_ferry(
    genai: Path, requests: list[tuple[float, list[int], int]], slots: int, prefill_budget: int
) -> list[GenerationResult]:
    """Submit (delay, prompt ids, max new tokens) requests to one model and wait for all of them."""

    async def main() -> list[GenerationResult]:
        loop = asyncio.get_running_loop()
        model = GenerativeModel(
            genai, "tiny", GenerationLimits(slots, 0, 0, 64, prefill_budget, intra_op_threads=1)
        )
        await asyncio.to_thread(model.load, loop)
        recorder = GenerationRecorder(Metrics(), "tiny")
        finished: list[asyncio.Future[GenerationResult]] = []

        async def one(delay: float, prompt: list[int], max_new: int) -> GenerationResult:
            await asyncio.sleep(delay)
            done: asyncio.Future[GenerationResult] = loop.create_future()

            def on_text(_text: str, result: GenerationResult) -> None:
                if result.finish_reason is not None and not done.done():
                    done.set_result(result)

            model.start(
                GenerationRequest(prompt, max_new, SamplingParams(temperature=0.0)), on_text, recorder
            )
            return await done

        results = await asyncio.gather(*(one(*request) for request in requests))
        finished.clear()
        model.unload(5)
        return list(results)

    return asyncio.run(main())


@pytest.mark.parametrize("prefill_budget", [2048, 5], ids=["whole-prompts", "5-token-chunks"])
def test_greedy_tokens_equal_transformers_while_sequences_join_and_leave(
    tiny_llama: TinyLlama, prefill_budget: int
) -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tiny_llama.genai / "tokenizer.json"))
    prompts = [tokenizer.encode(text).ids for text in PROMPTS]
    # Different output lengths make sequences leave at different steps; three slots for seven requests
    # make later ones wait, join a running batch, and take over slots whose occupant moved.
    lengths = [40, 7, 25, 60, 3, 33, 18]
    delays = [0.0, 0.0, 0.01, 0.02, 0.05, 0.05, 0.1]
    # A 5-token budget prefills most prompts in chunks between decode steps of the others.
    results = run_ferry(
        tiny_llama.genai,
        list(zip(delays, prompts, lengths, strict=True)),
        slots=3,
        prefill_budget=prefill_budget,
    )
    references = transformers_greedy(tiny_llama.hf, prompts, lengths)
    for prompt, length, result, expected in zip(prompts, lengths, results, references, strict=True):
        assert result.token_ids == expected, f"prompt {tokenizer.decode(prompt)!r}"
        assert result.finish_reason == ("stop" if len(expected) < length else "length")
        assert result.text == tokenizer.decode(expected, skip_special_tokens=True)


def test_the_kv_span_grows_and_shrinks_without_losing_a_sequence(tiny_llama: TinyLlama) -> None:
    import numpy as np

    from ferry_runtime.generative.config import load_decoder_config
    from ferry_runtime.generative.engine import SPAN_STEP, DecoderEngine

    engine = DecoderEngine(load_decoder_config(tiny_llama.genai), slots=4, max_length=512, intra_op_threads=1)
    generator = np.random.default_rng(0)
    lengths = [SPAN_STEP - 10, 20, SPAN_STEP]
    occupied = len(lengths)
    expected = []
    for cache in (*engine._keys, *engine._values):
        blocks = engine._blocks(cache, occupied, engine.span)
        blocks[:] = generator.standard_normal(blocks.shape)
        expected.append(blocks.copy())

    def same_prefixes() -> bool:
        heads = engine.config.kv_heads
        for cache, before in zip((*engine._keys, *engine._values), expected, strict=True):
            blocks = engine._blocks(cache, occupied, engine.span)
            for slot, length in enumerate(lengths):
                rows = slice(slot * heads, (slot + 1) * heads)
                if not np.array_equal(blocks[rows, :length], before[rows, :length]):
                    return False
        return True

    engine._fit(3 * SPAN_STEP + 1, occupied)
    assert engine.span == 4 * SPAN_STEP
    assert same_prefixes()
    engine._fit(SPAN_STEP, occupied)
    assert engine.span == SPAN_STEP
    assert same_prefixes()
    engine.move(2, 0, lengths[2])
    heads = engine.config.kv_heads
    for cache, before in zip((*engine._keys, *engine._values), expected, strict=True):
        blocks = engine._blocks(cache, occupied, engine.span)
        assert np.array_equal(blocks[:heads, : lengths[2]], before[2 * heads : 3 * heads, : lengths[2]])
