"""Ground-truth feedback: online accuracy of the served model, from labels that arrive after the prediction.

A client that sets the v2 request `id` on an inference can later POST the truth for it to
`/v2/models/{m}/feedback`: `{"id": "...", "label": 3}` (one class label, or a list with one per row of the
request), or `{"id": "...", "label": {"outputs": {"<output>": <expected values>}, "tolerance": 0.01}}`.

Memory is bounded: each replica remembers the outputs of its last `capacity` predictions that carried an
id, for at most `ttl_seconds`, in insertion order (a dict used as a ring: the oldest is evicted first),
at most `MAX_RETAINED_BYTES` of outputs per prediction (outputs beyond it are not kept). An output that is
a view into a batch's output is copied unless that batch array is small (`SHARED_BATCH_BYTES`), so a
prediction never pins a large batch. Ids evicted, expired or already scored are remembered as tombstones
(as many as `capacity`), so late feedback is told 410/409 with the reason instead of a bare 404.
Everything runs on the event-loop thread (the REST server's), so no locks: retaining a prediction is a
dict insertion and, for large batches, a copy of the request's rows.

How a prediction is scored against a label: the scored output (the request's `output`, default the
model's first output) holds per row either one value (a class id or name, as skl2onnx's `label` output;
or one probability, class 1 when >= 0.5) or several (scores or probabilities: the class is the argmax).
Expected outputs score a row correct when every value of it equals the expected one, within `tolerance`
for floating-point outputs.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ferry_runtime.errors import Conflict, Gone, InvalidInput, NotFound

# Outputs kept per prediction (a 1000-class float32 score vector is 4 KB; embeddings and images are not
# kept). Each prediction also holds its request id, and later its tombstone does, each at most
# --max-request-id-bytes (1 KiB by default, the data plane refuses longer ids): with the default capacity
# of 4096 the store holds at most 4096 x (16 + 4 + 2 x 1) KiB = 88 MiB.
MAX_RETAINED_BYTES = 16 * 1024
# A view into a batch output at most this large is kept as is (pinning it is cheaper than a copy).
SHARED_BATCH_BYTES = 4 * 1024
# Expired predictions are dropped every this many insertions (lookups check the age themselves).
EXPIRY_SWEEP_EVERY = 64
DEFAULT_FLOAT_TOLERANCE = 1e-6
# Why an id can no longer be scored, as remembered in a tombstone (also the rejection metric's reason).
EVICTED, EXPIRED, SCORED = "evicted", "expired", "scored"
UNKNOWN, INVALID = "unknown", "invalid"
REJECTION_REASONS = (UNKNOWN, EVICTED, EXPIRED, SCORED, INVALID)

Array = npt.NDArray[Any]


@dataclass(frozen=True, slots=True)
class Labels:
    """Class labels, one per row of the prediction."""

    values: Array
    # The output they are compared with; None = the model's first output.
    output: str | None


@dataclass(frozen=True, slots=True)
class ExpectedOutputs:
    """Expected output values; a row is correct when all of them match."""

    outputs: dict[str, Array]
    # Absolute tolerance for floating-point outputs.
    tolerance: float


Truth = Labels | ExpectedOutputs


@dataclass(frozen=True, slots=True)
class Verdict:
    rows: int
    correct: int
    # Accuracy over the sliding window after this feedback.
    window_accuracy: float


def parse_feedback(document: Any, model_name: str) -> tuple[str, Truth]:
    """(request id, truth) from a feedback body; InvalidInput naming the field when it is malformed."""
    where = f"feedback for model '{model_name}'"
    if not isinstance(document, dict):
        raise InvalidInput(f"{where}: the body must be a JSON object, got {type(document).__name__}")
    request_id = document.get("id")
    if not isinstance(request_id, str) or not request_id:
        raise InvalidInput(
            f"{where}: 'id' must be the non-empty string `id` of an inference request, got {request_id!r}"
        )
    if "label" not in document:
        raise InvalidInput(
            f"{where}: 'label' is required: a class label, a list with one per row, "
            f'or {{"outputs": {{"<output>": <values>}}}}'
        )
    label = document["label"]
    output = document.get("output")
    if output is not None and not isinstance(output, str):
        raise InvalidInput(f"{where}: 'output' must be an output name, got {output!r}")
    if isinstance(label, dict):
        return request_id, _expected_outputs(label, where)
    values = _array(label, where, "'label'")
    if values.dtype.kind not in "biuU" and not (values.dtype.kind == "f" and _integral(values)):
        raise InvalidInput(
            f"{where}: 'label' must be class labels (integers or strings, one per row), got {label!r}"
        )
    return request_id, Labels(values.reshape(-1), output)


def _array(data: Any, where: str, what: str) -> Array:
    """Nested lists as one array; ragged nesting (rows of different lengths) is the client's mistake."""
    try:
        return np.asarray(data)
    except (ValueError, TypeError) as error:
        raise InvalidInput(
            f"{where}: {what} must be a value or evenly nested lists (every row the same length): {error}"
        ) from None


