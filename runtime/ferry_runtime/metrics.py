"""Prometheus metrics, all `ferry_`-prefixed, cheap enough for a request path of ~100 µs.

prometheus-client's Counter/Histogram take a lock per update (a histogram observation costs several
microseconds). Request and batch metrics here are written only from the event-loop thread, so they are
plain integers and lists exported by a custom collector at scrape time (the scrape runs on the same
loop, so it always reads a consistent state). Gauges that change rarely use prometheus-client directly;
in-flight requests and queue depth are computed at scrape time from counters the server keeps anyway.
Model-quality metrics (feedback accuracy, input drift) are read at scrape time from the feedback store
and the drift monitor, which are written on the same loop. docs/metrics.md documents every family.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from ferry_runtime.drift import DriftMonitor
from ferry_runtime.feedback import REJECTION_REASONS, FeedbackStore

# Per-request latencies on this server range from ~100 µs (a tiny model) to seconds (a big batch).
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# Generation: the first token waits for a prefill (and the queue); later tokens come one decode step apart.
FIRST_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
INTER_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
GENERATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Distribution:
    """A histogram for one label set: bucket counts (non-cumulative) and a sum; single writer."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        # One slot per bound plus +Inf; bisect_left puts a value equal to a bound in that bound's bucket.
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        running = 0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            buckets.append((bound, running))
        return buckets


