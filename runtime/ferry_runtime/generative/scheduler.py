"""Continuous batching: one thread owns the engine and, between decode steps, admits and retires sequences.

Each iteration of the loop:
1. retire sequences that finished or were cancelled (a client that went away frees its slot at once);
2. admit waiting sequences into free slots and prefill them, at most `max_prefill_tokens` prompt tokens
   per iteration (a longer prompt is prefilled in chunks over several iterations), so a burst of new
   requests or one long prompt never stalls the running streams for more than one budget;
3. run one decode step for every running sequence and sample its next token.

So a request that arrives mid-batch produces its first token after at most one decode step and its own
prefill, not after the batch. Tokens go back to the event loop in one callback per iteration.

The thread builds the engine itself and runs at a lower CPU priority (nice +10) than the
event loop, and ONNX Runtime's pool threads, created with the session, inherit it: on a small machine
the engine's threads would otherwise keep the loop from streaming tokens out while they spin between
operators, and a token that is computed but not sent is latency for nothing.
The waiting queue is bounded: beyond it `submit` raises Unavailable (503 with Retry-After).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np

from ferry_runtime.errors import FerryError, InferenceFailed, Unavailable
from ferry_runtime.generative.engine import DecoderEngine
from ferry_runtime.generative.sampling import Sampler

log = logging.getLogger(__name__)

# Added to the scheduler thread's niceness (lower priority than the event loop; see the module docstring).
ENGINE_NICENESS = 10

# (token ids produced since the last delivery, finish reason or None, error or None)
Deliver = Callable[[list[int], str | None, FerryError | None], None]


class Sequence:
    """One request's generation, shared by the event loop (which may cancel it) and the scheduler thread."""

    __slots__ = (
        "cancelled",
        "deliver",
        "eos_token_ids",
        "generated",
        "last_token",
        "length",
        "max_new_tokens",
        "prompt",
        "sampler",
        "submitted",
    )

    def __init__(
        self,
        prompt: list[int],
        sampler: Sampler,
        max_new_tokens: int,
        eos_token_ids: frozenset[int],
        deliver: Deliver,
    ) -> None:
        self.prompt = prompt
        self.sampler = sampler
        self.max_new_tokens = max_new_tokens
        self.eos_token_ids = eos_token_ids
        self.deliver = deliver
        # Set from the event loop (client gone, stop string matched); read by the scheduler thread.
        self.cancelled = False
        self.submitted = time.perf_counter()
        # Tokens whose keys and values are in the cache, and the newest token (not yet in the cache).
        self.length = 0
        self.last_token = 0
        self.generated = 0


_Emission = tuple[Sequence, int | None, str | None, FerryError | None]