def _integral(values: Array) -> bool:
    return bool(np.all(np.isfinite(values)) and np.all(np.mod(values, 1) == 0))


def _expected_outputs(label: dict[str, Any], where: str) -> ExpectedOutputs:
    raw = label.get("outputs")
    if isinstance(raw, list):  # the v2 response shape: [{"name": ..., "data": ...}]
        if not all(isinstance(item, dict) and isinstance(item.get("name"), str) for item in raw):
            raise InvalidInput(f"{where}: 'label.outputs' as a list must hold {{name, data}} objects")
        raw = {item["name"]: item.get("data") for item in raw}
    if not isinstance(raw, dict) or not raw:
        raise InvalidInput(
            f"{where}: 'label' as an object needs 'outputs': {{\"<output>\": <expected values>}}, "
            f"got keys {sorted(label)}"
        )
    tolerance = label.get("tolerance", DEFAULT_FLOAT_TOLERANCE)
    if not isinstance(tolerance, int | float) or isinstance(tolerance, bool) or tolerance < 0:
        raise InvalidInput(f"{where}: 'label.tolerance' must be a number >= 0, got {tolerance!r}")
    outputs = {}
    for name, data in raw.items():
        values = _array(data, where, f"expected output '{name}'")
        if values.dtype.kind not in "biufU":
            raise InvalidInput(
                f"{where}: expected output '{name}' must be numbers or strings (nested lists), got {data!r}"
            )
        outputs[name] = values
    return ExpectedOutputs(outputs, float(tolerance))


