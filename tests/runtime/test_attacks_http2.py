"""Attacks on the gRPC port's HTTP/2 transport (bench/attacks_http2.py, loopback only), each against a
real ferry-runtime with its default limits, with SPEC.md's budget: the server's RSS grows by less than
128 MB, the REST health endpoint answers within 1 s throughout, the server answers with the code its
limit names (docs/runtime.md "HTTP/2 limits") and counts it in its metrics, and a normal grpcio client
is served afterwards."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

import attacks_http2
from conftest import RuntimeProcess, start_runtime
from ferry_runtime.protocol.grpc.generated import grpc_predict_v2_pb2 as pb
from runtime_models import DigitsModel

RSS_BUDGET = 128 * 2**20
HEALTH_BUDGET_SECONDS = 1.0

# attack -> (what the server must answer, the metric series that counts it)
EXPECTED = {
    "concurrent-streams": ("RST REFUSED_STREAM", 'ferry_http2_rejected_total{reason="refused_stream"}'),
    "large-header-frames": (
        "GOAWAY FRAME_SIZE_ERROR",
        'ferry_http2_rejected_total{reason="connection_error"}',
    ),
    "continuation-flood": (
        "GOAWAY ENHANCE_YOUR_CALM",
        'ferry_http2_rejected_total{reason="header_block_too_large"}',
    ),
    "hpack-memo": (
        "grpc-status RESOURCE_EXHAUSTED",
        'ferry_http2_rejected_total{reason="header_list_too_large"}',
    ),
    "ping-flood": ("server stopped reading", "ferry_http2_read_pauses_total"),
    "settings-flood": ("server stopped reading", "ferry_http2_read_pauses_total"),
    "flow-control": ("RST FLOW_CONTROL_ERROR", 'ferry_http2_rejected_total{reason="flow_control"}'),
    "long-grpc-message": ("grpc-status UNIMPLEMENTED", None),
}


@pytest.fixture(scope="module")
def server(digits: DigitsModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    # Default limits (and the default 64 MiB message size), as a deployment would run.
    runtime = start_runtime(digits.path.parent, "digits", tmp_path_factory.mktemp("attack-logs"))
    yield runtime
    assert runtime.stop() == 0, runtime.log()


def _metric(server: RuntimeProcess, series: str) -> float:
    with urllib.request.urlopen(server.url("/metrics"), timeout=10) as reply:
        text = reply.read().decode()
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{series} not in /metrics")


def _grpcio_client_is_served(server: RuntimeProcess, digits: DigitsModel) -> None:
    request = pb.ModelInferRequest(model_name="digits")
    request.inputs.add(name="input", datatype="FP32", shape=digits.test_images[:4].shape)
    request.raw_input_contents.append(digits.test_images[:4].astype(np.float32).tobytes())
    with grpc.insecure_channel(server.grpc) as channel:
        live = channel.unary_unary(
            "/inference.GRPCInferenceService/ServerLive",
            request_serializer=pb.ServerLiveRequest.SerializeToString,
            response_deserializer=pb.ServerLiveResponse.FromString,
        )
        assert live(pb.ServerLiveRequest(), timeout=30).live
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        response = infer(request, timeout=30)
    label = next(i for i, tensor in enumerate(response.outputs) if tensor.name == "label")
    labels = np.frombuffer(response.raw_output_contents[label], dtype=np.int64)
    np.testing.assert_array_equal(labels, digits.expected_labels[:4])


@pytest.mark.parametrize("name", list(attacks_http2.ATTACKS))
def test_attack_stays_within_budget(name: str, server: RuntimeProcess, digits: DigitsModel) -> None:
    answer, series = EXPECTED[name]
    counted_before = _metric(server, series) if series else 0.0
    result = attacks_http2.measure(
        name, attacks_http2.ATTACKS[name], server.process.pid, server.http_port, server.grpc_port
    )
    report = (
        f"{name}: {result.outcome}; RSS +{result.rss_growth / 2**20:.0f} MB, "
        f"slowest health {result.slowest_health * 1000:.0f} ms"
    )
    assert answer in result.outcome, report
    assert result.rss_growth < RSS_BUDGET, report
    assert result.health_failures == 0, report
    assert result.slowest_health < HEALTH_BUDGET_SECONDS, report
    if series:
        assert _metric(server, series) > counted_before, report
    if name == "long-grpc-message":
        # No header frame above the client's SETTINGS_MAX_FRAME_SIZE (it kept the default, 16384).
        largest = re.search(r"largest header frame (\d+) bytes", result.outcome)
        assert largest is not None, report
        assert 0 < int(largest.group(1)) <= 16384, report
    _grpcio_client_is_served(server, digits)
