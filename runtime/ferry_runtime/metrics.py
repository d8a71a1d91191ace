"""Prometheus metrics, all `ferry_`-prefixed; label children are resolved once so the hot path only adds.

Queue depth and in-flight requests are read at scrape time from plain counters the server keeps anyway,
so they cost nothing per request.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Per-request latencies on this server range from ~100 µs (a tiny model) to seconds (a big batch).
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    """One registry per server, so several servers (or tests) in one process never collide."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "ferry_requests",
            "Inference requests answered, by model, protocol (rest|grpc) and status code.",
            ["model", "protocol", "code"],
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "ferry_request_duration_seconds",
            "Time from a complete request to its response being handed to the transport.",
            ["model", "protocol"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_duration = Histogram(
            "ferry_queue_duration_seconds",
            "Time a request waited in the batching queue before its batch started.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inference_duration = Histogram(
            "ferry_inference_duration_seconds",
            "Time ONNX Runtime spent on one batch.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "ferry_batch_size",
            "Requests combined into one model call.",
            ["model"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )
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
            "ferry_model_ready", "1 when the model is loaded, warmed up and not draining.", ["model"],
            registry=self.registry,
        )

    def bind_gauges(self, model: str, in_flight: Callable[[], float], queue_depth: Callable[[], float]) -> None:
        self.in_flight.labels(model).set_function(in_flight)
        self.queue_depth.labels(model).set_function(queue_depth)


class RequestRecorder:
    """Records one (model, protocol)'s requests with pre-resolved label children."""

    __slots__ = ("_codes", "_duration", "_model", "_protocol", "_requests")

    def __init__(self, metrics: Metrics, model: str, protocol: str) -> None:
        self._requests = metrics.requests
        self._model = model
        self._protocol = protocol
        self._duration = metrics.request_duration.labels(model, protocol)
        self._codes: dict[str, Counter] = {}

    def record(self, code: str, seconds: float) -> None:
        counter = self._codes.get(code)
        if counter is None:
            counter = self._codes[code] = self._requests.labels(self._model, self._protocol, code)
        counter.inc()
        self._duration.observe(seconds)


class BatchRecorder:
    """Records queue wait, inference time and batch size for one model (called from worker threads)."""

    __slots__ = ("_batch_size", "_inference", "_queue")

    def __init__(self, metrics: Metrics, model: str) -> None:
        self._queue = metrics.queue_duration.labels(model)
        self._inference = metrics.inference_duration.labels(model)
        self._batch_size = metrics.batch_size.labels(model)

    def record(self, queue_waits: list[float], inference_seconds: float) -> None:
        for wait in queue_waits:
            self._queue.observe(wait)
        self._inference.observe(inference_seconds)
        self._batch_size.observe(len(queue_waits))
