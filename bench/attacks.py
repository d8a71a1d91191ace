"""Hostile clients against ferry-runtime's HTTP/1.1 listener and data plane, and what each one costs.

Each attack runs against a real `ferry-runtime` process (serving a two-input model, `pair`: sum = a + b)
while a monitor thread samples the server's RSS (/proc/PID/status VmRSS) and times a health request
(`/v2/health/ready`, on its own keep-alive connection) every 50 ms. Per attack it prints the answer the
attacker got, the RSS growth, the slowest health answer during the attack (how long the event loop was
stalled) and how long the attack took. tests/runtime/test_attacks_http1.py runs the same attacks with
the budgets of SPEC.md "Hostile input and limits"; this script gives before/after figures:

    .venv/bin/python bench/attacks.py                                   # the code on PYTHONPATH
    PYTHONPATH=/tmp/main/runtime .venv/bin/python bench/attacks.py      # another checkout's runtime

The server runs with its default settings (the attacks wait up to `--patience` seconds for the server
to cut a slow client off; the default header timeout is 10 s), so both checkouts are measured alike.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIB = 1024 * 1024


@dataclass(frozen=True)
class Target:
    """A running ferry-runtime serving the pair model."""

    pid: int
    http_port: int
    grpc_port: int
    # How long an attack that waits for the server to close a slow client waits at most.
    patience: float


@dataclass(frozen=True)
class Answer:
    """What the attacker got: an HTTP status or gRPC code, the error message, and for attacks that hold
    connections open, how long until the server closed the last one (None: some were still open)."""

    status: str
    message: str = ""
    closed_after: float | None = None


@dataclass(frozen=True)
class Outcome:
    name: str
    answer: Answer
    rss_growth_mb: float
    health_max_seconds: float
    seconds: float


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class Monitor(threading.Thread):
    """Samples RSS and times health requests until stopped; a health request that gets no answer
    within 30 s counts as a 30 s stall."""

    def __init__(self, target: Target) -> None:
        super().__init__(daemon=True)
        self.target = target
        self.baseline = rss_bytes(target.pid)
        self.peak = self.baseline
        self.health_max = 0.0
        self.health_failures = 0
        self._done = threading.Event()

    def run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.target.http_port, timeout=30)
        while not self._done.is_set():
            started = time.perf_counter()
            try:
                connection.request("GET", "/v2/health/ready")
                reply = connection.getresponse()
                reply.read()
                if reply.status != 200:
                    self.health_failures += 1
            except (OSError, http.client.HTTPException):
                self.health_failures += 1
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.target.http_port, timeout=30)
            self.health_max = max(self.health_max, time.perf_counter() - started)
            self.peak = max(self.peak, rss_bytes(self.target.pid))
            self._done.wait(0.05)
        connection.close()

    def stop(self) -> None:
        self._done.set()
        self.join()
        self.peak = max(self.peak, rss_bytes(self.target.pid))


def run_attack(target: Target, name: str) -> Outcome:
    monitor = Monitor(target)
    monitor.start()
    time.sleep(0.1)  # one health answer before the attack
    started = time.perf_counter()
    answer = ATTACKS[name](target)
    seconds = time.perf_counter() - started
    monitor.stop()
    return Outcome(name, answer, (monitor.peak - monitor.baseline) / MIB, monitor.health_max, seconds)


# --- raw HTTP/1.1 ---------------------------------------------------------------------------------


def _connect(target: Target) -> socket.socket:
    return socket.create_connection(("127.0.0.1", target.http_port), timeout=30)


def _read_answer(client: socket.socket, timeout: float = 30) -> Answer:
    """The status and error message of the first response on `client` (or how the connection ended)."""
    client.settimeout(timeout)
    data = b""
    try:
        while True:
            head_end = data.find(b"\r\n\r\n")
            if head_end >= 0:
                head = data[:head_end].decode("latin-1")
                length = 0
                for line in head.split("\r\n")[1:]:
                    key, _, value = line.partition(":")
                    if key.strip().lower() == "content-length":
                        length = int(value)
                if len(data) >= head_end + 4 + length:
                    status = head.split(" ", 2)[1]
                    return Answer(status, _message(data[head_end + 4 : head_end + 4 + length]))
            chunk = client.recv(65536)
            if not chunk:
                return Answer("closed" if not data else "truncated")
            data += chunk
    except TimeoutError:
        return Answer("no answer")
    except ConnectionResetError:
        return Answer("reset")


def _message(body: bytes) -> str:
    try:
        document = json.loads(body)
    except ValueError:
        return body[:200].decode("latin-1")
    return str(document.get("error", "")) if isinstance(document, dict) else ""


def _send_until_answered(target: Target, parts: Callable[[], Any]) -> Answer:
    """Send the pieces `parts()` yields, stopping as soon as the server answers (it may refuse early)."""
    with _connect(target) as client:
        try:
            for part in parts():
                readable, _, _ = select.select([client], [], [], 0)
                if readable:
                    break
                client.sendall(part)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return _read_answer(client)


def _request(target: Target, raw: bytes) -> Answer:
    return _send_until_answered(target, lambda: [raw])


def huge_header(target: Target) -> Answer:
    """One 64 MiB header line, sent in 64 KiB pieces (httptools accumulates it by concatenation)."""

    def parts() -> Any:
        yield b"GET /v2/health/live HTTP/1.1\r\nHost: attack\r\nX-Filler: "
        piece = b"a" * 65536
        for _ in range(64 * MIB // len(piece)):
            yield piece
        yield b"\r\n\r\n"

    return _send_until_answered(target, parts)


def many_headers(target: Target) -> Answer:
    """A million small header lines (about 16 MiB)."""

    def parts() -> Any:
        yield b"GET /v2/health/live HTTP/1.1\r\nHost: attack\r\n"
        block = b"".join(b"X-%d: v\r\n" % index for index in range(4096))
        for _ in range(256):
            yield block
        yield b"\r\n"

    return _send_until_answered(target, parts)


def long_request_line(target: Target) -> Answer:
    """A 16 MiB request target."""

    def parts() -> Any:
        yield b"GET /v2/health/live?q="
        piece = b"a" * 65536
        for _ in range(256):
            yield piece
        yield b" HTTP/1.1\r\nHost: attack\r\n\r\n"

    return _send_until_answered(target, parts)


def _hold_open(
    target: Target, connections: int, opening: bytes, trickle: bytes | None, interval: float
) -> Answer:
    """Open connections that send `opening` then one byte of `trickle` per `interval` (or nothing), and
    wait until the server closes them all or `target.patience` passes."""
    clients = [_connect(target) for _ in range(connections)]
    started = time.monotonic()
    open_clients = dict.fromkeys(clients, 0)
    statuses: set[str] = set()
    last_close: float | None = None
    try:
        for client in clients:
            client.setblocking(False)
            if opening:
                client.send(opening)
        next_byte = started
        while open_clients and time.monotonic() - started < target.patience:
            readable, _, _ = select.select(list(open_clients), [], [], 0.05)
            for client in readable:
                try:
                    data = client.recv(65536)
                except (ConnectionResetError, BlockingIOError):
                    data = b""
                if data.startswith(b"HTTP/1.1 "):
                    statuses.add(data.split(b" ", 2)[1].decode())
                if not data or b"connection: close" in data:
                    del open_clients[client]
                    last_close = time.monotonic() - started
            if trickle is not None and time.monotonic() >= next_byte:
                next_byte += interval
                for client, sent in list(open_clients.items()):
                    try:
                        client.send(trickle[sent % len(trickle) : sent % len(trickle) + 1])
                        open_clients[client] = sent + 1
                    except (BrokenPipeError, ConnectionResetError, BlockingIOError):
                        pass
    finally:
        for client in clients:
            client.close()
    closed = connections - len(open_clients)
    answered = "/".join(sorted(statuses)) or "no response"
    if open_clients:
        return Answer(f"{answered}; {len(open_clients)}/{connections} open after {target.patience:g} s")
    return Answer(f"{answered}; all {connections} closed", closed_after=last_close if closed else None)


def slowloris(target: Target) -> Answer:
    """200 connections that each send a header byte every 0.5 s and never finish."""
    return _hold_open(
        target, 200, b"GET /v2/health/live HTTP/1.1\r\nHost: attack\r\n", b"X-Slow: loris\r\n", 0.5
    )


def idle_connections(target: Target) -> Answer:
    """200 connections that never send a byte."""
    return _hold_open(target, 200, b"", None, 1.0)


def slow_body(target: Target) -> Answer:
    """50 inference requests whose 10,000-byte bodies arrive one byte every 0.5 s."""
    head = b"POST /v2/models/pair/infer HTTP/1.1\r\nHost: attack\r\nContent-Length: 10000\r\n\r\n"
    return _hold_open(target, 50, head, b"{", 0.5)


def stalled_body(target: Target) -> Answer:
    """50 inference requests that send half their body, then nothing."""
    head = b"POST /v2/models/pair/infer HTTP/1.1\r\nHost: attack\r\nContent-Length: 10000\r\n\r\n"
    return _hold_open(target, 50, head + b" " * 5000, None, 1.0)


def _infer_request(body: bytes, extra_headers: bytes = b"") -> bytes:
    return b"POST /v2/models/pair/infer HTTP/1.1\r\nHost: attack\r\nContent-Length: %d\r\n%s\r\n%s" % (
        len(body),
        extra_headers,
        body,
    )


def _pair_json(a: dict[str, Any], b: dict[str, Any] | None = None, **extra: Any) -> bytes:
    good = {"name": "b", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}
    return json.dumps({"inputs": [a, b or good], **extra}).encode()


def _binary_request(inputs: list[tuple[str, str, list[int], bytes]]) -> bytes:
    header = json.dumps(
        {
            "inputs": [
                {"name": n, "datatype": d, "shape": s, "parameters": {"binary_data_size": len(raw)}}
                for n, d, s, raw in inputs
            ]
        }
    ).encode()
    body = header + b"".join(raw for *_, raw in inputs)
    return _infer_request(body, b"Inference-Header-Content-Length: %d\r\n" % len(header))


ZERO_HUGE = [0, 2**62]


def zero_huge_shape_json(target: Target) -> Answer:
    return _request(
        target, _infer_request(_pair_json({"name": "a", "datatype": "FP32", "shape": ZERO_HUGE, "data": []}))
    )


def zero_huge_shape_binary(target: Target) -> Answer:
    raw_b = b"\0" * 12
    return _request(target, _binary_request([("a", "FP32", ZERO_HUGE, b""), ("b", "FP32", [1, 3], raw_b)]))


def zero_huge_shape_bytes(target: Target) -> Answer:
    return _request(
        target, _infer_request(_pair_json({"name": "a", "datatype": "BYTES", "shape": ZERO_HUGE, "data": []}))
    )


def overflowing_shape(target: Target) -> Answer:
    shape = [2**32, 2**32, 2**32]  # its product does not fit an int64
    return _request(
        target, _infer_request(_pair_json({"name": "a", "datatype": "FP32", "shape": shape, "data": []}))
    )


def too_many_dimensions(target: Target) -> Answer:
    shape = [1] * 100
    return _request(
        target, _infer_request(_pair_json({"name": "a", "datatype": "FP32", "shape": shape, "data": [1]}))
    )


def batch_mismatch(target: Target) -> Answer:
    a = {"name": "a", "datatype": "FP32", "shape": [2, 3], "data": [0] * 6}
    b = {"name": "b", "datatype": "FP32", "shape": [3, 3], "data": [0] * 9}
    return _request(target, _infer_request(_pair_json(a, b)))


def ragged_feedback_label(target: Target) -> Answer:
    body = json.dumps({"id": "x", "label": [[1, 2], [3]]}).encode()
    raw = b"POST /v2/models/pair/feedback HTTP/1.1\r\nHost: attack\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )
    return _request(target, raw)


def long_request_ids(target: Target) -> Answer:
    """300 inferences that each carry a 1 MiB request id (kept for feedback by a server that allows it)."""
    good = {"name": "a", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}
    statuses: set[str] = set()
    message = ""
    with _connect(target) as client:
        for index in range(300):
            request_id = f"{index:06d}" + "i" * (MIB - 6)
            client.sendall(_infer_request(_pair_json(good, id=request_id)))
            answer = _read_answer(client)
            statuses.add(answer.status)
            message = message or answer.message
    return Answer("/".join(sorted(statuses)), message[:300])


def _grpc_infer(target: Target, shape: list[int], raw: bytes, b_rows: int = 1) -> Answer:
    import grpc

    from ferry_runtime.protocol.grpc.generated import grpc_predict_v2_pb2 as pb

    message = pb.ModelInferRequest(model_name="pair")
    message.inputs.add(name="a", datatype="FP32", shape=shape)
    message.inputs.add(name="b", datatype="FP32", shape=[b_rows, 3])
    message.raw_input_contents.extend([raw, b"\0" * (12 * b_rows)])
    with grpc.insecure_channel(f"127.0.0.1:{target.grpc_port}") as channel:
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        try:
            call(message, timeout=30)
        except grpc.RpcError as error:
            return Answer(error.code().name, error.details() or "")
    return Answer("OK")


def zero_huge_shape_grpc(target: Target) -> Answer:
    return _grpc_infer(target, ZERO_HUGE, b"")


def batch_mismatch_grpc(target: Target) -> Answer:
    return _grpc_infer(target, [2, 3], b"\0" * 24, b_rows=3)


def _framing(raw: bytes) -> Callable[[Target], Answer]:
    return lambda target: _request(target, raw)


_GOOD_BODY = _pair_json({"name": "a", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]})

ATTACKS: dict[str, Callable[[Target], Answer]] = {
    "huge header (64 MiB)": huge_header,
    "many headers (16 MiB)": many_headers,
    "long request line (16 MiB)": long_request_line,
    "slowloris (200 conns)": slowloris,
    "idle connections (200)": idle_connections,
    "slow body (50 conns)": slow_body,
    "stalled body (50 conns)": stalled_body,
    "IHCL 1_80": _framing(_infer_request(_GOOD_BODY, b"Inference-Header-Content-Length: 1_80\r\n")),
    "IHCL -1": _framing(_infer_request(_GOOD_BODY, b"Inference-Header-Content-Length: -1\r\n")),
    "TE gzip then chunked": _framing(
        b"POST /v2/models/pair/infer HTTP/1.1\r\nHost: attack\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        b"0\r\n\r\n"
    ),
    "no Host": _framing(
        b"POST /v2/models/pair/infer HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(_GOOD_BODY), _GOOD_BODY)
    ),
    "Content-Length + TE": _framing(
        b"POST /v2/models/pair/infer HTTP/1.1\r\nHost: attack\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Length: 5\r\n\r\n0\r\n\r\n"
    ),
    "shape [0 2**62] JSON": zero_huge_shape_json,
    "shape [0 2**62] binary": zero_huge_shape_binary,
    "shape [0 2**62] BYTES": zero_huge_shape_bytes,
    "shape [0 2**62] gRPC": zero_huge_shape_grpc,
    "shape overflowing int64": overflowing_shape,
    "100 dimensions": too_many_dimensions,
    "batch sizes disagree": batch_mismatch,
    "batch sizes disagree gRPC": batch_mismatch_grpc,
    "ragged feedback label": ragged_feedback_label,
    "1 MiB request ids (300)": long_request_ids,
}


# --- running a server -----------------------------------------------------------------------------


def start_server(model_dir: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int, int]:
    ports = []
    for _ in range(2):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(probe.getsockname()[1])
    command = [
        str(Path(sys.executable).with_name("ferry-runtime")),
        "--model-dir",
        str(model_dir),
        "--model-name",
        "pair",
        "--host",
        "127.0.0.1",
        "--http-port",
        str(ports[0]),
        "--grpc-port",
        str(ports[1]),
        "--intra-op-threads",
        "1",
        *extra,
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/v2/health/ready", timeout=2) as r:
                if r.status == 200:
                    return process, ports[0], ports[1]
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("ferry-runtime did not become ready")


def server_errors(http_port: int) -> dict[str, float]:
    """ferry_requests_total by code for the server-fault codes (5xx, INTERNAL, UNKNOWN)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    errors: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("ferry_requests_total{"):
            labels, value = line.rsplit(" ", 1)
            code = labels.split('code="')[1].split('"')[0]
            if code.startswith("5") or code in ("INTERNAL", "UNKNOWN"):
                errors[code] = errors.get(code, 0.0) + float(value)
    return errors


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--attacks", help="comma-separated attack names (default: all)")
    parser.add_argument("--patience", type=float, default=15.0, help="longest wait for a slow client's close")
    parser.add_argument("--server-arg", action="append", default=[], help="extra ferry-runtime flag")
    args = parser.parse_args()
    root = Path(__file__).resolve().parent
    sys.path.insert(0, str(root))
    import ferry_runtime
    import runtime_models

    print(f"cpu: {platform.processor() or platform.machine()}; {_cpu_model()}")
    print(f"ferry_runtime from {Path(ferry_runtime.__file__).parent}")
    names = args.attacks.split(",") if args.attacks else list(ATTACKS)
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = runtime_models.build_pair_model(Path(scratch) / "pair").parent
        print(f"{'attack':34} {'answer':44} {'RSS +MB':>8} {'health max s':>12} {'took s':>7}")
        for name in names:
            # A server of its own per attack: one attack's leftovers must not be charged to the next.
            process, http_port, grpc_port = start_server(model_dir, *args.server_arg)
            try:
                target = Target(process.pid, http_port, grpc_port, args.patience)
                outcome = run_attack(target, name)
                errors = server_errors(http_port)
            finally:
                process.terminate()
                process.wait(60)
            answer = outcome.answer.status
            if outcome.answer.closed_after is not None:
                answer += f" after {outcome.answer.closed_after:.1f} s"
            if errors:
                answer += f" [5xx counted: {errors}]"
            print(
                f"{name:34} {answer[:44]:44} {outcome.rss_growth_mb:8.1f} "
                f"{outcome.health_max_seconds:12.3f} {outcome.seconds:7.1f}",
                flush=True,
            )
    return 0


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