class Metrics(Collector):
    """One registry per server, so several servers (or tests) in one process never collide."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        # (model, protocol, code) -> requests answered.
        self.request_counts: dict[tuple[str, str, str], int] = {}
        # model -> HTTP/1.1 requests refused by the transport, by reason (protocol/rest/server.py).
        self.http_rejected: dict[str, dict[str, int]] = {}
        # model -> authentication decisions by outcome (auth.py), both transports together.
        self.auth_decisions: dict[str, dict[str, int]] = {}
        # (model, protocol) -> total request time.
        self.request_seconds: dict[tuple[str, ...], Distribution] = {}
        # model -> queue wait, inference time per batch, requests per batch.
        self.queue_seconds: dict[str, Distribution] = {}
        self.inference_seconds: dict[str, Distribution] = {}
        self.batch_sizes: dict[str, Distribution] = {}
        # model -> generation latencies and token counts (generative models only).
        self.first_token_seconds: dict[str, Distribution] = {}
        self.inter_token_seconds: dict[str, Distribution] = {}
        self.generation_seconds: dict[str, Distribution] = {}
        self.prompt_tokens: dict[str, int] = {}
        self.generated_tokens: dict[str, int] = {}
        # model -> callables reading the scheduler: running, waiting, KV-cache tokens used and capacity.
        self.generation_gauges: dict[str, tuple[Callable[[], int], ...]] = {}
        # model -> its feedback store / drift monitor, when enabled.
        self.feedback: dict[str, FeedbackStore] = {}
        self.drift: dict[str, DriftMonitor] = {}
        # model -> accuracy measured by the optimizer on its validation data (reference.json).
        self.reference_accuracy: dict[str, float] = {}
        # The gRPC port's HTTP/2 transport writes these: refusals by reason, and how often a connection
        # stopped reading because its client did not read its responses (a one-element list).
        self.http2_rejected: dict[str, int] = {}
        self.http2_read_pauses: list[int] = [0]
        self.in_flight = Gauge(
            "ferry_requests_in_flight",
            "Inference requests received and not yet answered.",
            ["model"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "ferry_queue_depth",
            "Requests waiting for a batch slot (bounded by the queue size).",
            ["model"],
            registry=self.registry,
        )
        self.model_load_seconds = Gauge(
            "ferry_model_load_seconds",
            "Time to load and warm up the model.",
            ["model"],
            registry=self.registry,
        )
        self.model_ready = Gauge(
            "ferry_model_ready",
            "1 when the model is loaded, warmed up and not draining.",
            ["model"],
            registry=self.registry,
        )
        self.registry.register(self)

    def bind_gauges(
        self, model: str, in_flight: Callable[[], float], queue_depth: Callable[[], float]
    ) -> None:
        self.in_flight.labels(model).set_function(in_flight)
        self.queue_depth.labels(model).set_function(queue_depth)

    def describe(self) -> Iterator[Metric]:
        return self.collect()

    def _collect_generation(self) -> Iterator[Metric]:
        if not self.generation_gauges and not self.prompt_tokens:
            return
        yield _histogram(
            "ferry_generation_time_to_first_token_seconds",
            "From a generation request's admission to its first generated token.",
            ["model"],
            {(m,): d for m, d in self.first_token_seconds.items()},
        )
        yield _histogram(
            "ferry_generation_inter_token_seconds",
            "Time between consecutive generated tokens of one request.",
            ["model"],
            {(m,): d for m, d in self.inter_token_seconds.items()},
        )
        yield _histogram(
            "ferry_generation_duration_seconds",
            "From a generation request's admission to its last token.",
            ["model"],
            {(m,): d for m, d in self.generation_seconds.items()},
        )
        for name, help_text, series in (
            ("ferry_generation_prompt_tokens", "Prompt tokens of admitted requests.", self.prompt_tokens),
            ("ferry_generation_tokens", "Tokens generated.", self.generated_tokens),
        ):
            counter = CounterMetricFamily(name, help_text, labels=["model"])
            for model, count in series.items():
                counter.add_metric([model], count)
            yield counter
        running = GaugeMetricFamily(
            "ferry_generation_running_sequences", "Sequences in the running batch.", labels=["model"]
        )
        waiting = GaugeMetricFamily(
            "ferry_generation_waiting_sequences", "Requests waiting for a sequence slot.", labels=["model"]
        )
        usage = GaugeMetricFamily(
            "ferry_generation_kv_cache_usage_ratio",
            "Share of the KV-cache pool's token positions held by running sequences.",
            labels=["model"],
        )
        for model, (read_running, read_waiting, read_used, read_capacity) in self.generation_gauges.items():
            running.add_metric([model], read_running())
            waiting.add_metric([model], read_waiting())
            capacity = read_capacity()
            usage.add_metric([model], read_used() / capacity if capacity else 0.0)
        yield from (running, waiting, usage)

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "ferry_requests",
            "Inference requests answered, by model, protocol (rest|grpc) and status code.",
            labels=["model", "protocol", "code"],
        )
        for labels, count in self.request_counts.items():
            requests.add_metric(list(labels), count)
        yield requests
        yield _nested_counter(
            "ferry_http_rejected",
            "HTTP/1.1 requests refused before reaching an endpoint (limits, timeouts, framing), by reason.",
            "reason",
            self.http_rejected,
        )
        yield _nested_counter(
            "ferry_auth_decisions",
            "Authentication decisions on requests to protected endpoints (--auth), by outcome: allowed, "
            "missing or invalid (401), forbidden (403), unavailable (503: the token could not be checked).",
            "outcome",
            self.auth_decisions,
        )
        yield _histogram(
            "ferry_request_duration_seconds",
            "Time from a complete request to its response being handed to the transport.",
            ["model", "protocol"],
            self.request_seconds,
        )
        for name, help_text, store in (
            (
                "ferry_queue_duration_seconds",
                "Time a request waited in the batching queue.",
                self.queue_seconds,
            ),
            (
                "ferry_inference_duration_seconds",
                "Time the model spent on one batch.",
                self.inference_seconds,
            ),
            ("ferry_batch_size", "Requests combined into one model call.", self.batch_sizes),
        ):
            yield _histogram(name, help_text, ["model"], {(model,): dist for model, dist in store.items()})
        yield from self._collect_quality()
        yield from self._collect_generation()
        yield from self._collect_http2()

    def _collect_http2(self) -> Iterator[Metric]:
        rejected = CounterMetricFamily(
            "ferry_http2_rejected",
            "gRPC port: HTTP/2 streams and connections refused, by reason (docs/runtime.md HTTP/2 limits).",
            labels=["reason"],
        )
        for reason, count in self.http2_rejected.items():
            rejected.add_metric([reason], count)
        yield rejected
        pauses = CounterMetricFamily(
            "ferry_http2_read_pauses",
            "gRPC port: times a connection stopped reading because its client did not read its responses.",
        )
        pauses.add_metric([], self.http2_read_pauses[0])
        yield pauses

    def _collect_quality(self) -> Iterator[Metric]:
        scored = CounterMetricFamily(
            "ferry_feedback_scored",
            "Labelled samples (rows) whose prediction was scored against ground-truth feedback.",
            labels=["model"],
        )
        correct = CounterMetricFamily(
            "ferry_feedback_correct",
            "Labelled samples whose prediction matched the ground truth.",
            labels=["model"],
        )
        rejected = CounterMetricFamily(
            "ferry_feedback_rejected",
            "Feedback requests refused, by reason (unknown id, evicted, expired, already scored, invalid).",
            labels=["model", "reason"],
        )
        accuracy = GaugeMetricFamily(
            "ferry_feedback_accuracy_ratio",
            "Accuracy over the last --accuracy-window labelled samples (absent until the first feedback).",
            labels=["model"],
        )
        window = GaugeMetricFamily(
            "ferry_feedback_window_samples",
            "Labelled samples in the sliding accuracy window.",
            labels=["model"],
        )
        retained = GaugeMetricFamily(
            "ferry_feedback_predictions_retained",
            "Predictions with a request id kept for feedback (bounded by --feedback-capacity).",
            labels=["model"],
        )
        for model, store in self.feedback.items():
            scored.add_metric([model], store.scored_rows)
            correct.add_metric([model], store.correct_rows)
            for reason in REJECTION_REASONS:
                rejected.add_metric([model, reason], store.rejected[reason])
            if store.window_samples:
                accuracy.add_metric([model], store.window_accuracy)
            window.add_metric([model], store.window_samples)
            retained.add_metric([model], store.retained)
        yield from (scored, correct, rejected, accuracy, window, retained)
        reference = GaugeMetricFamily(
            "ferry_model_reference_accuracy_ratio",
            "Accuracy of the served model on the optimizer's validation data (from reference.json).",
            labels=["model"],
        )
        for model, value in self.reference_accuracy.items():
            reference.add_metric([model], value)
        yield reference
        psi = GaugeMetricFamily(
            "ferry_input_drift_psi",
            "Population stability index of recent inputs against the reference data, mean over the "
            "input's features (< 0.1 stable, > 0.25 shifted).",
            labels=["model", "input"],
        )
        rows = GaugeMetricFamily(
            "ferry_input_drift_window_rows",
            "Sampled input rows the drift score is computed over.",
            labels=["model", "input"],
        )
        for model, monitor in self.drift.items():
            for name, (score, count) in monitor.scores().items():
                psi.add_metric([model, name], score)
                rows.add_metric([model, name], count)
        yield from (psi, rows)


def _nested_counter(
    name: str, help_text: str, label: str, counts: dict[str, dict[str, int]]
) -> CounterMetricFamily:
    """A counter family from model -> {label value -> count}."""
    family = CounterMetricFamily(name, help_text, labels=["model", label])
    for model, values in counts.items():
        for value, count in values.items():
            family.add_metric([model, value], count)
    return family


def _histogram(
    name: str, help_text: str, label_names: list[str], series: dict[tuple[str, ...], Distribution]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, help_text, labels=label_names)
    for labels, dist in series.items():
        family.add_metric(list(labels), dist.cumulative(), dist.total)
    return family


class RequestRecorder:
    """Records one (model, protocol)'s requests; call from the event-loop thread only."""

    __slots__ = ("_counts", "_duration", "_model", "_ok", "_protocol")

    def __init__(self, metrics: Metrics, model: str, protocol: str, success_code: str) -> None:
        self._counts = metrics.request_counts
        self._model = model
        self._protocol = protocol
        self._duration = metrics.request_seconds.setdefault((model, protocol), Distribution(LATENCY_BUCKETS))
        # The success code's key, built once: most requests are recorded through `record_ok`.
        self._ok = (model, protocol, success_code)

    def record(self, code: str, seconds: float) -> None:
        key = (self._model, self._protocol, code)
        self._counts[key] = self._counts.get(key, 0) + 1
        self._duration.observe(seconds)

    def count(self, code: str) -> None:
        """Count a request answered before it was complete (no duration: there is no request time)."""
        key = (self._model, self._protocol, code)
        self._counts[key] = self._counts.get(key, 0) + 1

    def record_ok(self, seconds: float) -> None:
        counts, key = self._counts, self._ok
        counts[key] = counts.get(key, 0) + 1
        self._duration.observe(seconds)


