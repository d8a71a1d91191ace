"""A generative model's quality and speed, measured on ONNX Runtime through the serving runtime's own engine.

Nothing here imports torch or transformers: the decoder runs in `ferry_runtime.generative.engine`
(the engine `ferry-runtime` serves with), so what is measured is what is served.

- perplexity: exp of the mean negative log-likelihood of every token of the user's text given the
  tokens before it, from the logits a full prefill returns for every position. Each record is
  tokenized on its own (with the tokenizer's special tokens, as transformers' tokenizer does by default)
  and cut into windows of at most WINDOW tokens, each scored independently (its first token is context
  only). Lower is better.
- agreement: without text, the reference model's greedy continuation of each built-in prompt is fed to
  the candidate in one prefill (teacher forcing), and agreement is the fraction of positions where the
  candidate's most likely next token is the reference's. Teacher forcing scores every position on its
  own, so one early difference does not count as a wrong continuation thereafter. Higher is better.
- speed at batch 1: prefill of a PROMPT_TOKENS-token prompt (time to first token: the prefill plus the
  choice of the first token), then DECODE_TOKENS greedy decode steps; the median of ROUNDS timed rounds
  after one untimed warm-up round.
- speed under load: BATCH_SEQUENCES sequences of that prompt prefilled one after another into their
  slots, then DECODE_TOKENS decode steps of all of them in one batch, as continuous batching runs them;
  generated tokens per second over the whole round (prefill included), median of ROUNDS after a warm-up.
  This is the candidates' latency (`latency_ms`, milliseconds per generated token): a server is chosen
  for what it serves under load, where integer kernels that are slower for one row than weight-only
  int4 (W8A8 on an AMX Xeon) serve several times more tokens.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ferry_optimizer.errors import InputError, StepError
from ferry_optimizer.report import GenerationSpeed, Measurement
from ferry_optimizer.spec import MetricName
from ferry_runtime.errors import FerryError
from ferry_runtime.generative.config import DecoderConfig, load_decoder_config
from ferry_runtime.generative.engine import DecoderEngine
from ferry_runtime.generative.tokenizer import TextTokenizer

# Longest window of text scored in one prefill (bounded by the model's context too).
WINDOW = 512
PROMPT_TOKENS = 128
DECODE_TOKENS = 64
ROUNDS = 3
# Sequences decoded together for the speed under load (half the runtime's default maxSequences).
BATCH_SEQUENCES = 8
# Greedy tokens of the reference scored per built-in prompt when no text is given.
AGREEMENT_TOKENS = 32
# Plain English on varied topics: what a user's first prompts look like.
PROMPTS = (
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "Once upon a time, in a small village by the sea,",
    "To make a cup of tea, first",
    "The three primary colors are",
    "Kubernetes schedules containers onto nodes by",
)


@dataclass(frozen=True)
class Evaluation:
    """What every candidate is scored on, prepared once with the reference model."""

    metric: MetricName
    # perplexity (on `windows`) or agreement (on `continuations`).
    windows: list[list[int]]
    continuations: list[tuple[list[int], list[int]]]
    # (prompt tokens, the reference's greedy continuation of it).
    prompt: list[int]
    # The prompt whose prefill and continuation are timed.


def measure(folder: Path, evaluation: Evaluation, threads: int) -> Measurement:
    """Size, quality and speed of one model folder; latency_ms is the time per generated token with
    BATCH_SEQUENCES sequences in flight."""
    # Quality on every core (it does not depend on the thread count); speed with --threads, so figures
    # are comparable on a shared machine.
    scorer = Decoder(folder, threads=0)
    if evaluation.metric == "perplexity":
        metric = scorer.perplexity(evaluation.windows)
    else:
        metric = scorer.agreement(evaluation.continuations)
    del scorer
    timer = Decoder(
        folder, threads=threads, slots=BATCH_SEQUENCES, length=len(evaluation.prompt) + DECODE_TOKENS + 1
    )
    speed = timer.speed(evaluation.prompt)
    return Measurement(
        size_bytes=model_bytes(folder),
        compressed_bytes=None,
        latency_ms=1000 / speed.batch_tokens_per_second,
        load_ms=timer.load_ms,
        metric=metric,
        generation=speed,
    )


def load_decoder_file(folder: Path) -> Path:
    """The decoder's ONNX file as genai_config.json names it."""
    try:
        return load_decoder_config(folder).model_file
    except FerryError as error:
        raise InputError(
            "--model", "an onnxruntime-genai folder with a usable genai_config.json", str(error)
        ) from error


