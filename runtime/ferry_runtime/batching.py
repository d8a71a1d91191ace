"""Dynamic batching as a wrapper around `Model.predict`, with a bounded queue.

Requests are queued from the event loop; worker threads take the first waiting request, add whatever
else arrives within `max_delay` (up to `max_batch_size` rows), run one `predict` per group of
compatible requests (same dtypes and same non-batch dimensions), split the outputs, and hand all results
of the batch back to the event loop in one wake-up. With `max_delay` 0 a batch is whatever queued up
while the previous batch ran: no added latency when idle, large batches under load. Thread hand-offs
are paid once per batch, not once per request, which is most of the per-request CPU at high load.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial
from typing import Final

import numpy as np

from ferry_runtime.errors import FerryError, InferenceFailed, InvalidInput, Unavailable
from ferry_runtime.metrics import BatchRecorder
from ferry_runtime.model import Array, Model

log = logging.getLogger(__name__)

Outputs = dict[str, Array]
Outcome = Outputs | BaseException
Deliver = Callable[[Outcome], None]


class _Pending:
    __slots__ = ("deliver", "enqueued", "inputs", "loop", "rows")

    def __init__(
        self,
        inputs: dict[str, Array],
        rows: int,
        deliver: Deliver,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.inputs = inputs
        # Batch rows this request adds; 0 = not batchable (runs alone).
        self.rows = rows
        # Called on `loop` with the outcome; a plain callback rather than a future, because a future's
        # done-callbacks each cost one more scheduled handle per request.
        self.deliver = deliver
        self.loop = loop
        self.enqueued = time.perf_counter()


def _settle(future: asyncio.Future[Outputs], outcome: Outcome) -> None:
    if future.done():
        return  # cancelled by its caller meanwhile
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


_STOP: Final = object()


class Batcher:
    def __init__(
        self,
        model: Model,
        *,
        max_batch_size: int,
        max_delay_seconds: float,
        max_queue_size: int,
        workers: int,
        recorder: BatchRecorder,
        classify_error: Callable[[Exception], FerryError],
    ) -> None:
        self.model = model
        self.max_batch_size = max_batch_size if model.batchable else 1
        self.max_delay = max_delay_seconds
        self.max_queue_size = max_queue_size
        self._recorder = recorder
        self._classify_error = classify_error
        # Each queue entry is the list of requests that arrived in one event-loop iteration (or _STOP).
        self._queue: queue.SimpleQueue[list[_Pending] | object] = queue.SimpleQueue()
        self._collecting: list[_Pending] | None = None
        # Single-writer counters (submitted: event loop; started: workers), so their difference is exact.
        self._submitted = 0
        self._started = 0
        self._threads = [
            threading.Thread(target=self._work, name=f"ferry-inference-{index}", daemon=True)
            for index in range(workers)
        ]
        self._name = model.metadata.name

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def depth(self) -> int:
        """Requests queued and not yet started."""
        return self._submitted - self._started

    def submit(self, inputs: dict[str, Array], loop: asyncio.AbstractEventLoop) -> asyncio.Future[Outputs]:
        """Queue validated inputs; the future resolves on `loop`. Raises Unavailable when the queue is full.

        Must be called on `loop`'s thread (see `enqueue`).
        """
        future: asyncio.Future[Outputs] = loop.create_future()
        self.enqueue(inputs, loop, partial(_settle, future))
        return future

    def enqueue(self, inputs: dict[str, Array], loop: asyncio.AbstractEventLoop, deliver: Deliver) -> None:
        """Queue validated inputs; `deliver` is called on `loop` with the outputs or the error.

        Raises Unavailable when the queue is full. Must be called on `loop`'s thread. Requests
        submitted during one loop iteration reach the workers together, at the end of the iteration:
        one thread wake-up for all of them, and the batch they form is what arrived concurrently.
        """
        if self._submitted - self._started >= self.max_queue_size:
            raise Unavailable(
                f"model '{self._name}' is overloaded: {self.max_queue_size} requests already queued; "
                f"retry later"
            )
        pending = _Pending(inputs, _batch_rows(inputs) if self.max_batch_size > 1 else 0, deliver, loop)
        self._submitted += 1
        if self._collecting is None:
            self._collecting = [pending]
            loop.call_soon(self._flush)
        else:
            self._collecting.append(pending)

    def _flush(self) -> None:
        collected, self._collecting = self._collecting, None
        if collected:
            self._queue.put(collected)

    def stop(self, timeout: float) -> None:
        for _ in self._threads:
            self._queue.put(_STOP)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    # --- worker threads ---

    def _work(self) -> None:
        backlog: deque[_Pending] = deque()
        while True:
            if not backlog:
                received = self._queue.get()
                if received is _STOP:
                    return
                backlog.extend(received)  # type: ignore[arg-type]
            first = backlog.popleft()
            batch = [first]
            if first.rows:
                self._fill(batch, backlog, first.rows, first.enqueued + self.max_delay)
            self._started += len(batch)
            self._run(batch)

    def _fill(self, batch: list[_Pending], backlog: deque[_Pending], rows: int, deadline: float) -> None:
        """Add compatible waiting requests to `batch` until it is full or the delay is spent."""
        while rows < self.max_batch_size:
            if not backlog:
                try:
                    received = self._queue.get_nowait()
                except queue.Empty:
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        return
                    try:
                        received = self._queue.get(timeout=remaining)
                    except queue.Empty:
                        return
                if received is _STOP:
                    self._queue.put(_STOP)  # seen again once the backlog is done
                    return
                backlog.extend(received)  # type: ignore[arg-type]
            candidate = backlog[0]
            if not candidate.rows or rows + candidate.rows > self.max_batch_size:
                return
            batch.append(backlog.popleft())
            rows += candidate.rows

    def _run(self, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        outcomes = [self._predict_one(batch[0].inputs)] if len(batch) == 1 else self._predict_grouped(batch)
        inference_seconds = time.perf_counter() - started
        queue_waits = [started - item.enqueued for item in batch]
        loop = batch[0].loop
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Deliver, Outcome]]]
        if all(item.loop is loop for item in batch):  # one server loop: the usual case
            by_loop = {loop: [(item.deliver, outcome) for item, outcome in zip(batch, outcomes, strict=True)]}
        else:
            by_loop = {}
            for item, outcome in zip(batch, outcomes, strict=True):
                by_loop.setdefault(item.loop, []).append((item.deliver, outcome))
        for loop, results in by_loop.items():
            try:
                # Metrics are recorded on the loop thread too: their single writer (see metrics.py).
                loop.call_soon_threadsafe(self._deliver, results, queue_waits, inference_seconds)
            except RuntimeError:
                log.warning("event loop closed before %d results could be delivered", len(results))
            queue_waits = []

    def _deliver(
        self,
        results: list[tuple[Deliver, Outcome]],
        queue_waits: list[float],
        inference_seconds: float,
    ) -> None:
        if queue_waits:
            self._recorder.record(queue_waits, inference_seconds)
        for deliver, outcome in results:
            try:
                deliver(outcome)
            except Exception:  # one failing transport callback must not strand the rest of the batch
                log.exception("delivering an inference result failed")

    def _predict_one(self, inputs: dict[str, Array]) -> Outcome:
        try:
            return self.model.predict(inputs)
        except Exception as error:
            return self._classify_error(error)

    def _predict_grouped(self, batch: Sequence[_Pending]) -> list[Outcome]:
        # Requests join when their inputs agree in dtype and in every dimension after the batch one.
        # The dtype's number stands for the dtype: hashing a numpy dtype object costs microseconds.
        groups: dict[tuple[tuple[int, tuple[int, ...]], ...], list[int]] = {}
        for index, item in enumerate(batch):
            signature = tuple([(array.dtype.num, array.shape[1:]) for array in item.inputs.values()])
            members = groups.get(signature)
            if members is None:
                groups[signature] = [index]
            else:
                members.append(index)
        if len(groups) == 1:
            return self._predict_group(batch)
        outcomes: list[Outcome | None] = [None] * len(batch)
        for indices in groups.values():
            members_of_group = [batch[index] for index in indices]
            for index, outcome in zip(indices, self._predict_group(members_of_group), strict=True):
                outcomes[index] = outcome
        return [outcome for outcome in outcomes if outcome is not None]

    def _predict_group(self, members: Sequence[_Pending]) -> list[Outcome]:
        if len(members) == 1:
            return [self._predict_one(members[0].inputs)]
        names = members[0].inputs.keys()
        joined = {name: np.concatenate([member.inputs[name] for member in members]) for name in names}
        try:
            outputs = self.model.predict(joined)
        except Exception:
            # One bad request must not fail its neighbours: run them alone to find out which.
            return [self._predict_one(member.inputs) for member in members]
        total = sum([member.rows for member in members])
        output_names = list(outputs)
        values = list(outputs.values())
        if any(value.shape[:1] != (total,) for value in values):
            log.warning("model '%s' outputs do not follow the batch dimension; batching disabled", self._name)
            self.max_batch_size = 1
            return [self._predict_one(member.inputs) for member in members]
        results: list[Outcome] = []
        offset = 0
        for member in members:
            end = offset + member.rows
            results.append(dict(zip(output_names, [value[offset:end] for value in values], strict=True)))
            offset = end
        return results


def _batch_rows(inputs: dict[str, Array]) -> int:
    """The shared first dimension of all inputs, or 0 when they disagree (such a request runs alone)."""
    rows = -1
    for array in inputs.values():
        if array.ndim == 0:
            return 0
        if rows == -1:
            rows = array.shape[0]
        elif array.shape[0] != rows:
            return 0
    return max(rows, 0)


def classify_onnxruntime_error(model_name: str) -> Callable[[Exception], FerryError]:
    """ONNX Runtime's INVALID_ARGUMENT (e.g. an index out of range) is the client's fault, not a 500."""

    def classify(error: Exception) -> FerryError:
        if isinstance(error, FerryError):
            return error
        text = str(error)
        if type(error).__name__ == "InvalidArgument" or text.startswith("[ONNXRuntimeError] : 2 :"):
            return InvalidInput(f"model '{model_name}' rejected the input: {text}")
        log.error("inference failed on model '%s': %s", model_name, text)
        return InferenceFailed(f"model '{model_name}' failed: {text}")

    return classify
