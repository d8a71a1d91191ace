"""The runtime's lifecycle: listen, load and warm up the model, serve, and drain on SIGTERM.

Order matters for Kubernetes: the listeners come up first so liveness answers while a large model
loads; readiness turns true only after warm-up; on SIGTERM readiness turns false first, then (after
`shutdown_delay_seconds`) the listeners close and in-flight requests get `drain_grace_seconds` to finish.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import time

from ferry_runtime.auth import (
    SERVICE_ACCOUNT_DIR,
    Authenticator,
    TokenReviewConfig,
    build_authenticator,
    in_cluster_api_server,
)
from ferry_runtime.batching import Batcher, classify_onnxruntime_error
from ferry_runtime.dataplane import DataPlane
from ferry_runtime.drift import REFERENCE_FILE, DriftMonitor, InvalidReference, Reference, load_reference
from ferry_runtime.errors import ModelLoadError
from ferry_runtime.feedback import FeedbackStore
from ferry_runtime.generative.config import is_generative_model_dir
from ferry_runtime.generative.model import GenerationLimits, GenerativeModel
from ferry_runtime.metrics import BatchRecorder, Metrics
from ferry_runtime.model import ModelMetadata, TensorSpec
from ferry_runtime.onnx_model import OnnxModel, OnnxModelConfig, find_model_file
from ferry_runtime.protocol.grpc.http2 import Http2Limits
from ferry_runtime.protocol.grpc.server import GrpcServer, InferenceService
from ferry_runtime.protocol.rest.generate import GenerativeApi
from ferry_runtime.protocol.rest.server import HttpLimits, RestApp, RestServer
from ferry_runtime.settings import RuntimeSettings
from ferry_runtime.termination import write_termination_message
from ferry_runtime.tls import CertificateReloader

log = logging.getLogger(__name__)


class Runtime:
    def __init__(self, settings: RuntimeSettings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.dataplane = DataPlane(settings.model_name, settings.model_version, settings.max_request_id_bytes)
        self.http_port = 0
        self.grpc_port = 0
        self.metrics_port = 0
        self._auth: Authenticator | None = None
        self._stop = asyncio.Event()
        self._batcher: Batcher | None = None
        self._model: OnnxModel | None = None
        self._generative: GenerativeModel | None = None
        self._reference: Reference | None = None
        self._rest_app: RestApp | None = None

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> int:
        settings = self.settings
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop)
        name = settings.model_name
        self.metrics.bind_gauges(
            name,
            in_flight=lambda: self.dataplane.in_flight,
            queue_depth=lambda: self._batcher.depth() if self._batcher else 0,
        )
        self.metrics.model_ready.labels(name).set(0)
        step = "--auth"
        try:
            self._auth = self._authenticator(loop)
            step = "--tls-dir"
            tls = CertificateReloader(settings.tls_dir) if settings.tls_dir is not None else None
        except (ValueError, OSError, ssl.SSLError) as problem:
            # A missing CA or certificate file, a key that does not match: named, not a traceback.
            message = f"cannot start ({step}): {problem}"
            log.error("%s", message)
            write_termination_message(message)
            return 2
        if tls is not None:
            tls.watch(loop)
        self._rest_app = RestApp(self.dataplane, self.metrics, settings.max_body_bytes)
        self._rest_app.auth = self._auth
        http_limits = HttpLimits(
            max_request_line_bytes=settings.http_max_request_line_bytes,
            max_header_line_bytes=settings.http_max_header_line_bytes,
            max_header_bytes=settings.http_max_header_bytes,
            header_timeout_seconds=settings.http_header_timeout_seconds,
            body_timeout_seconds=settings.http_body_timeout_seconds,
            min_body_bytes_per_second=settings.http_min_body_bytes_per_second,
        )
        rest = RestServer(self._rest_app, settings.keepalive_timeout_seconds, http_limits)
        self.http_port = await rest.start(
            settings.host, settings.http_port, tls.contexts["rest"] if tls else None
        )
        metrics_server: RestServer | None = None
        if settings.metrics_port:
            metrics_app = RestApp(self.dataplane, self.metrics, 0)
            metrics_app.metrics_only = True
            metrics_server = RestServer(metrics_app, settings.keepalive_timeout_seconds, http_limits)
            self.metrics_port = await metrics_server.start(settings.host, settings.metrics_port)
            self._rest_app.metrics_elsewhere = self.metrics_port
        grpc_server: GrpcServer | None = None
        if settings.grpc_port:
            http2_limits = Http2Limits(
                max_concurrent_streams=settings.http2_max_concurrent_streams,
                max_header_list_bytes=settings.http2_max_header_list_bytes,
                max_header_block_bytes=settings.http2_max_header_block_bytes,
                max_frame_bytes=settings.http2_max_frame_bytes,
                initial_stream_window_bytes=settings.http2_initial_stream_window_bytes,
                max_message_bytes=settings.max_body_bytes,
            )
            grpc_server = GrpcServer(
                InferenceService(self.dataplane, self.metrics, self._auth), http2_limits, self.metrics
            )
            self.grpc_port = await grpc_server.start(
                settings.host, settings.grpc_port, tls.contexts["grpc"] if tls else None
            )
        log.info(
            "listening: REST on %s:%d, gRPC on %s, metrics on %s; TLS %s; authentication: %s",
            settings.host,
            self.http_port,
            f"{settings.host}:{self.grpc_port}" if grpc_server else "(disabled)",
            f"{settings.host}:{self.metrics_port}" if metrics_server else "the REST port",
            f"from {settings.tls_dir}" if tls else "off",
            settings.auth,
        )
        assert settings.model_dir is not None
        load = self._load_generative if is_generative_model_dir(settings.model_dir) else self._load
        loading = asyncio.ensure_future(asyncio.to_thread(load, loop))
        stopping = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait((loading, stopping), return_when=asyncio.FIRST_COMPLETED)
        exit_code = 0
        if loading.done() and loading.exception() is None:
            if self._model is not None:
                self._attach_quality()
            self.dataplane.set_ready(True)
            self.metrics.model_ready.labels(name).set(1)
            log.info("model '%s' is ready", name)
            await stopping
        elif loading.done():
            error = loading.exception()
            log.error("cannot serve model '%s': %s", name, error)
            write_termination_message(f"cannot serve model '{name}': {error}")
            exit_code = 1
        await self._drain(rest, grpc_server, loading)
        if metrics_server is not None:
            await metrics_server.drain(0)
        if self._auth is not None:
            self._auth.close()
        if tls is not None:
            tls.stop()
        return exit_code

    def _authenticator(self, loop: asyncio.AbstractEventLoop) -> Authenticator | None:
        settings = self.settings
        review = None
        if settings.auth == "kubernetes":
            api_server = settings.auth_api_server or in_cluster_api_server()
            if not api_server:
                raise ValueError(
                    "auth kubernetes needs the API server's address: set --auth-api-server, or run in a pod "
                    "(KUBERNETES_SERVICE_HOST)"
                )
            review = TokenReviewConfig(
                api_server=api_server.rstrip("/"),
                token_file=settings.auth_api_token_file or SERVICE_ACCOUNT_DIR / "token",
                ca_file=settings.auth_api_ca_file or SERVICE_ACCOUNT_DIR / "ca.crt",
                audiences=settings.auth_audiences,
                allowed_service_accounts=settings.auth_allowed_service_accounts,
                cache_seconds=settings.auth_cache_seconds,
            )
        return build_authenticator(settings.auth, loop, settings.auth_token_dir, review)

    def _load_generative(self, loop: asyncio.AbstractEventLoop) -> None:
        settings = self.settings
        assert settings.model_dir is not None
        assert self._rest_app is not None
        started = time.perf_counter()
        model = GenerativeModel(
            settings.model_dir,
            settings.model_name,
            GenerationLimits(
                max_sequences=settings.max_sequences,
                max_sequence_length=settings.max_sequence_length,
                kv_cache_bytes=settings.kv_cache_bytes,
                max_waiting=settings.max_waiting_sequences,
                max_prefill_tokens=settings.max_prefill_tokens,
                intra_op_threads=settings.intra_op_threads,
            ),
        )
        model.load(loop)
        scheduler = model.scheduler
        assert scheduler is not None
        self.metrics.generation_gauges[settings.model_name] = (
            lambda: scheduler.running,
            lambda: scheduler.waiting,
            lambda: scheduler.cached_tokens,
            lambda: scheduler.token_capacity,
        )
        self._generative = model
        self._rest_app.generative = GenerativeApi(
            model, self.metrics, settings.model_version, self.dataplane.check_model
        )
        self.dataplane.attach_generative(
            ModelMetadata(
                name=settings.model_name,
                version=settings.model_version,
                platform="onnxruntime_genai",
                inputs=(TensorSpec("text_input", "BYTES", (1,)),),
                outputs=(TensorSpec("text_output", "BYTES", (1,)),),
            )
        )
        seconds = time.perf_counter() - started
        self.metrics.model_load_seconds.labels(settings.model_name).set(seconds)
        log.info("generative model '%s' loaded in %.2f s", settings.model_name, seconds)

    def _load(self, loop: asyncio.AbstractEventLoop) -> None:
        del loop  # the tensor path's batcher runs its own threads
        settings = self.settings
        assert settings.model_dir is not None
        started = time.perf_counter()
        model = OnnxModel(
            OnnxModelConfig(
                path=find_model_file(settings.model_dir),
                name=settings.model_name,
                version=settings.model_version,
                intra_op_threads=settings.intra_op_threads,
                inter_op_threads=settings.inter_op_threads,
                execution_providers=settings.execution_providers,
                graph_optimization=settings.graph_optimization,
            )
        )
        model.load()
        try:
            model.warm_up(settings.warmup_runs)
        except Exception as error:
            raise ModelLoadError(
                f"warm-up inference on zero-filled inputs failed: {error}; set --warmup-runs 0 to skip it"
            ) from error
        batcher = Batcher(
            model,
            max_batch_size=settings.max_batch_size,
            max_delay_seconds=settings.max_batch_delay_ms / 1000,
            max_queue_size=settings.max_queue_size,
            workers=settings.inference_workers,
            recorder=BatchRecorder(self.metrics, settings.model_name),
            classify_error=classify_onnxruntime_error(settings.model_name),
        )
        batcher.start()
        self._reference = self._load_reference()
        self._model, self._batcher = model, batcher
        self.dataplane.attach(model, batcher)
        seconds = time.perf_counter() - started
        self.metrics.model_load_seconds.labels(settings.model_name).set(seconds)
        log.info("model '%s' loaded and warmed up in %.2f s", settings.model_name, seconds)

    def _load_reference(self) -> Reference | None:
        """reference.json for drift statistics: a named file must load; the default one is optional."""
        settings = self.settings
        assert settings.model_dir is not None
        path = settings.drift_reference or settings.model_dir / REFERENCE_FILE
        if settings.drift_reference is None and not path.exists():
            log.info("no %s beside the model: input drift statistics are off", REFERENCE_FILE)
            return None
        try:
            return load_reference(path)
        except InvalidReference as error:
            if settings.drift_reference is not None:
                raise ModelLoadError(f"--drift-reference: {error}") from error
            # The model is servable without it: drift is monitoring, not serving.
            log.error("input drift statistics are off: %s", error)
            return None

    def _attach_quality(self) -> None:
        """Feedback and drift monitoring, attached on the event loop (their single writer)."""
        settings, model = self.settings, self._model
        assert model is not None
        name = settings.model_name
        if settings.feedback_capacity:
            store = FeedbackStore(
                name,
                [spec.name for spec in model.metadata.outputs],
                capacity=settings.feedback_capacity,
                ttl_seconds=settings.feedback_ttl_seconds,
                accuracy_window=settings.accuracy_window,
            )
            self.dataplane.feedback = self.metrics.feedback[name] = store
        reference = self._reference
        if reference is None:
            return
        if reference.accuracy is not None:
            self.metrics.reference_accuracy[name] = reference.accuracy
        if not settings.drift_window_rows:
            return
        monitor = DriftMonitor(reference, settings.drift_window_rows, settings.drift_sample_every)
        for problem in monitor.check_inputs({spec.name: spec.shape for spec in model.metadata.inputs}):
            log.warning("input drift: %s; that input is not scored", problem)
        if monitor.inputs:
            self.dataplane.drift = self.metrics.drift[name] = monitor
            log.info("input drift scored for %s against %d reference rows", monitor.inputs, reference.samples)

    async def _drain(
        self, rest: RestServer, grpc_server: GrpcServer | None, loading: asyncio.Future[None]
    ) -> None:
        settings = self.settings
        self.dataplane.set_ready(False)
        self.metrics.model_ready.labels(settings.model_name).set(0)
        log.info("shutting down: not ready; closing listeners in %.1f s", settings.shutdown_delay_seconds)
        if self._generative is not None and self._generative.scheduler is not None:
            scheduler = self._generative.scheduler
            log.info(
                "draining generations: %d running, %d waiting (they get %.0f s to finish)",
                scheduler.running,
                scheduler.waiting,
                settings.drain_grace_seconds,
            )
        if settings.shutdown_delay_seconds > 0:
            await asyncio.sleep(settings.shutdown_delay_seconds)
        grace = settings.drain_grace_seconds
        await asyncio.gather(rest.drain(grace), grpc_server.stop(grace) if grpc_server else asyncio.sleep(0))
        if not loading.done():
            log.info("waiting for the model load to finish before exiting")
        await asyncio.wait((loading,))
        if self._batcher is not None:
            await asyncio.to_thread(self._batcher.stop, grace)
        if self._model is not None:
            self._model.unload()
        if self._generative is not None:
            await asyncio.to_thread(self._generative.unload, grace)
        log.info("drained; exiting")
