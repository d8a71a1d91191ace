"""A generative model as the protocols see it: tokenize, admit (context limit), generate, stream text back.

`GenerativeModel.load` builds the tokenizer, the engine (KV pool sized from the settings) and the
scheduler. `start` validates a request against the context, submits it, and returns a `Generation`
whose `on_text` callback receives text pieces on the event loop; `cancel` frees its slot at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ferry_runtime.errors import FerryError, InvalidInput, ModelLoadError, Unavailable
from ferry_runtime.generative.config import DecoderConfig, load_decoder_config
from ferry_runtime.generative.engine import DecoderEngine, kv_bytes_per_token
from ferry_runtime.generative.sampling import Sampler, SamplingParams
from ferry_runtime.generative.scheduler import Scheduler, Sequence
from ferry_runtime.generative.text import TextAssembler
from ferry_runtime.generative.tokenizer import TextTokenizer
from ferry_runtime.metrics import GenerationRecorder

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GenerationLimits:
    max_sequences: int
    # 0 = the model's context length.
    max_sequence_length: int
    # 0 = enough for max_sequences at max_sequence_length.
    kv_cache_bytes: int
    max_waiting: int
    max_prefill_tokens: int
    intra_op_threads: int = 0


@dataclass(slots=True)
class GenerationRequest:
    """What to generate, after the protocol parsed and checked the parameters."""

    prompt_tokens: list[int]
    max_new_tokens: int | None
    sampling: SamplingParams
    stop: tuple[str, ...] = ()
    # Generate exactly max_new_tokens, past end-of-sequence tokens (benchmarks with fixed output lengths).
    ignore_eos: bool = False
    # The parameter that carried the prompt ("prompt", "messages", "text_input"), for error messages.
    prompt_field: str = "prompt"
    max_tokens_field: str = "max_tokens"


@dataclass(slots=True)
class GenerationResult:
    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    error: FerryError | None = None
    token_ids: list[int] = field(default_factory=list)


# (new text, the result so far; finish_reason set on the last call)
OnText = Callable[[str, GenerationResult], None]


class Generation:
    """A running request, on the event loop."""

    def __init__(
        self,
        assembler: TextAssembler,
        result: GenerationResult,
        on_text: OnText,
        recorder: GenerationRecorder,
    ) -> None:
        # Set once submitted; None only between construction and submission.
        self.sequence: Sequence | None = None
        self._assembler = assembler
        self.result = result
        self._on_text = on_text
        self._recorder = recorder
        self._started = time.perf_counter()
        self._last_token_at: float | None = None

    def cancel(self) -> None:
        if self.sequence is not None:
            self.sequence.cancelled = True

    def deliver(self, tokens: list[int], finish: str | None, error: FerryError | None) -> None:
        result = self.result
        if result.finish_reason is not None:
            return  # ended by a stop string; the scheduler's last word no longer matters
        now = time.perf_counter()
        if tokens:
            if self._last_token_at is None:
                self._recorder.first_token(now - self._started)
            else:
                self._recorder.inter_token(now - self._last_token_at, len(tokens))
            self._last_token_at = now
            result.token_ids.extend(tokens)
            result.completion_tokens += len(tokens)
        text = self._assembler.feed(tokens)
        if self._assembler.stopped:
            self.cancel()
            finish = "stop"
        if finish is not None:
            text += self._assembler.finish()
            result.text = self._assembler.text
            result.finish_reason = finish
            result.error = error
            self._recorder.finished(now - self._started, result.completion_tokens)
        if text or finish is not None:
            self._on_text(text, result)


class GenerativeModel:
    def __init__(self, directory: Path, name: str, limits: GenerationLimits) -> None:
        self.directory = directory
        self.name = name
        self.limits = limits
        self.config: DecoderConfig = load_decoder_config(directory)
        self.tokenizer = TextTokenizer(directory)
        self.max_length = min(
            limits.max_sequence_length or self.config.context_length, self.config.context_length
        )
        self.tokenizer.max_tokens = self.max_length
        per_sequence = kv_bytes_per_token(self.config) * self.max_length
        slots = limits.max_sequences
        if limits.kv_cache_bytes:
            slots = min(slots, limits.kv_cache_bytes // per_sequence)
            if slots < 1:
                raise ModelLoadError(
                    f"kv_cache_bytes={limits.kv_cache_bytes} cannot hold one sequence of "
                    f"{self.max_length} tokens ({per_sequence} bytes); raise it or lower max_sequence_length"
                )
        self.slots = slots
        self.created = int(time.time())
        self.scheduler: Scheduler | None = None

    def load(self, loop: asyncio.AbstractEventLoop) -> None:
        """Create the session and the KV pool (seconds for a large model: call from a thread)."""

        def build_engine() -> DecoderEngine:
            engine = DecoderEngine(
                self.config, self.slots, self.max_length, intra_op_threads=self.limits.intra_op_threads
            )
            engine.prefill(0, [next(iter(self.config.eos_token_ids))])  # warm-up: first-run allocations
            return engine

        self.scheduler = Scheduler(
            build_engine, loop, self.limits.max_waiting, self.limits.max_prefill_tokens
        )
        engine = self.scheduler.start()
        log.info(
            "generative model '%s' (%s): %d sequences x %d tokens, KV cache %.1f MiB",
            self.name,
            self.config.model_type,
            self.slots,
            self.max_length,
            engine.pool_bytes / 2**20,
        )

    def unload(self, timeout: float) -> None:
        if self.scheduler is not None:
            self.scheduler.stop(timeout)

    def start(self, request: GenerationRequest, on_text: OnText, recorder: GenerationRecorder) -> Generation:
        """Admit and submit a request (raises InvalidInput / Unavailable before anything is queued)."""
        scheduler = self.scheduler
        if scheduler is None:
            raise Unavailable(f"model '{self.name}' is still loading")
        prompt = request.prompt_tokens
        room = self.max_length - len(prompt)
        if not prompt:
            raise InvalidInput(
                f"{request.prompt_field}: the prompt is empty; send at least one token of text",
                param=request.prompt_field,
            )
        if room < 1:
            raise InvalidInput(
                f"{request.prompt_field}: the prompt is {len(prompt)} tokens; this model's context is "
                f"{self.max_length} tokens, so a prompt may have at most {self.max_length - 1}",
                param=request.prompt_field,
            )
        max_new = request.max_new_tokens if request.max_new_tokens is not None else room
        if max_new > room:
            raise InvalidInput(
                f"{request.max_tokens_field}: {max_new} tokens after a {len(prompt)}-token prompt exceeds "
                f"this model's {self.max_length}-token context; at most {room} fit",
                param=request.max_tokens_field,
            )
        for token in prompt:
            if not 0 <= token < self.config.vocab_size:
                raise InvalidInput(
                    f"{request.prompt_field}: token id {token} is outside the vocabulary "
                    f"(0..{self.config.vocab_size - 1})",
                    param=request.prompt_field,
                )
        result = GenerationResult(prompt_tokens=len(prompt))
        assembler = TextAssembler(self.tokenizer.stream(), request.stop)
        generation = Generation(assembler, result, on_text, recorder)
        sequence = Sequence(
            prompt,
            Sampler(request.sampling),
            max_new,
            frozenset() if request.ignore_eos else self.config.eos_token_ids,
            generation.deliver,
        )
        generation.sequence = sequence
        scheduler.submit(sequence)
        recorder.admitted(len(prompt))
        return generation
