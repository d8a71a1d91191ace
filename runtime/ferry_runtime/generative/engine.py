"""The decoder on ONNX Runtime over a KV-cache pool that Ferry owns, so sequences can join and leave a batch.

onnxruntime-genai batches statically on CPU: a sequence that arrives while a batch runs waits for all of
it. Ferry drives the builder's model directly instead. Its GroupQueryAttention takes per-sequence
lengths (the graph derives them from the attention mask) and, when the past and present KV tensors are
the same memory, writes each new token's keys and values in place at that sequence's own position. So:

* the pool holds, per layer, one key and one value array shaped [slots, kv_heads, max_length, head_size];
* running sequences occupy slots 0..n-1, and one decode step for all of them binds the first n slots as
  both past and present, with an attention mask whose row b has as many ones as sequence b is long;
* a new sequence is prefilled into the next free slot (a batch of one over that slot's memory);
* a finished sequence's slot is refilled by moving the last running sequence into it (its keys and
  values up to its length), which keeps the running slots contiguous.

Nothing is copied per step: inputs and outputs are bound by address. The attention kernel reads only each
row's own length, so an idle tail of the pool costs memory, not time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from ferry_runtime.errors import ModelLoadError
from ferry_runtime.generative.config import DecoderConfig

_KV_TYPES: dict[str, type[np.generic]] = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


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
        shape = (slots, config.kv_heads, max_length, config.head_size)
        self._keys = [np.zeros(shape, self.kv_type) for _ in range(config.layers)]
        self._values = [np.zeros(shape, self.kv_type) for _ in range(config.layers)]
        self._slot_stride = config.kv_heads * max_length * config.head_size * np.dtype(self.kv_type).itemsize
        self._decode_logits = np.empty((slots, 1, config.vocab_size), np.float32)
        self._positions = np.arange(max_length, dtype=np.int64)

    @property
    def pool_bytes(self) -> int:
        return 2 * self.config.layers * self.slots * self._slot_stride

    def prefill(self, slot: int, tokens: Sequence[int]) -> npt.NDArray[np.float32]:
        """Run a prompt into an empty slot; the logits of its last position."""
        count = len(tokens)
        ids = np.asarray(tokens, dtype=np.int64).reshape(1, count)
        mask = np.ones((1, count), dtype=np.int64)
        logits = np.empty((1, count, self.config.vocab_size), np.float32)
        self._run(slot, 1, ids, mask, logits)
        last: npt.NDArray[np.float32] = logits[0, -1]
        return last

    def decode(
        self, tokens: npt.NDArray[np.int64], lengths: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float32]:
        """One step for the sequences in slots 0..n-1: `tokens[b]` is appended to sequence b, which holds
        `lengths[b]` tokens before it. Returns logits [n, vocab] (a view, valid until the next step)."""
        count = tokens.shape[0]
        totals = lengths + 1
        mask = (self._positions[: int(totals.max())] < totals[:, None]).astype(np.int64)
        logits = self._decode_logits[:count]
        self._run(0, count, tokens.reshape(count, 1), mask, logits)
        return logits[:, 0]

    def move(self, source: int, destination: int, length: int) -> None:
        """Copy a sequence's first `length` positions of keys and values from one slot to another."""
        for cache in (*self._keys, *self._values):
            cache[destination, :, :length] = cache[source, :, :length]

    def _run(
        self,
        first_slot: int,
        count: int,
        ids: npt.NDArray[np.int64],
        mask: npt.NDArray[np.int64],
        logits: npt.NDArray[np.float32],
    ) -> None:
        config = self.config
        binding = self._session.io_binding()
        binding.bind_cpu_input(config.input_ids_name, ids)
        binding.bind_cpu_input(config.attention_mask_name, mask)
        shape = [count, config.kv_heads, self.max_length, config.head_size]
        offset = first_slot * self._slot_stride
        for layer in range(config.layers):
            for past, present, cache in (
                (config.past_key_names[layer], config.present_key_names[layer], self._keys[layer]),
                (config.past_value_names[layer], config.present_value_names[layer], self._values[layer]),
            ):
                # Past and present bound to the same address: the kernel appends in place.
                address = cache.ctypes.data + offset
                binding.bind_input(past, "cpu", 0, self.kv_type, shape, address)
                binding.bind_output(present, "cpu", 0, self.kv_type, shape, address)
        binding.bind_output(config.logits_name, "cpu", 0, np.float32, list(logits.shape), logits.ctypes.data)
        self._session.run_with_iobinding(binding)
