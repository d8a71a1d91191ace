"""The decoder on ONNX Runtime over a KV-cache pool that Ferry owns, so sequences can join and leave a batch.

onnxruntime-genai batches statically on CPU: a sequence that arrives while a batch runs waits for all of
it. Ferry drives the builder's model directly instead. Its GroupQueryAttention takes per-sequence
lengths (the graph derives them from the attention mask) and, when the past and present KV tensors are
the same memory, writes each new token's keys and values in place at that sequence's own position. So:

* the pool holds, per layer, one key and one value buffer laid out as [slots, kv_heads, span, head_size];
* running sequences occupy slots 0..n-1, and one decode step for all of them binds the first n slots as
  both past and present, with an attention mask whose row b has as many ones as sequence b is long;
* `span` follows the longest running sequence (in steps of 64 tokens, up to max_length), because the CPU
  kernel's cost grows with the bound buffer's length, not only with each sequence's own (measured on the
  ~113M benchmark Llama at 16 sequences: attention 4.7 ms per step with a 160-token buffer, 50 ms with a
  1024-token one). Growing or shrinking the span re-lays the running sequences out in place;
* a new sequence is prefilled into the next free slot (a batch of one over that slot's memory), in
  chunks when its prompt is longer than the scheduler's per-step budget;
* a finished sequence's slot is refilled by moving the last running sequence into it (its keys and
  values up to its length), which keeps the running slots contiguous.

Nothing is copied per step: inputs and outputs are bound by address.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from ferry_runtime.errors import ModelLoadError
from ferry_runtime.generative.config import DecoderConfig

_KV_TYPES: dict[str, type[np.generic]] = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


# The span grows and shrinks in steps of this many positions.
SPAN_STEP = 64


def kv_bytes_per_token(config: DecoderConfig, kv_type: type[np.generic] = np.float32) -> int:
    """Bytes of keys and values one token of one sequence occupies across all layers."""
    return 2 * config.layers * config.kv_heads * config.head_size * np.dtype(kv_type).itemsize


class DecoderEngine:
    """Runs prefill and decode steps; single-threaded by design (the scheduler's thread owns it)."""

    def __init__(
        self,
        config: DecoderConfig,
        slots: int,
        max_length: int,
        intra_op_threads: int = 0,
        execution_providers: Sequence[str] = ("CPUExecutionProvider",),
    ) -> None:
        self.config = config
        self.slots = slots
        self.max_length = max_length
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        # Pool threads spin between operators (ORT's default): 25% faster decode steps than without on
        # 2 cores; the scheduler runs them at a lower priority than the event loop (scheduler.py).
        try:
            self._session = ort.InferenceSession(
                str(config.model_file), options, providers=list(execution_providers)
            )
        except Exception as error:  # onnxruntime raises its own exception types for bad files
            raise ModelLoadError(f"ONNX Runtime cannot load {config.model_file}: {error}") from error
        types = {meta.name: meta.type for meta in self._session.get_inputs()}
        kv_type_name = types.get(config.past_key_names[0], "")
        if kv_type_name not in _KV_TYPES:
            raise ModelLoadError(
                f"{config.model_file.name}: KV cache input {config.past_key_names[0]} has type "
                f"{kv_type_name or 'none'}; Ferry serves float32 and float16 caches"
            )
        self.kv_type = _KV_TYPES[kv_type_name]
        logits_type = {meta.name: meta.type for meta in self._session.get_outputs()}.get(config.logits_name)
        if logits_type != "tensor(float)":
            raise ModelLoadError(
                f"{config.model_file.name}: output {config.logits_name} has type {logits_type or 'none'}; "
                "Ferry samples from float32 logits (build the model for CPU)"
            )
        size = slots * config.kv_heads * max_length * config.head_size
        self._keys = [np.zeros(size, self.kv_type) for _ in range(config.layers)]
        self._values = [np.zeros(size, self.kv_type) for _ in range(config.layers)]
        self._itemsize = np.dtype(self.kv_type).itemsize
        # The buffer length sequences are laid out with now (see the module docstring).
        self.span = min(max_length, SPAN_STEP)
        self._decode_logits = np.empty((slots, 1, config.vocab_size), np.float32)
        self._positions = np.arange(max_length, dtype=np.int64)
        self._decode_binding: ort.IOBinding | None = None
        self._decode_key = (0, 0)

    @property
    def pool_bytes(self) -> int:
        return 2 * len(self._keys) * self._keys[0].nbytes

    def _blocks(self, cache: npt.NDArray[np.generic], slots: int, span: int) -> npt.NDArray[np.generic]:
        """The first `slots` slots of a layer's buffer as [slots * kv_heads, span, head_size]."""
        config = self.config
        return cache[: slots * config.kv_heads * span * config.head_size].reshape(-1, span, config.head_size)

    def _fit(self, needed: int, occupied: int) -> None:
        """Make the span hold `needed` positions, re-laying out the first `occupied` slots if it changes.
        Grows at once; shrinks when half the span would do, so a span does not flap at a boundary."""
        target = min(self.max_length, -(-needed // SPAN_STEP) * SPAN_STEP)
        span = self.span
        if needed <= span and target > span // 2:
            return
        if occupied:
            blocks = occupied * self.config.kv_heads
            keep = min(span, target)
            order = range(blocks - 1, -1, -1) if target > span else range(blocks)
            for cache in (*self._keys, *self._values):
                old, new = self._blocks(cache, occupied, span), self._blocks(cache, occupied, target)
                # Growing moves blocks towards the end (last first); shrinking towards the start.
                for block in order:
                    new[block, :keep] = old[block, :keep]
        self.span = target

    def prefill(self, slot: int, tokens: Sequence[int], past: int = 0) -> npt.NDArray[np.float32]:
        """Run prompt tokens into a slot that holds the first `past` tokens of the prompt (0: an empty
        slot; slots before it hold running sequences); the logits of the last position. A prompt can so
        be prefilled in chunks between decode steps."""
        last: npt.NDArray[np.float32] = self.prefill_logits(slot, tokens, past)[-1]
        return last

    def prefill_logits(self, slot: int, tokens: Sequence[int], past: int = 0) -> npt.NDArray[np.float32]:
        """`prefill`, returning the logits of every prompt position, [len(tokens), vocab] (the decoder
        computes them all anyway): what a perplexity needs (the optimizer's quality gate)."""
        count = len(tokens)
        total = past + count
        self._fit(max(total, self.span if slot else 0), slot + (1 if past else 0))
        ids = np.asarray(tokens, dtype=np.int64).reshape(1, count)
        mask = np.ones((1, total), dtype=np.int64)
        logits = np.empty((1, count, self.config.vocab_size), np.float32)
        self._run(slot, 1, ids, mask, logits)
        every: npt.NDArray[np.float32] = logits[0]
        return every

    def decode(
        self, tokens: npt.NDArray[np.int64], lengths: npt.NDArray[np.int64], partial: int = 0
    ) -> npt.NDArray[np.float32]:
        """One step for the sequences in slots 0..n-1: `tokens[b]` is appended to sequence b, which holds
        `lengths[b]` tokens before it. `partial` is the length of a prompt half prefilled in slot n (kept
        if the span changes). Returns logits [n, vocab] (a view, valid until the next step)."""
        count = tokens.shape[0]
        totals = lengths + 1
        longest = int(totals.max())
        self._fit(max(longest, partial), count + (1 if partial else 0))
        mask = (self._positions[:longest] < totals[:, None]).astype(np.int64)
        logits = self._decode_logits[:count]
        self._run(0, count, tokens.reshape(count, 1), mask, logits, decoding=True)
        return logits[:, 0]

    def move(self, source: int, destination: int, length: int) -> None:
        """Copy a sequence's first `length` positions of keys and values from one slot to another."""
        heads = self.config.kv_heads
        for cache in (*self._keys, *self._values):
            blocks = self._blocks(cache, max(source, destination) + 1, self.span)
            blocks[destination * heads : (destination + 1) * heads, :length] = blocks[
                source * heads : (source + 1) * heads, :length
            ]

    def _bind_cache(self, first_slot: int, count: int) -> ort.IOBinding:
        """A binding of `count` slots from `first_slot` as past and present, and of the logits buffer."""
        config = self.config
        binding = self._session.io_binding()
        shape = [count, config.kv_heads, self.span, config.head_size]
        offset = first_slot * config.kv_heads * self.span * config.head_size * self._itemsize
        for layer in range(config.layers):
            for past, present, cache in (
                (config.past_key_names[layer], config.present_key_names[layer], self._keys[layer]),
                (config.past_value_names[layer], config.present_value_names[layer], self._values[layer]),
            ):
                # Past and present bound to the same address: the kernel appends in place.
                address = cache.ctypes.data + offset
                binding.bind_input(past, "cpu", 0, self.kv_type, shape, address)
                binding.bind_output(present, "cpu", 0, self.kv_type, shape, address)
        return binding

    def _run(
        self,
        first_slot: int,
        count: int,
        ids: npt.NDArray[np.int64],
        mask: npt.NDArray[np.int64],
        logits: npt.NDArray[np.float32],
        *,
        decoding: bool = False,
    ) -> None:
        config = self.config
        if decoding:
            # Decode steps reuse one binding while the batch and the span stay the same (rebinding the
            # cache costs ~0.3 ms per step on the benchmark model, 5% of a step at batch 1). Its logits
            # buffer is the engine's own, which outlives it; a prefill's is not, so prefill never reuses.
            key = (count, self.span)
            if self._decode_binding is None or self._decode_key != key:
                self._decode_binding, self._decode_key = self._bind_cache(0, count), key
                self._decode_binding.bind_output(
                    config.logits_name, "cpu", 0, np.float32, list(logits.shape), logits.ctypes.data
                )
            binding = self._decode_binding
        else:
            binding = self._bind_cache(first_slot, count)
            binding.bind_output(
                config.logits_name, "cpu", 0, np.float32, list(logits.shape), logits.ctypes.data
            )
        binding.bind_cpu_input(config.input_ids_name, ids)
        binding.bind_cpu_input(config.attention_mask_name, mask)
        self._session.run_with_iobinding(binding)
