"""Custom-metric autoscaling through prometheus-adapter (built from its Go module) on fake nodes.

The cluster test runs every real piece but the pod's container: a real ferry-runtime process on the host
serves the digits model, a real Prometheus scrapes it with the target labels a ServiceMonitor scrape
would give the kwok pod that stands for it (namespace, pod), the adapter serves custom.metrics.k8s.io
from that Prometheus, and the HPA the operator builds for `autoscaling.metric: concurrency` scales the
Deployment out once real requests pile up in the runtime.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ferry_devcluster import prometheus_adapter
from ferry_devcluster.config import ClusterConfig, default_state_dir
from ferry_devcluster.testing import (
    HostProcess,
    HostPrometheus,
    Kube,
    custom_metric_per_pod,
    ferry_runtime_command,
    free_port,
    start_prometheus,
)
from ferry_operator.api import models
from ferry_operator.builders import inputs as build_inputs
from ferry_operator.builders import scaling
from ferry_operator.config import OperatorConfig

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import runtime_models  # noqa: E402

MODEL = "digits"
# Requests wait this long for others to join their batch, so concurrent clients stay in flight together
# whatever the machine's load: the gauge the HPA reads is the number of clients.
BATCH_DELAY_MS = 300
TARGET_IN_FLIGHT = 4
CLIENTS = 16
MAX_REPLICAS = 4
WAIT_SECONDS = 240.0


def test_adapter_rules_serve_the_metric_names_the_operator_autoscales_on() -> None:
    defaults = OperatorConfig.model_fields
    served = {rule["name"]["as"] for rule in prometheus_adapter.rules()["rules"]}
    assert defaults["concurrency_metric"].default == prometheus_adapter.CONCURRENCY_METRIC
    assert defaults["rps_metric"].default == prometheus_adapter.RPS_METRIC
    assert defaults["queue_metric"].default == prometheus_adapter.QUEUE_METRIC
    assert served == {
        prometheus_adapter.CONCURRENCY_METRIC,
        prometheus_adapter.RPS_METRIC,
        prometheus_adapter.QUEUE_METRIC,
    }
    # a ServingDefaults built without the operator's config names the same metrics
    plain = build_inputs.ServingDefaults(runtime_image="ferry-runtime:0.1.0")
    assert (plain.concurrency_metric, plain.rps_metric, plain.queue_metric) == (
        prometheus_adapter.CONCURRENCY_METRIC,
        prometheus_adapter.RPS_METRIC,
        prometheus_adapter.QUEUE_METRIC,
    )


def test_adapter_rules_read_the_runtime_series_per_pod() -> None:
    by_name = {rule["name"]["as"]: rule for rule in prometheus_adapter.rules()["rules"]}
    in_flight = by_name[prometheus_adapter.CONCURRENCY_METRIC]
    assert in_flight["seriesQuery"].startswith("ferry_requests_in_flight{")
    assert by_name[prometheus_adapter.QUEUE_METRIC]["seriesQuery"].startswith(
        "ferry_generation_waiting_sequences{"
    )
    rps = by_name[prometheus_adapter.RPS_METRIC]
    assert rps["seriesQuery"].startswith("ferry_requests_total{")
    assert "rate(<<.Series>>" in rps["metricsQuery"]
    for rule in by_name.values():
        assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
        assert rule["resources"]["overrides"]["namespace"] == {"resource": "namespace"}


# ------------------------------------------------------------------------------------ the cluster test


def _wait_for(what: str, probe: Callable[[], Any], timeout: float = WAIT_SECONDS) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(1.0)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _start(argv: list[str], port: int, log_path: Path, ready_path: str) -> HostProcess:
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    host_process = HostProcess(process, port, log_path)
    try:
        _wait_for(
            f"{argv[0]} ready",
            lambda: process.poll() is not None or _http_ok(host_process.url(ready_path)),
            timeout=120,
        )
        assert process.poll() is None, f"{argv[0]} exited:\n{log_path.read_text()[-3000:]}"
    except BaseException:
        host_process.stop()
        raise
    return host_process


@pytest.fixture
def devcluster_config(kube: Kube) -> ClusterConfig:
    config = ClusterConfig.load(default_state_dir())
    if not kube.is_devcluster or config is None or config.admin_kubeconfig != kube.kubeconfig:
        pytest.skip("runs the adapter beside the devcluster's API server; KUBECONFIG names another cluster")
    return config


@dataclass
class ServedDigits:
    runtime: HostProcess
    # one held-out image (64 floats): the request body of the load
    image: list[float]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ServedDigits]:
    """ferry-runtime on the host serving the digits model."""
    digits = runtime_models.build_digits_model(tmp_path / "model")
    port = free_port()
    argv = ferry_runtime_command(
        digits.path.parent, MODEL, port, "--max-batch-size", "64", "--max-batch-delay-ms", str(BATCH_DELAY_MS)
    )
    process = _start(argv, port, tmp_path / "ferry-runtime.log", "/v2/health/ready")
    yield ServedDigits(process, [float(value) for value in digits.test_images[0]])
    process.stop()


def _serving_deployment(namespace: str) -> dict[str, Any]:
    """What the HPA scales: a Deployment of one fake pod per replica (kwok runs no container)."""
    labels = {"app.kubernetes.io/name": MODEL}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": MODEL, "namespace": namespace},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "runtime",
                            "image": "ferry-runtime:0.1.0",
                            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                        }
                    ]
                },
            },
        },
    }


def _operator_hpa(namespace: str) -> dict[str, Any]:
    """The HPA the operator builds for `autoscaling.metric: concurrency`, without its owner reference (no
    ModelDeployment exists here for the garbage collector to find)."""
    spec = models.ModelDeploymentSpec.model_validate(
        {
            "model": {"uri": "https://models.example/digits/model.onnx", "format": "onnx"},
            "serving": {
                "autoscaling": {
                    "minReplicas": 1,
                    "maxReplicas": MAX_REPLICAS,
                    "metric": "concurrency",
                    "target": TARGET_IN_FLIGHT,
                }
            },
        }
    )
    inputs = build_inputs.BuildInputs(
        owner=build_inputs.Owner(name=MODEL, namespace=namespace, uid="00000000-0000-0000-0000-000000000000"),
        spec=spec,
        artifact=build_inputs.ServedArtifact(uri=spec.model.uri, sha256=None),
        defaults=build_inputs.ServingDefaults(runtime_image="ferry-runtime:0.1.0"),
    )
    hpa = scaling.horizontal_pod_autoscaler(inputs)
    assert hpa is not None
    hpa["metadata"].pop("ownerReferences", None)
    hpa["metadata"]["namespace"] = namespace
    return hpa


def _prometheus_config(runtime: HostProcess, namespace: str, pod: str) -> dict[str, Any]:
    # the labels prometheus-operator's ServiceMonitor relabeling gives a serving pod's target
    return {
        "global": {"scrape_interval": "2s", "evaluation_interval": "2s"},
        "scrape_configs": [
            {
                "job_name": MODEL,
                "static_configs": [
                    {
                        "targets": [f"127.0.0.1:{runtime.port}"],
                        "labels": {
                            "namespace": namespace,
                            "pod": pod,
                            "service": MODEL,
                            "container": "runtime",
                        },
                    }
                ],
            }
        ],
    }


@pytest.fixture
def host_prometheus(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], HostPrometheus]]:
    started: list[HostPrometheus] = []

    def start(configuration: dict[str, Any]) -> HostPrometheus:
        started.append(start_prometheus(configuration, tmp_path / "prometheus"))
        return started[-1]

    yield start
    for process in started:
        process.stop()


def _in_flight_per_pod(kube: Kube, namespace: str) -> dict[str, float]:
    return custom_metric_per_pod(kube, namespace, prometheus_adapter.CONCURRENCY_METRIC)


class Load:
    """CLIENTS threads, each sending one digits inference after another until stopped."""

    def __init__(self, runtime: HostProcess, image: list[float]) -> None:
        body = json.dumps(
            {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": image}]}
        ).encode()
        self._request = (runtime.url(f"/v2/models/{MODEL}/infer"), body)
        self._stop = threading.Event()
        self.answered = 0
        self.failures: list[str] = []
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(CLIENTS)]

    def _client(self) -> None:
        url, body = self._request
        while not self._stop.is_set():
            request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=30) as reply:
                    reply.read()
                    self.answered += 1
            except (urllib.error.URLError, OSError) as error:
                self.failures.append(str(error))
                time.sleep(0.5)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=40)


@pytest.mark.cluster
@pytest.mark.pod_security("privileged")  # a stand-in Deployment of the devcluster's, not Ferry's pods
def test_hpa_scales_out_on_in_flight_requests_served_by_the_adapter(
    kube: Kube,
    namespace: str,
    devcluster_config: ClusterConfig,
    served: ServedDigits,
    host_prometheus: Callable[[dict[str, Any]], HostPrometheus],
) -> None:
    kube.apply(_serving_deployment(namespace))

    def running_pod() -> str | None:
        pods = kube.kubectl_json("get", "pods", "-n", namespace, "-l", f"app.kubernetes.io/name={MODEL}")
        ready = [p for p in pods["items"] if p.get("status", {}).get("phase") == "Running"]
        return str(ready[0]["metadata"]["name"]) if ready else None

    pod = _wait_for("the first fake pod Running", running_pod)
    prometheus = host_prometheus(_prometheus_config(served.runtime, namespace, pod))
    try:
        prometheus_adapter.up(devcluster_config, prometheus.url())
        # idle: the adapter serves the pod's gauge, and it reads 0
        idle = _wait_for("the adapter to serve the pod's metric", lambda: _in_flight_per_pod(kube, namespace))
        assert idle == {pod: 0.0}

        kube.apply(_operator_hpa(namespace))

        def hpa_status() -> dict[str, Any]:
            hpa = kube.kubectl_json("get", "hpa", MODEL, "-n", namespace)
            return dict(hpa.get("status", {}))

        # the HPA controller reads the metric through the API server (and stays at one replica while idle)
        _wait_for("the HPA to read the custom metric", lambda: hpa_status().get("currentMetrics"))
        assert hpa_status().get("desiredReplicas", 1) == 1

        def loaded_metric() -> dict[str, float] | None:
            metric = _in_flight_per_pod(kube, namespace)
            return metric if metric.get(pod, 0.0) >= TARGET_IN_FLIGHT * 2 else None

        def scaled_out() -> int | None:
            replicas = int(kube.kubectl_json("get", "deployment", MODEL, "-n", namespace)["spec"]["replicas"])
            return replicas if replicas > 1 else None

        with Load(served.runtime, served.image) as load:
            loaded = _wait_for(
                f"the adapter to report {TARGET_IN_FLIGHT * 2}+ requests in flight", loaded_metric
            )
            replicas = _wait_for("the HPA to scale the Deployment out", scaled_out)
            # the other rule: requests per second, a rate of the runtime's request counter
            rps = _wait_for(
                "the adapter to serve requests per second",
                lambda: custom_metric_per_pod(kube, namespace, prometheus_adapter.RPS_METRIC).get(pod),
            )
        assert load.answered > 0, load.failures[:5]
        # one pod reporting CLIENTS in flight against a target of TARGET_IN_FLIGHT per pod: as many pods as
        # divide the load, up to maxReplicas (pods without a sample yet count as 0 when scaling out)
        assert 1 < replicas <= MAX_REPLICAS, (replicas, loaded)
        status = hpa_status()
        print(
            f"custom-metric autoscaling: in flight {loaded[pod]:.1f} on {pod} (target {TARGET_IN_FLIGHT}), "
            f"replicas 1 -> {replicas}, {rps:.1f} requests/s, {load.answered} requests answered; "
            f"HPA {json.dumps(status)}"
        )
    finally:
        prometheus_adapter.down(devcluster_config)
