"""The runtime's settings: one typed object, read from FERRY_RUNTIME_* environment variables and flags.

Every field is a flag (`--model-dir`) and an environment variable (`FERRY_RUNTIME_MODEL_DIR`); a flag wins
over the environment, the environment over the default. The help text of each field is the one place
its meaning is written down: the CLI's --help and docs/runtime.md's settings table are both built from it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "FERRY_RUNTIME_"


def _setting(default: Any, help_text: str) -> Any:
    return field(default=default, metadata={"help": help_text})


@dataclass(frozen=True, slots=True)
class RuntimeSettings:
    model_dir: Path | None = field(
        default=None,
        metadata={
            "help": "Directory holding model.onnx (or exactly one .onnx file), or an onnxruntime-genai "
            "model folder (genai_config.json: served as a generative model). Required."
        },
    )
    model_name: str = _setting("", "Name clients address the model by. Required.")
    model_version: str = _setting("1", "Version the model is served as.")
    host: str = _setting("0.0.0.0", "Address both listeners bind to.")
    http_port: int = _setting(8080, "REST port (v2 endpoints and /metrics).")
    grpc_port: int = _setting(8081, "gRPC port; 0 disables gRPC.")
    intra_op_threads: int = _setting(
        0, "ONNX Runtime threads within one operator; 0 = one per physical core."
    )
    inter_op_threads: int = _setting(0, "ONNX Runtime threads across operators; 0 = ONNX Runtime's default.")
    execution_providers: tuple[str, ...] = _setting(
        ("auto",),
        "Comma-separated ONNX Runtime execution providers, or 'auto' "
        "(TensorRT, CUDA when available, then CPU).",
    )
    graph_optimization: str = _setting(
        "all", "ONNX Runtime graph optimization: disabled, basic, extended or all."
    )
    max_batch_size: int = _setting(32, "Most rows combined into one model call; 1 disables batching.")
    max_batch_delay_ms: float = _setting(
        0.0, "Longest a request waits for others to join its batch; 0 batches only what is already queued."
    )
    max_queue_size: int = _setting(
        256, "Requests that may wait for inference; more are answered 503 / UNAVAILABLE."
    )
    inference_workers: int = _setting(1, "Threads calling the model concurrently.")
    warmup_runs: int = _setting(
        1, "Inferences on zero-filled inputs before the model reports ready; 0 skips warm-up."
    )
    max_body_bytes: int = _setting(
        64 * 1024 * 1024, "Largest request body (REST) or message (gRPC) accepted."
    )
    shutdown_delay_seconds: float = _setting(
        0.0,
        "On SIGTERM: seconds between reporting not-ready and closing the listeners "
        "(lets load balancers catch up).",
    )
    drain_grace_seconds: float = _setting(25.0, "On SIGTERM: the longest in-flight requests get to finish.")
    keepalive_timeout_seconds: float = _setting(
        75.0, "Idle HTTP keep-alive connections are closed after this."
    )
    # HTTP/1.1 limits (the REST listener). Defaults follow nginx, uvicorn (h11) and grpc-core: what one
    # client can cost the server is bounded whatever it sends; docs/runtime.md "Limits" lists the answers.
    http_max_request_line_bytes: int = _setting(
        8192, "HTTP/1.1 limits: longest request target (URL); longer is answered 414 (nginx: 8 KiB)."
    )
    http_max_header_line_bytes: int = _setting(
        16384, "HTTP/1.1 limits: longest header line (name + value); longer is answered 431 (h11: 16 KiB)."
    )
    http_max_header_bytes: int = _setting(
        65536,
        "HTTP/1.1 limits: largest header section (all header lines); larger is answered 431 "
        "(grpc-core's hard limit: 64 KiB).",
    )
    http_header_timeout_seconds: float = _setting(
        10.0,
        "HTTP/1.1 limits: longest a client may take from connecting, or from the first byte of a request, "
        "to the end of its headers; then 408 and the connection is closed (slowloris).",
    )
    http_body_timeout_seconds: float = _setting(
        60.0,
        "HTTP/1.1 limits: longest pause between two reads of a request body; then 408 and close "
        "(nginx's client_body_timeout).",
    )
    http_min_body_bytes_per_second: int = _setting(
        240,
        "HTTP/1.1 limits: slowest average request-body upload after a 5 s grace; slower is answered 408 "
        "and closed (Kestrel's minimum request body data rate); 0 disables.",
    )
    log_level: str = _setting("info", "debug, info, warning or error.")
    feedback_capacity: int = _setting(
        4096,
        "Predictions with a request id each replica keeps for ground-truth feedback "
        "(POST /v2/models/{m}/feedback); 0 disables feedback.",
    )
    max_request_id_bytes: int = _setting(
        1024,
        "Longest request `id` (UTF-8 bytes) an inference or feedback request may carry; longer is answered "
        "400 / INVALID_ARGUMENT (ids are kept for feedback, so this bounds the feedback store's bytes).",
    )
    feedback_ttl_seconds: float = _setting(
        3600.0, "Longest time after a prediction its feedback is accepted."
    )
    accuracy_window: int = _setting(
        1000, "Labelled samples the sliding-window accuracy gauge (ferry_feedback_accuracy_ratio) covers."
    )
    drift_window_rows: int = _setting(
        1000, "Recent input rows the drift score of each input is computed over; 0 disables drift statistics."
    )
    drift_sample_every: int = _setting(4, "Sample one inference request in this many for the drift window.")
    max_sequences: int = _setting(
        16,
        "Generative models: sequences decoded together (continuous batching); more wait in the queue. "
        "Capped by kv_cache_bytes.",
    )
    max_sequence_length: int = _setting(
        0, "Generative models: longest prompt + output, in tokens; 0 = the model's context length."
    )
    kv_cache_bytes: int = _setting(
        0,
        "Generative models: memory for the KV cache; it holds max_sequence_length tokens for each running "
        "sequence, so it caps max_sequences. 0 = enough for max_sequences.",
    )
    max_waiting_sequences: int = _setting(
        64, "Generative models: requests that may wait for a sequence slot; more are answered 503."
    )
    max_prefill_tokens: int = _setting(
        512,
        "Generative models: prompt tokens prefilled between two decode steps (a longer prompt is "
        "prefilled in chunks); lower bounds how long new requests stall running streams, higher gives "
        "a burst of new requests its first tokens sooner.",
    )
    # --- HTTP/2 limits (the gRPC port; docs/runtime.md "HTTP/2 limits") ---
    http2_max_concurrent_streams: int = _setting(
        100,
        "gRPC port: streams one connection may have open (SETTINGS_MAX_CONCURRENT_STREAMS); more are "
        "refused with RST_STREAM REFUSED_STREAM.",
    )
    http2_max_header_list_bytes: int = _setting(
        16384,
        "gRPC port: largest decoded request header list (SETTINGS_MAX_HEADER_LIST_SIZE, counted as "
        "RFC 9113 does); larger is answered RESOURCE_EXHAUSTED (HTTP 431 for a non-gRPC request).",
    )
    http2_max_header_block_bytes: int = _setting(
        65536,
        "gRPC port: largest compressed header block, HEADERS and CONTINUATION frames with their 9-byte "
        "frame headers; larger closes the connection with GOAWAY ENHANCE_YOUR_CALM.",
    )
    http2_max_frame_bytes: int = _setting(
        16384,
        "gRPC port: largest frame accepted (SETTINGS_MAX_FRAME_SIZE, 16384-16777215); larger closes the "
        "connection with GOAWAY FRAME_SIZE_ERROR.",
    )
    http2_initial_stream_window_bytes: int = _setting(
        65535,
        "gRPC port: each stream's receive window (SETTINGS_INITIAL_WINDOW_SIZE); a message larger than "
        "it is given its whole size from the connection window once its length prefix arrives. The "
        "connection window (the bytes one connection buffers) is max_body_bytes plus this for every "
        "concurrent stream plus 1 MiB; a client that overruns a window gets FLOW_CONTROL_ERROR.",
    )
    tls_dir: Path | None = field(
        default=None,
        metadata={
            "help": "Directory holding tls.crt and tls.key (a kubernetes.io/tls Secret, as cert-manager "
            "writes it): REST and gRPC serve TLS with them, reloaded when they change; unset: plain text."
        },
    )
    metrics_port: int = _setting(
        0,
        "Port serving /metrics on its own (as Triton's 8002), so a NetworkPolicy can admit the scraper "
        "there and clients elsewhere; 0 serves /metrics on the REST port.",
    )
    # --- authentication (docs/security.md) ---
    auth: str = _setting(
        "none",
        "Who may call inference, feedback, generation and model metadata (health stays open): none; "
        "bearer (the tokens in auth_token_dir); or kubernetes (service account tokens, checked with the "
        "API server's TokenReview API).",
    )
    auth_token_dir: Path | None = field(
        default=None,
        metadata={
            "help": "auth bearer: directory in which every file not starting with '.' holds one accepted "
            "token (a mounted Secret: editing the Secret rotates them without a restart)."
        },
    )
    auth_allowed_service_accounts: tuple[str, ...] = _setting(
        (),
        "auth kubernetes: comma-separated namespace/name of the service accounts that may call; empty: any "
        "token the API server authenticates.",
    )
    auth_audiences: tuple[str, ...] = _setting(
        (), "auth kubernetes: comma-separated audiences the token must be issued for; empty: the API's own."
    )
    auth_cache_seconds: float = _setting(
        10.0,
        "auth kubernetes: how long an accepted token's review is reused (a refused one: at most 2 s); 0 "
        "reviews every request.",
    )
    auth_api_server: str = _setting(
        "",
        "auth kubernetes: the API server's URL; empty: https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT.",
    )
    auth_api_token_file: Path | None = field(
        default=None,
        metadata={
            "help": "auth kubernetes: the token the runtime itself sends the API server (reread when it "
            "changes); default: the pod's service account token."
        },
    )
    auth_api_ca_file: Path | None = field(
        default=None,
        metadata={
            "help": "auth kubernetes: CA bundle the API server's certificate is checked against; default: "
            "the service account's ca.crt."
        },
    )
    drift_reference: Path | None = field(
        default=None,
        metadata={
            "help": "Reference statistics of the inputs (the optimizer's reference.json); "
            "default: reference.json in the model directory, when there is one."
        },
    )

    def __post_init__(self) -> None:
        problems = []
        if self.model_dir is None:
            problems.append("model_dir is required (--model-dir or FERRY_RUNTIME_MODEL_DIR)")
        if not self.model_name:
            problems.append("model_name is required (--model-name or FERRY_RUNTIME_MODEL_NAME)")
        for name in (
            "max_batch_size",
            "max_queue_size",
            "inference_workers",
            "accuracy_window",
            "max_sequences",
            "max_waiting_sequences",
            "max_prefill_tokens",
            "max_request_id_bytes",
            "http_max_request_line_bytes",
            "http_max_header_line_bytes",
            "http_max_header_bytes",
            "http2_max_concurrent_streams",
            "http2_max_header_list_bytes",
            "http2_max_header_block_bytes",
            "http2_initial_stream_window_bytes",
        ):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in (
            "intra_op_threads",
            "inter_op_threads",
            "warmup_runs",
            "http_port",
            "grpc_port",
            "feedback_capacity",
            "drift_window_rows",
            "max_sequence_length",
            "kv_cache_bytes",
            "http_min_body_bytes_per_second",
            "metrics_port",
        ):
            if getattr(self, name) < 0:
                problems.append(f"{name} must not be negative, got {getattr(self, name)}")
        if not 16384 <= self.http2_max_frame_bytes <= 2**24 - 1:
            problems.append(f"http2_max_frame_bytes must be 16384-16777215, got {self.http2_max_frame_bytes}")
        if self.http2_initial_stream_window_bytes > 2**31 - 1:
            problems.append(
                f"http2_initial_stream_window_bytes must be at most 2^31-1, got "
                f"{self.http2_initial_stream_window_bytes}"
            )
        if self.drift_sample_every < 1:
            problems.append(f"drift_sample_every must be at least 1, got {self.drift_sample_every}")
        for name in ("http_header_timeout_seconds", "http_body_timeout_seconds"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        if self.feedback_ttl_seconds <= 0:
            problems.append(f"feedback_ttl_seconds must be positive, got {self.feedback_ttl_seconds}")
        if self.auth not in ("none", "bearer", "kubernetes"):
            problems.append(f"auth must be none, bearer or kubernetes, got {self.auth!r}")
        if self.auth == "bearer" and self.auth_token_dir is None:
            problems.append(
                "auth bearer needs auth_token_dir (--auth-token-dir or FERRY_RUNTIME_AUTH_TOKEN_DIR)"
            )
        for account in self.auth_allowed_service_accounts:
            namespace, slash, name = account.partition("/")
            if not (slash and namespace and name) or "/" in name:
                problems.append(f"auth_allowed_service_accounts entries are namespace/name, got {account!r}")
        if self.auth_cache_seconds < 0:
            problems.append(f"auth_cache_seconds must not be negative, got {self.auth_cache_seconds}")
        if self.metrics_port and self.metrics_port in (self.http_port, self.grpc_port):
            problems.append(f"metrics_port {self.metrics_port} is already the REST or gRPC port")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            problems.append(f"log_level must be debug, info, warning or error, got {self.log_level!r}")
        if problems:
            raise ValueError("; ".join(problems))


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def _convert(kind: Any, raw: str, source: str) -> Any:
    try:
        if kind is int or kind == "int":
            return int(raw)
        if kind is float or kind == "float":
            return float(raw)
        if kind in (Path, "Path", "Path | None"):
            return Path(raw)
        if kind in (tuple[str, ...], "tuple[str, ...]"):
            return tuple(part.strip() for part in raw.split(",") if part.strip())
    except ValueError:
        raise ValueError(
            f"{source} must be a {kind if isinstance(kind, str) else kind.__name__}, got {raw!r}"
        ) from None
    return raw


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ferry-runtime",
        description="Serve one ONNX model over the Open Inference Protocol v2 (REST and gRPC).",
    )
    for setting in dataclasses.fields(RuntimeSettings):
        default = setting.default
        shown = ",".join(default) if isinstance(default, tuple) else default
        parser.add_argument(
            flag_name(setting.name),
            dest=setting.name,
            default=None,
            metavar=setting.name.upper(),
            help=f"{setting.metadata['help']} [env {env_name(setting.name)}; default {shown}]",
        )
    return parser


def load_settings(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> RuntimeSettings:
    """Flags win over FERRY_RUNTIME_* variables, which win over the defaults."""
    environ = os.environ if environ is None else environ
    arguments = vars(build_parser().parse_args(argv))
    values: dict[str, Any] = {}
    for setting in dataclasses.fields(RuntimeSettings):
        raw = arguments.get(setting.name)
        source = flag_name(setting.name)
        if raw is None:
            raw = environ.get(env_name(setting.name))
            source = env_name(setting.name)
        if raw is not None:
            values[setting.name] = _convert(setting.type, raw, source)
    return RuntimeSettings(**values)


def settings_table() -> str:
    """The Markdown table of settings for docs/runtime.md."""
    rows = ["| flag | environment variable | default | meaning |", "|---|---|---|---|"]
    for setting in dataclasses.fields(RuntimeSettings):
        default = setting.default
        flag, env, meaning = flag_name(setting.name), env_name(setting.name), setting.metadata["help"]
        if isinstance(default, tuple):
            shown = ",".join(default)
        elif meaning.endswith("Required."):
            shown = "(required)"
        else:
            shown = "(unset)" if default is None else str(default)
        rows.append(f"| `{flag}` | `{env}` | `{shown}` | {meaning} |")
    return "\n".join(rows) + "\n"