class FeedbackStore:
    """Recent predictions by request id, and the accuracy of those that got feedback."""

    def __init__(
        self,
        model_name: str,
        output_names: Sequence[str],
        *,
        capacity: int,
        ttl_seconds: float,
        accuracy_window: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model_name = model_name
        self.output_names = tuple(output_names)
        self.capacity = capacity
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        # request id -> (when predicted, retained outputs); insertion order = age order.
        self._predictions: OrderedDict[str, tuple[float, dict[str, Array]]] = OrderedDict()
        # request id -> why it can no longer be scored (EVICTED, EXPIRED, SCORED).
        self._tombstones: OrderedDict[str, str] = OrderedDict()
        self._window: deque[bool] = deque()
        self._window_size = accuracy_window
        self._window_correct = 0
        self._inserted = 0
        # Counters for the metrics (single writer: the event loop).
        self.scored_rows = 0
        self.correct_rows = 0
        self.rejected = dict.fromkeys(REJECTION_REASONS, 0)

    # --- the inference path ---

    def remember(self, request_id: str, outputs: Mapping[str, Array]) -> None:
        """Retain a prediction for later feedback (a reused id replaces the older prediction)."""
        predictions = self._predictions
        now = self._clock()
        retained = {}
        budget = MAX_RETAINED_BYTES
        for name, array in outputs.items():
            size = array.nbytes
            if size > budget:
                continue
            budget -= size
            base = array.base
            pinned_small = base is None or (
                isinstance(base, np.ndarray) and base.nbytes <= SHARED_BATCH_BYTES
            )
            retained[name] = array if pinned_small else array.copy()
        predictions.pop(request_id, None)
        predictions[request_id] = (now, retained)
        if len(predictions) > self.capacity:
            self._bury(predictions.popitem(last=False)[0], EVICTED)
        self._inserted += 1
        if self._inserted % EXPIRY_SWEEP_EVERY == 0:
            self._expire(now)

    def _expire(self, now: float) -> None:
        predictions = self._predictions
        # Oldest first: expired entries are all at the front.
        while predictions:
            oldest, (when, _) = next(iter(predictions.items()))
            if now - when <= self.ttl_seconds:
                return
            del predictions[oldest]
            self._bury(oldest, EXPIRED)

    @property
    def retained(self) -> int:
        return len(self._predictions)

    # --- feedback ---

    def score(self, request_id: str, truth: Truth) -> Verdict:
        """Score the prediction of `request_id` against `truth`; raises NotFound (unknown id), Gone
        (evicted or expired), Conflict (already scored) or InvalidInput, each counted as a rejection."""
        outputs = self._lookup(request_id)
        if isinstance(outputs, str):
            self.rejected[outputs] += 1
            raise self._rejection(request_id, outputs)
        try:
            correct = self._compare(request_id, outputs, truth)
        except InvalidInput:
            self.rejected[INVALID] += 1
            raise
        del self._predictions[request_id]
        self._bury(request_id, SCORED)
        rows = len(correct)
        hits = int(np.count_nonzero(correct))
        self.scored_rows += rows
        self.correct_rows += hits
        self._slide(correct.tolist())
        return Verdict(rows, hits, self.window_accuracy)

    @property
    def window_accuracy(self) -> float:
        return self._window_correct / len(self._window) if self._window else float("nan")

    @property
    def window_samples(self) -> int:
        return len(self._window)

    def _lookup(self, request_id: str) -> dict[str, Array] | str:
        """The retained outputs, or the reason (UNKNOWN, EVICTED, EXPIRED, SCORED) there are none."""
        entry = self._predictions.get(request_id)
        if entry is None:
            return self._tombstones.get(request_id, UNKNOWN)
        when, outputs = entry
        if self._clock() - when > self.ttl_seconds:
            del self._predictions[request_id]
            self._bury(request_id, EXPIRED)
            return EXPIRED
        return outputs

    def _rejection(self, request_id: str, reason: str) -> NotFound | Gone | Conflict:
        prefix = f"model '{self.model_name}': the prediction for request id '{request_id}'"
        if reason == SCORED:
            return Conflict(f"{prefix} already got feedback; each prediction is scored once")
        if reason == EXPIRED:
            return Gone(f"{prefix} is older than the feedback window of {self.ttl_seconds:g} s")
        if reason == EVICTED:
            return Gone(
                f"{prefix} was evicted: this replica keeps its last {self.capacity} predictions "
                f"that had an id"
            )
        return NotFound(
            f"model '{self.model_name}': no prediction with request id '{request_id}' on this replica; "
            f"feedback matches the 'id' of an inference this replica answered within the last "
            f"{self.ttl_seconds:g} s (it keeps its last {self.capacity} predictions that had an id)"
        )

    def _compare(self, request_id: str, outputs: dict[str, Array], truth: Truth) -> npt.NDArray[np.bool_]:
        where = f"feedback for request id '{request_id}' of model '{self.model_name}'"
        if isinstance(truth, Labels):
            name = truth.output or self.output_names[0]
            predicted = predicted_classes(self._output(outputs, name, where))
            labels = truth.values
            if len(labels) != len(predicted):
                raise InvalidInput(
                    f"{where}: {len(labels)} label(s) given; the prediction has {len(predicted)} row(s) "
                    f"of output '{name}'"
                )
            if predicted.dtype.kind in "OUS" or labels.dtype.kind == "U":
                return np.asarray([str(p) == str(t) for p, t in zip(predicted, labels, strict=True)])
            return np.asarray(predicted == labels.astype(np.int64))
        correct: npt.NDArray[np.bool_] | None = None
        for name, expected in truth.outputs.items():
            predicted = self._output(outputs, name, where)
            if expected.size != predicted.size:
                raise InvalidInput(
                    f"{where}: expected output '{name}' has {expected.size} value(s); the prediction has "
                    f"{predicted.size} (shape {list(predicted.shape)})"
                )
            got = _by_row(predicted)
            want = expected.reshape(got.shape)
            if got.dtype.kind == "f":
                if want.dtype.kind not in "biuf":
                    raise InvalidInput(f"{where}: expected output '{name}' must be numbers")
                match = np.isclose(got, want.astype(np.float64), rtol=0.0, atol=truth.tolerance)
            else:
                match = got.astype(str) == want.astype(str)
            per_row: npt.NDArray[np.bool_] = np.asarray(match.all(axis=1))
            correct = per_row if correct is None else correct & per_row
        assert correct is not None
        return correct

    def _output(self, outputs: dict[str, Array], name: str, where: str) -> Array:
        array = outputs.get(name)
        if array is not None:
            return array
        if name in self.output_names:
            raise InvalidInput(
                f"{where}: output '{name}' is not retained for feedback (a prediction keeps at most "
                f"{MAX_RETAINED_BYTES} bytes of outputs); score another output with 'output'"
            )
        raise InvalidInput(
            f"{where}: the model has no output '{name}'; its outputs are: {', '.join(self.output_names)}"
        )

    def _bury(self, request_id: str, reason: str) -> None:
        tombstones = self._tombstones
        tombstones.pop(request_id, None)
        tombstones[request_id] = reason
        if len(tombstones) > self.capacity:
            tombstones.popitem(last=False)

    def _slide(self, results: list[bool]) -> None:
        window = self._window
        for result in results[-self._window_size :]:
            if len(window) == self._window_size:
                self._window_correct -= window.popleft()
            window.append(result)
            self._window_correct += result


def predicted_classes(array: Array) -> Array:
    """The predicted class per row of a classifier output (see the module docstring)."""
    per_row = _by_row(array)
    if per_row.shape[1] == 0:
        raise InvalidInput("the prediction has no values to score")
    if per_row.shape[1] == 1:
        values = per_row[:, 0]
        return (values >= 0.5).astype(np.int64) if values.dtype.kind == "f" else values
    classes: Array = per_row.argmax(axis=1)
    return classes


def _by_row(array: Array) -> Array:
    """The array as (rows, values per row); `reshape(rows, -1)` cannot do that for zero rows."""
    rows = array.shape[0] if array.ndim else 1
    width = 1
    for dim in array.shape[1:]:
        width *= dim
    return array.reshape(rows, width)