class GenerationRecorder:
    """Records one generative model's latencies and token counts; call from the event-loop thread."""

    __slots__ = ("_duration", "_first", "_generated", "_inter", "_model", "_prompt")

    def __init__(self, metrics: Metrics, model: str) -> None:
        self._model = model
        self._first = metrics.first_token_seconds.setdefault(model, Distribution(FIRST_TOKEN_BUCKETS))
        self._inter = metrics.inter_token_seconds.setdefault(model, Distribution(INTER_TOKEN_BUCKETS))
        self._duration = metrics.generation_seconds.setdefault(model, Distribution(GENERATION_BUCKETS))
        self._prompt = metrics.prompt_tokens
        self._generated = metrics.generated_tokens
        self._prompt.setdefault(model, 0)
        self._generated.setdefault(model, 0)

    def admitted(self, prompt_tokens: int) -> None:
        self._prompt[self._model] += prompt_tokens

    def first_token(self, seconds: float) -> None:
        self._first.observe(seconds)

    def inter_token(self, seconds: float, tokens: int) -> None:
        # Tokens delivered together (one callback) share the interval between them.
        share = seconds / tokens
        for _ in range(tokens):
            self._inter.observe(share)

    def finished(self, seconds: float, completion_tokens: int) -> None:
        self._duration.observe(seconds)
        self._generated[self._model] += completion_tokens


class BatchRecorder:
    """Records queue wait, inference time and batch size for one model; call from the event-loop thread."""

    __slots__ = ("_batch_size", "_inference", "_queue")

    def __init__(self, metrics: Metrics, model: str) -> None:
        self._queue = metrics.queue_seconds.setdefault(model, Distribution(LATENCY_BUCKETS))
        self._inference = metrics.inference_seconds.setdefault(model, Distribution(LATENCY_BUCKETS))
        self._batch_size = metrics.batch_sizes.setdefault(model, Distribution(BATCH_SIZE_BUCKETS))

    def record(self, queue_waits: list[float], inference_seconds: float) -> None:
        observe = self._queue.observe
        for wait in queue_waits:
            observe(wait)
        self._inference.observe(inference_seconds)
        self._batch_size.observe(len(queue_waits))