def model_bytes(folder: Path) -> int:
    """The decoder's bytes (model.onnx and its external data): what memory and downloads scale with."""
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file() and ".onnx" in p.name)


def load_text(path: Path, samples: int, field: str = "data") -> list[str]:
    """Records of a JSONL file (each line an object with a "text" string) or of a plain text file (its
    paragraphs, split at blank lines); the first `samples` non-empty ones."""
    try:
        content = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(field, "a readable UTF-8 text or JSONL file", f"{path.name}: {error}") from error
    records: list[str] = []
    if path.suffix == ".jsonl":
        for number, line in enumerate(content.splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as error:
                raise InputError(field, "one JSON object per line", f"line {number}: {error}") from error
            text = item.get("text") if isinstance(item, dict) else None
            if not isinstance(text, str):
                raise InputError(f"{field} line {number}", 'an object with a "text" string', item)
            records.append(text)
    else:
        paragraphs = (part.strip() for part in content.replace("\r\n", "\n").split("\n\n"))
        records = [part for part in paragraphs if part]
    records = [record for record in records if record.strip()][:samples]
    if not records:
        raise InputError(field, "text to score the model on", f"{path.name} holds none")
    return records


def windows(tokenizer: TextTokenizer, records: Sequence[str], window: int) -> list[list[int]]:
    """Each record's tokens cut into windows of at most `window`; a window of one token scores nothing."""
    result = []
    for record in records:
        ids = tokenizer.encode(record)
        result += [ids[i : i + window] for i in range(0, len(ids), window) if len(ids[i : i + window]) > 1]
    return result


class Decoder:
    """One model folder on the serving engine: scores text (in slot 0) and measures speed (with `slots`
    sequences for the speed under load)."""

    def __init__(self, folder: Path, threads: int, slots: int = 1, length: int = 0) -> None:
        """`length`: positions per slot (0: the model's context; a large model's KV cache for a
        whole context in every slot may not fit)."""
        try:
            self.config: DecoderConfig = load_decoder_config(folder)
            self.tokenizer = TextTokenizer(folder)
            started = time.perf_counter()
            positions = min(length or self.config.context_length, self.config.context_length)
            self.engine = DecoderEngine(self.config, slots, positions, intra_op_threads=threads)
            self.load_ms = (time.perf_counter() - started) * 1000
        except FerryError as error:
            raise StepError(f"{folder.name}: {error}") from error
        self.window = min(WINDOW, self.config.context_length)

    def negative_log_likelihood(self, tokens: Sequence[int]) -> tuple[float, int]:
        """(sum of -log p(token | the tokens before it) over tokens[1:], how many tokens were scored)."""
        logits = self.engine.prefill_logits(0, tokens).astype(np.float64)
        targets = np.asarray(tokens[1:])
        log_probabilities = _log_softmax(logits[:-1])
        return float(-log_probabilities[np.arange(len(targets)), targets].sum()), len(targets)

    def perplexity(self, token_windows: Sequence[Sequence[int]]) -> float:
        total, count = 0.0, 0
        for tokens in token_windows:
            nll, scored = self.negative_log_likelihood(tokens)
            total, count = total + nll, count + scored
        return float(np.exp(total / count))

    def greedy(self, prompt: Sequence[int], count: int) -> list[int]:
        """The `count` most likely next tokens (end-of-sequence tokens included)."""
        first = int(np.argmax(self.engine.prefill(0, prompt)))
        return [first, *self._continue(first, len(prompt), count - 1)]

    def _continue(self, token: int, length: int, count: int) -> list[int]:
        """`count` greedy decode steps after `token`, which follows `length` tokens in the slot."""
        generated = []
        for _ in range(count):
            logits = self.engine.decode(np.asarray([token], np.int64), np.asarray([length], np.int64))
            token, length = int(np.argmax(logits[0])), length + 1
            generated.append(token)
        return generated

    def agreement(self, continuations: Sequence[tuple[list[int], list[int]]]) -> float:
        """Fraction of the reference's greedy tokens this model also ranks first, under teacher forcing."""
        matches, total = 0, 0
        for prompt, reference in continuations:
            logits = self.engine.prefill_logits(0, [*prompt, *reference[:-1]])
            predicted = np.argmax(logits[len(prompt) - 1 :], axis=1)
            matches += int(np.sum(predicted == np.asarray(reference)))
            total += len(reference)
        return matches / total

    def speed(self, prompt: Sequence[int]) -> GenerationSpeed:
        """Batch-1 prefill, time to first token and decode speed, and the generated tokens per second of
        every slot served together (each the median of ROUNDS after a warm-up round)."""
        prompt = list(prompt)[: self.engine.max_length - DECODE_TOKENS - 1]
        ttft, decode, batched = [], [], []
        for round_index in range(ROUNDS + 1):
            with _timer() as first:
                token = int(np.argmax(self.engine.prefill(0, prompt)))
            with _timer() as steps:
                self._continue(token, len(prompt), DECODE_TOKENS)
            with _timer() as together:
                self._batch(prompt)
            if round_index:  # the first round is the warm-up (first-run allocations)
                ttft.append(first.seconds)
                decode.append(steps.seconds)
                batched.append(together.seconds)
        first_token, decoding = statistics.median(ttft), statistics.median(decode)
        slots = self.engine.slots
        return GenerationSpeed(
            prompt_tokens=len(prompt),
            decode_tokens=DECODE_TOKENS,
            prefill_tokens_per_second=len(prompt) / first_token,
            decode_tokens_per_second=DECODE_TOKENS / decoding,
            time_to_first_token_ms=first_token * 1000,
            batch_sequences=slots,
            batch_tokens_per_second=slots * DECODE_TOKENS / statistics.median(batched),
        )

    def _batch(self, prompt: list[int]) -> None:
        """The prompt prefilled into every slot in turn, then DECODE_TOKENS greedy steps of all of them."""
        slots = self.engine.slots
        tokens = np.asarray(
            [int(np.argmax(self.engine.prefill(slot, prompt))) for slot in range(slots)], np.int64
        )
        lengths = np.full(slots, len(prompt), np.int64)
        for _ in range(DECODE_TOKENS):
            logits = self.engine.decode(tokens, lengths)
            tokens = np.argmax(logits, axis=1).astype(np.int64)
            lengths += 1


def speed_prompt(tokenizer: TextTokenizer, records: Sequence[str]) -> list[int]:
    """PROMPT_TOKENS tokens of the given text (repeated when it is shorter)."""
    ids: list[int] = []
    while len(ids) < PROMPT_TOKENS:
        before = len(ids)
        for record in records:
            ids += tokenizer.encode(record)
        if len(ids) == before:
            raise InputError("data", "text that tokenizes to at least one token", "no tokens")
    return ids[:PROMPT_TOKENS]


def _log_softmax(logits: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    top = logits.max(axis=1, keepdims=True)
    shifted = logits - top
    result: npt.NDArray[np.float64] = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return result


class _Elapsed:
    seconds = 0.0


@contextmanager
def _timer() -> Iterator[_Elapsed]:
    elapsed = _Elapsed()
    started = time.perf_counter()
    try:
        yield elapsed
    finally:
        elapsed.seconds = time.perf_counter() - started
