"""Overload (bounded queue -> 503 + Retry-After / UNAVAILABLE), SIGTERM drain, and the metrics that show it.

Requests are held in the batcher deterministically with a long batching delay (a batch waits for more
requests until the delay is spent), rather than by racing a slow model against a clock.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from prometheus_client.parser import text_string_to_metric_families

from conftest import RuntimeProcess, start_runtime
from ferry_runtime.protocol.grpc.generated import grpc_predict_v2_pb2 as pb
from runtime_models import DigitsModel

BODY = json.dumps(
    {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [1.0] * 64}],
        "outputs": [{"name": "label"}],
    }
).encode()


def post_infer(
    server: RuntimeProcess, connection: http.client.HTTPConnection | None = None
) -> tuple[int, dict[str, str], Any]:
    own = connection is None
    connection = connection or http.client.HTTPConnection(server.http, timeout=60)
    connection.request("POST", "/v2/models/digits/infer", body=BODY)
    reply = connection.getresponse()
    body = json.loads(reply.read())
    headers = {k.lower(): v for k, v in reply.getheaders()}
    if own:
        connection.close()
    return reply.status, headers, body


def get(server: RuntimeProcess, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(server.http, timeout=30)
    connection.request("GET", path)
    reply = connection.getresponse()
    data = reply.read()
    connection.close()
    return reply.status, data


def scrape(server: RuntimeProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, data = get(server, "/metrics")
    assert status == 200
    samples = {}
    for family in text_string_to_metric_families(data.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def metric(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_for(condition: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def grpc_infer(server: RuntimeProcess) -> grpc.Call:
    channel = grpc.insecure_channel(server.grpc)
    call = channel.unary_unary(
        "/inference.GRPCInferenceService/ModelInfer",
        request_serializer=pb.ModelInferRequest.SerializeToString,
        response_deserializer=pb.ModelInferResponse.FromString,
    )
    request = pb.ModelInferRequest(model_name="digits")
    request.inputs.add(name="input", datatype="FP32", shape=(1, 64))
    request.raw_input_contents.append(np.ones((1, 64), np.float32).tobytes())
    return call.with_call(request, timeout=60)


def test_metrics_count_requests_by_protocol_and_code(
    digits_server: RuntimeProcess, digits: DigitsModel
) -> None:
    before = scrape(digits_server)
    for _ in range(3):
        assert post_infer(digits_server)[0] == 200
    connection = http.client.HTTPConnection(digits_server.http, timeout=30)
    connection.request("POST", "/v2/models/digits/infer", body=b"{broken")
    assert connection.getresponse().status == 400
    grpc_client = triton_grpc.InferenceServerClient(digits_server.grpc)
    tensor = triton_grpc.InferInput("input", [2, 64], "FP32")
    tensor.set_data_from_numpy(digits.test_images[:2])
    grpc_client.infer("digits", [tensor])
    after = scrape(digits_server)

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("ferry_requests_total", model="digits", protocol="rest", code="200") == 3
    assert delta("ferry_requests_total", model="digits", protocol="rest", code="400") == 1
    assert delta("ferry_requests_total", model="digits", protocol="grpc", code="OK") == 1
    assert delta("ferry_request_duration_seconds_count", model="digits", protocol="rest") == 4
    assert delta("ferry_request_duration_seconds_count", model="digits", protocol="grpc") == 1
    assert delta("ferry_queue_duration_seconds_count", model="digits") == 4
    assert delta("ferry_batch_size_sum", model="digits") == 4
    assert delta("ferry_inference_duration_seconds_count", model="digits") >= 1
    assert delta("ferry_request_duration_seconds_sum", model="digits", protocol="rest") > 0
    assert metric(
        after, "ferry_request_duration_seconds_bucket", model="digits", protocol="rest", le="+Inf"
    ) == metric(after, "ferry_request_duration_seconds_count", model="digits", protocol="rest")
    assert metric(after, "ferry_model_load_seconds", model="digits") > 0
    assert metric(after, "ferry_model_ready", model="digits") == 1
    assert metric(after, "ferry_requests_in_flight", model="digits") == 0
    assert metric(after, "ferry_queue_depth", model="digits") == 0


def test_overload_is_answered_503_with_retry_after_and_unavailable(
    digits: DigitsModel, log_dir: Path
) -> None:
    # Two requests wait in a forming batch (queue full); the third must be refused, not queued.
    server = start_runtime(
        digits.path.parent,
        "digits",
        log_dir,
        "--max-queue-size",
        "2",
        "--max-batch-size",
        "64",
        "--max-batch-delay-ms",
        "4000",
    )
    try:
        with ThreadPoolExecutor(2) as pool:
            held = [pool.submit(post_infer, server) for _ in range(2)]
            wait_for(lambda: metric(scrape(server), "ferry_queue_depth", model="digits") == 2)
            status, headers, body = post_infer(server)
            assert status == 503
            assert headers["retry-after"] == "1"
            assert "model 'digits' is overloaded: 2 requests already queued" in body["error"]
            with pytest.raises(grpc.RpcError) as caught:
                grpc_infer(server)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "overloaded" in (caught.value.details() or "")
            trailers = dict(caught.value.trailing_metadata() or ())
            assert trailers["retry-after"] == "1"
            assert trailers["grpc-retry-pushback-ms"] == "1000"
            # The held requests still succeed once their batch runs.
            assert [future.result()[0] for future in held] == [200, 200]
        samples = scrape(server)
        assert metric(samples, "ferry_requests_total", model="digits", protocol="rest", code="503") == 1
        assert (
            metric(samples, "ferry_requests_total", model="digits", protocol="grpc", code="UNAVAILABLE") == 1
        )
        assert metric(samples, "ferry_batch_size_bucket", model="digits", le="2") == 1
    finally:
        assert server.stop() == 0, server.log()


def test_sigterm_drains_in_flight_requests_under_load(digits: DigitsModel, log_dir: Path) -> None:
    server = start_runtime(
        digits.path.parent,
        "digits",
        log_dir,
        "--max-batch-size",
        "64",
        "--max-batch-delay-ms",
        "1500",
        "--shutdown-delay-seconds",
        "1",
    )
    outcomes: list[int | str] = []
    stop_looping = threading.Event()

    def loop_on_one_connection() -> None:
        # A keep-alive client in a closed loop: every request it manages to send must be answered 200;
        # once the server says `Connection: close`, reconnecting is refused (not a failed request).
        connection = http.client.HTTPConnection(server.http, timeout=60)
        while not stop_looping.is_set():
            try:
                status, headers, _ = post_infer(server, connection)
            except ConnectionRefusedError:
                return
            outcomes.append(status)
            if headers.get("connection") == "close":
                connection.close()
                connection = http.client.HTTPConnection(server.http, timeout=60)

    with ThreadPoolExecutor(16) as pool:
        loopers = [pool.submit(loop_on_one_connection) for _ in range(4)]
        held_rest = [pool.submit(post_infer, server) for _ in range(6)]
        held_grpc = [pool.submit(grpc_infer, server) for _ in range(4)]
        wait_for(lambda: metric(scrape(server), "ferry_requests_in_flight", model="digits") >= 10)
        server.terminate()
        # Readiness goes false first, while the listeners still accept (the shutdown delay).
        wait_for(lambda: get(server, "/v2/health/ready")[0] == 503, timeout=5)
        assert get(server, "/v2/models/digits/ready")[0] == 503
        assert get(server, "/v2/health/live")[0] == 200
        assert [future.result()[0] for future in held_rest] == [200] * 6
        assert all(response.code() == grpc.StatusCode.OK for _, response in (f.result() for f in held_grpc))
        exit_code = server.process.wait(60)
        stop_looping.set()
        for looper in loopers:
            looper.result()
    assert exit_code == 0, server.log()
    assert outcomes
    assert set(outcomes) == {200}, outcomes
    assert "drained; exiting" in server.log()