class Scheduler:
    def __init__(
        self,
        build_engine: Callable[[], DecoderEngine],
        loop: asyncio.AbstractEventLoop,
        max_waiting: int,
        max_prefill_tokens: int,
    ) -> None:
        self._build_engine = build_engine
        self._built = threading.Event()
        self._build_error: BaseException | None = None
        self.engine: DecoderEngine | None = None
        self.loop = loop
        self.max_waiting = max_waiting
        self.max_prefill_tokens = max_prefill_tokens
        self._waiting: deque[Sequence] = deque()
        # Decoding sequences, in slots 0..n-1.
        self._running: list[Sequence] = []
        # The one sequence whose prompt is being prefilled, chunk by chunk, in slot n.
        self._prefilling: Sequence | None = None
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name="ferry-generate", daemon=True)

    # --- read at scrape time (plain ints: a stale read is harmless) ---

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._running) + (self._prefilling is not None)

    @property
    def cached_tokens(self) -> int:
        prefilling = self._prefilling
        return sum(sequence.length for sequence in list(self._running)) + (
            prefilling.length if prefilling else 0
        )

    @property
    def token_capacity(self) -> int:
        engine = self.engine
        return engine.slots * engine.max_length if engine else 0

    # --- event-loop side ---

    def start(self) -> DecoderEngine:
        """Start the thread; returns once it has built the engine (or raises what building raised)."""
        self._thread.start()
        self._built.wait()
        if self._build_error is not None:
            raise self._build_error
        assert self.engine is not None
        return self.engine

    def submit(self, sequence: Sequence) -> None:
        with self._wake:
            if self._stopping:
                raise Unavailable("the server is shutting down; retry on another replica")
            if len(self._waiting) >= self.max_waiting:
                raise Unavailable(
                    f"{len(self._waiting)} requests are already waiting for a generation slot "
                    f"(the limit is {self.max_waiting}); retry later",
                    retry_after_seconds=1,
                )
            self._waiting.append(sequence)
            self._wake.notify()

    def stop(self, timeout: float) -> None:
        """Cancel what is left and end the thread (after the server's drain grace)."""
        with self._wake:
            self._stopping = True
            for sequence in (*self._waiting, *self._running, *filter(None, [self._prefilling])):
                sequence.cancelled = True
            self._wake.notify()
        self._thread.join(timeout)

    # --- scheduler thread ---

    def _serve(self) -> None:
        try:
            # Lowering one's own priority needs no privilege; where it is refused the engine still runs.
            niceness = os.getpriority(os.PRIO_PROCESS, 0) + ENGINE_NICENESS
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
        except OSError as error:
            log.warning("cannot lower the generation thread's priority: %s", error)
        try:
            self.engine = self._build_engine()
        except BaseException as error:  # handed to start(), on the loading thread
            self._build_error = error
            return
        finally:
            self._built.set()
        self._loop_forever()

    def _loop_forever(self) -> None:
        while True:
            with self._wake:
                while not (self._waiting or self._running or self._prefilling or self._stopping):
                    self._wake.wait()
                if self._stopping and not self._running:
                    cancelled = [*filter(None, [self._prefilling]), *self._waiting]
                    self._waiting.clear()
                    self._prefilling = None
                    self._send([(sequence, None, "cancelled", None) for sequence in cancelled])
                    return
            emissions: list[_Emission] = []
            try:
                self._retire(emissions)
                self._admit(emissions)
                self._step(emissions)
            except Exception as error:  # an engine failure ends every running sequence, not the server
                log.exception("generation step failed")
                failure = InferenceFailed(f"generation failed: {error}")
                failed = [*self._running, *filter(None, [self._prefilling])]
                emissions.extend((sequence, None, "error", failure) for sequence in failed)
                self._running.clear()
                self._prefilling = None
            self._send(emissions)

    def _engine(self) -> DecoderEngine:
        engine = self.engine
        assert engine is not None, "the scheduler thread uses the engine only after building it"
        return engine

    def _retire(self, emissions: list[_Emission]) -> None:
        running = self._running
        for index in range(len(running) - 1, -1, -1):
            if running[index].cancelled:
                emissions.append((running[index], None, "cancelled", None))
                self._free(index)

    def _free(self, index: int) -> None:
        running = self._running
        last = len(running) - 1
        if index != last:
            self._engine().move(last, index, running[last].length)
            running[index] = running[last]
        running.pop()
        prefilling = self._prefilling
        if prefilling is not None and prefilling.length:
            # The half-prefilled prompt follows the running slots down by one.
            self._engine().move(last + 1, last, prefilling.length)

    def _admit(self, emissions: list[_Emission]) -> None:
        """Prefill up to `max_prefill_tokens` prompt tokens: the current prompt's next chunk, then the
        next waiting requests' while budget and slots remain. A prompt longer than the budget is
        prefilled over several iterations, so running streams never stall for more than one budget."""
        engine = self._engine()
        budget = self.max_prefill_tokens
        while budget > 0:
            sequence = self._prefilling
            if sequence is None:
                if len(self._running) >= engine.slots:
                    return
                with self._wake:
                    if not self._waiting:
                        return
                    sequence = self._waiting.popleft()
                sequence.length = 0
                self._prefilling = sequence
            slot = len(self._running)
            if sequence.cancelled:
                emissions.append((sequence, None, "cancelled", None))
                self._prefilling = None
                continue
            chunk = sequence.prompt[sequence.length : sequence.length + budget]
            logits = engine.prefill(slot, chunk, sequence.length)
            sequence.length += len(chunk)
            budget -= len(chunk)
            if sequence.length < len(sequence.prompt):
                return
            self._prefilling = None
            self._running.append(sequence)
            self._accept(slot, sequence, sequence.sampler.choose(logits), emissions)
            # Each first token goes out as soon as its prefill is done, not after the whole admission.
            self._send(emissions[:])
            emissions.clear()

    def _step(self, emissions: list[_Emission]) -> None:
        running = self._running
        if not running:
            return
        tokens = np.fromiter((s.last_token for s in running), dtype=np.int64, count=len(running))
        lengths = np.fromiter((s.length for s in running), dtype=np.int64, count=len(running))
        partial = self._prefilling.length if self._prefilling is not None else 0
        logits = self._engine().decode(tokens, lengths, partial)
        for index in range(len(running) - 1, -1, -1):
            sequence = running[index]
            sequence.length += 1
            self._accept(index, sequence, sequence.sampler.choose(logits[index]), emissions)

    def _accept(self, slot: int, sequence: Sequence, token: int, emissions: list[_Emission]) -> None:
        sequence.last_token = token
        sequence.generated += 1
        finish: str | None = None
        if token in sequence.eos_token_ids:
            finish = "stop"
        elif (
            sequence.generated >= sequence.max_new_tokens or sequence.length + 1 >= self._engine().max_length
        ):
            finish = "length"
        emissions.append((sequence, token, finish, None))
        if finish is not None:
            self._free(slot)

    def _send(self, emissions: list[_Emission]) -> None:
        if emissions:
            self.loop.call_soon_threadsafe(_deliver_all, emissions)


def _deliver_all(emissions: list[_Emission]) -> None:
    """On the event loop: hand each sequence the tokens of this iteration (in order) and its end."""
    pending: dict[int, tuple[Sequence, list[int]]] = {}
    for sequence, token, finish, error in emissions:
        entry = pending.setdefault(id(sequence), (sequence, []))
        if token is not None:
            entry[1].append(token)
        if finish is not None:
            del pending[id(sequence)]
            sequence.deliver(entry[1], finish, error)
    for sequence, tokens in pending.values():
        sequence.deliver(tokens, None, None)
