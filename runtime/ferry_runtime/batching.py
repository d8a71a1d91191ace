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
from collections.abc import Callable, Sequence
from typing import Final

import numpy as np

from ferry_runtime.errors import FerryError, InferenceFailed, InvalidInput, Unavailable
from ferry_runtime.metrics import BatchRecorder
from ferry_runtime.model import Array, Model

log = logging.getLogger(__name__)

Outputs = dict[str, Array]
Outcome = Outputs | BaseException


class _Pending:
    __slots__ = ("enqueued", "future", "inputs", "loop", "rows")

    def __init__(
        self, inputs: dict[str, Array], rows: int, future: asyncio.Future[Outputs], loop: asyncio.AbstractEventLoop
    ) -> None:
        self.inputs = inputs
        # Batch rows this request adds; 0 = not batchable (runs alone).
        self.rows = rows
        self.future = future
        self.loop = loop
        self.enqueued = time.perf_counter()


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
        self._queue: queue.SimpleQueue[_Pending | object] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"ferry-inference-{index}", daemon=True)
            for index in range(workers)
        ]
        self._name = model.metadata.name

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def depth(self) -> int:
        return self._queue.qsize()

    def submit(self, inputs: dict[str, Array], loop: asyncio.AbstractEventLoop) -> asyncio.Future[Outputs]:
        """Queue validated inputs; the future resolves on `loop`. Raises Unavailable when the queue is full."""
        if self._queue.qsize() >= self.max_queue_size:
            raise Unavailable(
                f"model '{self._name}' is overloaded: {self.max_queue_size} requests already queued; "
                f"retry later"
            )
        future: asyncio.Future[Outputs] = loop.create_future()
        self._queue.put(_Pending(inputs, _batch_rows(inputs) if self.max_batch_size > 1 else 0, future, loop))
        return future

    def stop(self, timeout: float) -> None:
        for _ in self._threads:
            self._queue.put(_STOP)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    # --- worker threads ---

    def _work(self) -> None:
        carried: _Pending | None = None
        while True:
            first = carried if carried is not None else self._queue.get()
            carried = None
            if first is _STOP:
                return
            assert isinstance(first, _Pending)
            batch = [first]
            stop_after = False
            if first.rows:
                rows = first.rows
                deadline = first.enqueued + self.max_delay
                while rows < self.max_batch_size:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        remaining = deadline - time.perf_counter()
                        if remaining <= 0:
                            break
                        try:
                            item = self._queue.get(timeout=remaining)
                        except queue.Empty:
                            break
                    if item is _STOP:
                        stop_after = True
                        break
                    assert isinstance(item, _Pending)
                    if not item.rows or rows + item.rows > self.max_batch_size:
                        carried = item
                        break
                    batch.append(item)
                    rows += item.rows
            self._run(batch)
            if stop_after:
                if carried is not None:
                    self._run([carried])
                return

    def _run(self, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        outcomes: list[Outcome]
        if len(batch) == 1:
            outcomes = [self._predict_one(batch[0].inputs)]
        else:
            outcomes = self._predict_grouped(batch)
        finished = time.perf_counter()
        self._recorder.record([started - item.enqueued for item in batch], finished - started)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Outputs], Outcome]]] = {}
        for item, outcome in zip(batch, outcomes, strict=True):
            by_loop.setdefault(item.loop, []).append((item.future, outcome))
        for loop, results in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, results)
            except RuntimeError:
                log.warning("event loop closed before %d results could be delivered", len(results))

    def _predict_one(self, inputs: dict[str, Array]) -> Outcome:
        try:
            return self.model.predict(inputs)
        except Exception as error:
            return self._classify_error(error)

    def _predict_grouped(self, batch: Sequence[_Pending]) -> list[Outcome]:
        groups: dict[tuple[tuple[str, tuple[int, ...]], ...], list[int]] = {}
        for index, item in enumerate(batch):
            signature = tuple((array.dtype.str, array.shape[1:]) for array in item.inputs.values())
            groups.setdefault(signature, []).append(index)
        outcomes: list[Outcome | None] = [None] * len(batch)
        for indices in groups.values():
            members = [batch[index] for index in indices]
            for index, outcome in zip(indices, self._predict_group(members), strict=True):
                outcomes[index] = outcome
        return [outcome for outcome in outcomes if outcome is not None]

    def _predict_group(self, members: Sequence[_Pending]) -> list[Outcome]:
        if len(members) == 1:
            return [self._predict_one(members[0].inputs)]
        names = members[0].inputs.keys()
        joined = {name: np.concatenate([member.inputs[name] for member in members]) for name in names}
        total = sum(member.rows for member in members)
        try:
            outputs = self.model.predict(joined)
        except Exception:
            # One bad request must not fail its neighbours: run them alone to find out which.
            return [self._predict_one(member.inputs) for member in members]
        if any(value.shape[:1] != (total,) for value in outputs.values()):
            log.warning("model '%s' outputs do not follow the batch dimension; batching disabled", self._name)
            self.max_batch_size = 1
            return [self._predict_one(member.inputs) for member in members]
        results: list[Outcome] = []
        offset = 0
        for member in members:
            end = offset + member.rows
            results.append({name: value[offset:end] for name, value in outputs.items()})
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


def _deliver(results: list[tuple[asyncio.Future[Outputs], Outcome]]) -> None:
    for future, outcome in results:
        if future.done():
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


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
