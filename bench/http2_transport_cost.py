"""Server CPU per unary call spent in the gRPC port's HTTP/2 transport alone, for two checkouts.

bench/runtime_bench.py measures whole requests through real sockets, which on a small shared machine
swings by tens of percent between runs. This isolates the transport (frame parsing, HPACK, stream
state, limits, response framing): one connection object is fed pre-encoded unary calls (HEADERS +
DATA, 100 per read, as a busy client's pipelined calls) on an in-memory transport, and answers each
with an echo. Each checkout runs in its own process, alternating, and the best of the rounds counts.

    python bench/http2_transport_cost.py --before /work/main --after .
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

_MEASURE = r"""
import asyncio, inspect, sys, time
from ferry_runtime.protocol.grpc import http2
sys.path.insert(0, sys.argv[1])
import attacks_http2 as a

class Sink(asyncio.Transport):
    written = 0
    def write(self, data): Sink.written += len(data)
    def close(self): pass
    def is_closing(self): return False
    def pause_reading(self): pass
    def resume_reading(self): pass

def echo(message, call):
    call.reply(message)

async def main():
    methods = {"/inference.GRPCInferenceService/ModelInfer": echo}
    if "limits" in inspect.signature(http2.GrpcTransportServer).parameters:
        server = http2.GrpcTransportServer(methods, http2.Http2Limits())
    else:
        server = http2.GrpcTransportServer(methods, 64 << 20)
    connection = http2.GrpcConnection(server)
    connection.connection_made(Sink())
    # The client's windows wide open (as grpcio's are), so no answer waits for a WINDOW_UPDATE.
    settings = a.frame(a.SETTINGS, 0, 0, (4).to_bytes(2, "big") + (2**31 - 1).to_bytes(4, "big"))
    window = a.frame(a.WINDOW_UPDATE, 0, 0, (2**31 - 1 - 65535).to_bytes(4, "big"))
    connection.data_received(http2.PREFACE + settings + window + a.frame(a.SETTINGS, 1, 0))
    block = a.request_block()
    message = b"\x00" + (300).to_bytes(4, "big") + b"m" * 300
    stream = 1
    best = float("inf")
    for _ in range(30):
        batch = b""
        for _ in range(100):
            headers = a.frame(a.HEADERS, a.END_HEADERS, stream, block)
            batch += headers + a.frame(a.DATA, a.END_STREAM, stream, message)
            stream += 2
        started = time.perf_counter()
        connection.data_received(batch)
        await asyncio.sleep(0)
        best = min(best, (time.perf_counter() - started) / 100)
    # Each answer is HEADERS + DATA (the 305-byte echo) + trailers: make sure every call was answered.
    answered = Sink.written // 305
    assert answered >= 3000, f"only {Sink.written} bytes written for 3000 calls"
    print(best * 1e6)

asyncio.run(main())
"""


def cost(tree: Path) -> float:
    env = dict(os.environ, PYTHONPATH=str(tree / "runtime"))
    bench = Path(__file__).resolve().parent
    output = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(bench)], env=env, capture_output=True, text=True, check=True
    ).stdout
    return float(output.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--after", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    before: list[float] = []
    after: list[float] = []
    for round_number in range(args.rounds):
        # Alternate which goes first: the machine's load drifts between runs.
        pair = [(args.before, before), (args.after, after)]
        for tree, results in pair if round_number % 2 == 0 else reversed(pair):
            results.append(cost(tree))
    print(
        f"HTTP/2 transport CPU per unary call (best of {args.rounds} rounds, each the best of 30 x 100 calls)"
    )
    print(f"  before ({args.before}): {min(before):.2f} us   rounds: {', '.join(f'{v:.2f}' for v in before)}")
    print(f"  after  ({args.after}): {min(after):.2f} us   rounds: {', '.join(f'{v:.2f}' for v in after)}")
    print(f"  after / before: {min(after) / min(before):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
