"""The demo end to end on the real node: `scripts/demo.py up` (what `make demo` runs) on a fresh devcluster,
then everything the demo promises, checked with real clients against real pods.

1-2. Ferry installed with Helm, the operator pod on the real node; the ModelDeployment's optimization Job
     ran the optimizer image, its report is in the status, the serving pods fetch the chosen artifact.
3.   Predictions through the Service with tritonclient over REST and gRPC equal ONNX Runtime's on the
     artifact, and the accuracy on the held-out digits is what the optimizer's gate measured.
4.   The host Prometheus (devcluster prometheus, from the ServiceMonitor) has the runtime's request and
     latency series for every serving pod, and the dashboard's queries return data.
5.   Load drives the HPA out on real CPU (metrics-server reading the kubelet) and back in after; then, with
     autoscaling.metric concurrency, out on requests in flight per pod (prometheus-adapter's custom metrics
     API over the demo's Prometheus) and back in after.
6.   A model update rolls out under steady load with no failed request.
7.   `helm test` passes.
8.   The generative model (ModelDeployment `llm`, format huggingface, trained here on Debian's fortunes):
     built into onnxruntime-genai folders and quantized in its Job behind a perplexity gate;
     completions and chat stream through its Service with the official `openai` client, in words of
     its corpus; Prometheus has its time-to-first-token series; concurrent streams scale it out on
     its queue (waiting requests per pod, through the custom metrics API) and back in, none failing.

The tests run in file order and share one cluster (module fixture); each step's figures (timings, replicas
over time, success rates) are written to $FERRY_E2E_REPORT (default out/e2e/report.json) for the status
notes. FERRY_E2E_STATE_DIR reuses a running demo cluster instead of starting one (development).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Self

import numpy as np
import pytest

from ferry_devcluster import build, prometheus, real_node
from ferry_devcluster.config import ClusterConfig
from ferry_devcluster.prometheus_adapter import CONCURRENCY_METRIC, QUEUE_METRIC
from ferry_devcluster.testing import (
    Kube,
    custom_metric_per_pod,
    free_port_base,
    quantity,
    real_node_slot_or_skip,
)

pytestmark = pytest.mark.e2e

ROOT = build.REPO_ROOT
DEMO_SCRIPT = ROOT / "scripts" / "demo.py"
DASHBOARD = ROOT / "charts" / "ferry" / "dashboards" / "ferry-overview.json"
REPORT = Path(os.environ.get("FERRY_E2E_REPORT", ROOT / "out" / "e2e" / "report.json"))


def load_demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ferry_demo", DEMO_SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


demo = load_demo()
# the serving pods' selector (the optimization Job's pods share the other labels)
SERVING_PODS = f"ferry.dev/modeldeployment={demo.MODEL}"


def wait_for(what: str, probe: Callable[[], Any], timeout: float, interval: float = 2.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; last seen: {last!r}")


@dataclass
class Demo:
    config: ClusterConfig
    kube: Kube
    out: Path
    output: str
    report: dict[str, Any] = field(default_factory=dict)

    def record(self, key: str, value: Any) -> None:
        self.report[key] = value
        REPORT.parent.mkdir(parents=True, exist_ok=True)
        REPORT.write_text(json.dumps(self.report, indent=2))

    def md(self, name: str = demo.MODEL) -> dict[str, Any]:
        result: dict[str, Any] = self.kube.kubectl_json("get", "modeldeployment", name, "-n", demo.NAMESPACE)
        return result

    def service_ip(self, name: str = demo.MODEL) -> str:
        return str(self.kube.kubectl_json("get", "service", name, "-n", demo.NAMESPACE)["spec"]["clusterIP"])

    def query(self, expression: str) -> list[dict[str, Any]]:
        address = f"{prometheus.url(self.config)}/api/v1/query?" + urllib.parse.urlencode(
            {"query": expression}
        )
        with urllib.request.urlopen(address, timeout=30) as reply:
            body = json.loads(reply.read())
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def artifact_dir(self, name: str = demo.MODEL) -> Path:
        """The served artifact's directory on the node (the artifact claim's local volume)."""
        uri = self.md(name)["status"]["optimization"]["artifact"]["uri"].rsplit("/", 1)[0]
        prefix = f"pvc://{demo.ARTIFACT_CLAIM}/"
        assert uri.startswith(prefix), uri
        claim = Path(demo_env(self.config, lambda: demo.claim_directory(demo.ARTIFACT_CLAIM)))
        return Path(claim / str(uri[len(prefix) :]))


def demo_env(config: ClusterConfig, action: Callable[[], Any]) -> Any:
    """Run one of demo.py's helpers against this cluster (it finds the cluster by the environment)."""
    saved = os.environ.get("FERRY_DEVCLUSTER_DIR")
    os.environ["FERRY_DEVCLUSTER_DIR"] = str(config.state_dir)
    try:
        return action()
    finally:
        if saved is None:
            os.environ.pop("FERRY_DEVCLUSTER_DIR")
        else:
            os.environ["FERRY_DEVCLUSTER_DIR"] = saved


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    reuse = os.environ.get("FERRY_E2E_STATE_DIR")
    if reuse:
        state_dir = Path(reuse).resolve()
    else:
        real_node_slot_or_skip()
        state_dir = tmp_path_factory.mktemp("demo") / "cluster"
    out = state_dir.parent / f"{state_dir.name}-demo-out"
    env = {
        **os.environ,
        "FERRY_DEVCLUSTER_DIR": str(state_dir),
        "FERRY_DEMO_OUT": str(out),
        "PYTHONUNBUFFERED": "1",
    }
    if not reuse:
        env["FERRY_DEVCLUSTER_PORT_BASE"] = str(free_port_base())
    try:
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, str(DEMO_SCRIPT), "up"],
            check=False,
            env=env,
            capture_output=True,
            text=True,
            timeout=2400,
        )
        elapsed = time.monotonic() - started
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
        config = ClusterConfig.load(state_dir)
        assert config is not None
        the_demo = Demo(config, Kube(config.admin_kubeconfig, is_devcluster=True), out, result.stdout)
        the_demo.record("demo_up_seconds", round(elapsed, 1))
        the_demo.record("demo_up_laps", json.loads((out / "timings.json").read_text()))
        yield the_demo
    finally:
        if not reuse and os.environ.get("FERRY_DEVCLUSTER_KEEP") != "1":
            subprocess.run(
                [sys.executable, str(DEMO_SCRIPT), "down"],
                check=False,
                env=env,
                capture_output=True,
                timeout=300,
            )


# ----------------------------------------------------------------------------------------- load


class ClientThreads:
    """`clients` threads each running `_run` until the `with` block ends (then joined, each waited for at
    most `join_timeout` seconds); `_lock` guards what they count."""

    def __init__(self, clients: int, join_timeout: float) -> None:
        self.failures: list[str] = []
        self._join_timeout = join_timeout
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self._join_timeout)


class Load(ClientThreads):
    """Clients sending v2 REST inference requests to the Service's ClusterIP, each on a new connection so
    that kube-proxy spreads them over the pods (a kept-alive connection stays on one pod), counting
    answers by outcome."""

    def __init__(self, address: str, body: bytes, clients: int) -> None:
        super().__init__(clients, join_timeout=60)
        self.url = f"http://{address}:8080/v2/models/{demo.MODEL}/infer"
        self.body = body
        self.ok = 0

    def _run(self) -> None:
        request = urllib.request.Request(
            self.url, data=self.body, headers={"Content-Type": "application/json"}
        )
        while not self._stop.is_set():
            try:
                with urllib.request.urlopen(request, timeout=30) as reply:
                    reply.read()
                    good = reply.status == 200
                    failure = "" if good else f"HTTP {reply.status}"
            except (urllib.error.URLError, OSError) as error:
                good, failure = False, f"{type(error).__name__}: {error}"
            with self._lock:
                if good:
                    self.ok += 1
                else:
                    self.failures.append(failure)

    def summary(self) -> dict[str, Any]:
        total = self.ok + len(self.failures)
        return {
            "requests": total,
            "failed": len(self.failures),
            "success_rate": round(self.ok / total, 6) if total else None,
            "first_failures": self.failures[:5],
        }


def held_out(the_demo: Demo) -> tuple[np.ndarray, np.ndarray]:
    data = np.load(the_demo.out / "models" / demo.MODEL / "data.npz")
    return data["x"], data["y"]


def request_body(the_demo: Demo, input_name: str, rows: int) -> bytes:
    """One v2 JSON request of `rows` digits, encoded once: the load's CPU goes to the server, not to the
    clients, which share this machine's cores with the node."""
    x = held_out(the_demo)[0][:rows]
    inputs = [{"name": input_name, "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]
    return json.dumps({"inputs": inputs}).encode()


def input_name(the_demo: Demo) -> str:
    with urllib.request.urlopen(
        f"http://{the_demo.service_ip()}:8080/v2/models/{demo.MODEL}", timeout=10
    ) as reply:
        return str(json.loads(reply.read())["inputs"][0]["name"])


class ReplicaRecorder:
    """The serving Deployment's replicas over time (seconds since start: spec, ready)."""

    def __init__(self, kube: Kube, name: str = demo.MODEL) -> None:
        self.kube = kube
        self.name = name
        self.samples: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = time.monotonic()

    def _run(self) -> None:
        while not self._stop.is_set():
            result = self.kube.kubectl(
                "get", "deployment", self.name, "-n", demo.NAMESPACE, "-o", "json", check=False
            )
            if result.returncode == 0:
                status = json.loads(result.stdout)
                self.samples.append(
                    (
                        round(time.monotonic() - self._started),
                        int(status["spec"].get("replicas") or 0),
                        int(status["status"].get("readyReplicas") or 0),
                    )
                )
            self._stop.wait(5)

    def __enter__(self) -> ReplicaRecorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def current(self) -> int:
        return self.samples[-1][1] if self.samples else 0


def wait_for_one_replica(cluster: Demo) -> None:
    """Wait for the serving Deployment to be back at one replica (earlier steps' traffic may have scaled it
    out), so that a load starts from one pod."""
    wait_for(
        "one serving replica before the load",
        lambda: (
            cluster.kube.kubectl_json("get", "deployment", demo.MODEL, "-n", demo.NAMESPACE)["spec"][
                "replicas"
            ]
            == 1
        ),
        timeout=300,
        interval=5,
    )


@dataclass
class ScaleCycle:
    """What one scale-out under load and the scale-in after it recorded."""

    # ReplicaRecorder's samples: (seconds since it started, spec replicas, ready replicas)
    replicas: list[tuple[float, int, int]]
    # (seconds since the load started, the HPA's reading of its metric) at every check
    readings: list[tuple[int, float | None]]
    # the most replicas the Deployment was asked for
    peak: int
    load: Load

    def replicas_over_time(self) -> list[dict[str, float]]:
        return [{"t": t, "replicas": r, "ready": ready} for t, r, ready in self.replicas]


def scale_out_and_back_in(
    cluster: Demo,
    body: bytes,
    *,
    clients: int,
    read_metric: Callable[[Demo], float | None],
    scaled_out_means: str,
    timeout: float,
    settle_seconds: float,
) -> ScaleCycle:
    """Send `body` from `clients` clients until the HPA scales out and a second pod is Ready, keep the load
    `settle_seconds` longer, stop it, and wait for the HPA to scale back in to one replica; each wait
    times out after `timeout` seconds."""
    readings: list[tuple[int, float | None]] = []
    started = time.monotonic()
    with ReplicaRecorder(cluster.kube) as replicas:
        with Load(cluster.service_ip(), body, clients=clients) as load:

            def scaled_out() -> bool:
                readings.append((round(time.monotonic() - started), read_metric(cluster)))
                return len(serving_pods(cluster)) > 1 and replicas.samples[-1][2] > 1

            wait_for(scaled_out_means, scaled_out, timeout=timeout, interval=5)
            time.sleep(settle_seconds)  # the new pods take traffic under load
        peak = max(sample[1] for sample in replicas.samples)

        def scaled_in() -> bool:
            readings.append((round(time.monotonic() - started), read_metric(cluster)))
            return replicas.samples[-1][1] == 1

        wait_for("the HPA to scale back in to 1", scaled_in, timeout=timeout, interval=5)
    return ScaleCycle(replicas.samples, readings, peak, load)


# ----------------------------------------------------------------------------------------- the steps


def test_demo_prints_where_to_send_requests(cluster: Demo) -> None:
    address = cluster.service_ip()
    assert f"curl -s http://{address}:8080/v2/models/{demo.MODEL}" in cluster.output
    assert f"{address}:8081" in cluster.output
    assert prometheus.url(cluster.config) in cluster.output


def test_operator_pod_runs_on_the_real_node(cluster: Demo) -> None:
    pods = cluster.kube.kubectl_json(
        "get", "pods", "-n", demo.RELEASE_NAMESPACE, "-l", "app.kubernetes.io/component=operator"
    )["items"]
    running = [p for p in pods if p["status"].get("phase") == "Running"]
    assert running, [p["status"] for p in pods]
    assert {p["spec"]["nodeName"] for p in running} == {real_node.NODE_NAME}


def test_optimization_job_ran_and_serving_pods_start_from_its_artifact(cluster: Demo) -> None:
    status = cluster.md()["status"]
    optimization = status["optimization"]
    report = optimization["report"]
    assert report["passed"] is True, optimization
    assert report["chosen"] == "optimized", report
    assert report["metric"]["name"] == "accuracy"
    assert report["metric"]["baseline"] - report["metric"]["value"] <= 0.01
    jobs = cluster.kube.kubectl_json("get", "jobs", "-n", demo.NAMESPACE)["items"]
    (job,) = [j for j in jobs if j["metadata"].get("ownerReferences", [{}])[0].get("name") == demo.MODEL]
    assert job["status"].get("succeeded") == 1
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == demo.IMAGES["optimizer"]
    artifact = optimization["artifact"]
    assert (cluster.artifact_dir() / "model.onnx").stat().st_size == artifact["sizeBytes"]
    serving = cluster.kube.kubectl_json("get", "pods", "-n", demo.NAMESPACE, "-l", SERVING_PODS)["items"]
    assert serving
    for pod in serving:
        assert pod["spec"]["nodeName"] == real_node.NODE_NAME
        fetch = " ".join(pod["spec"]["initContainers"][0].get("args", []))
        assert artifact["uri"] in fetch, fetch
        assert artifact["sha256"] in fetch, fetch
    assert status["model"]["uri"] == artifact["uri"]
    cluster.record("optimization", {"report": report, "artifact": artifact})


def test_predictions_over_rest_and_grpc_match_the_model(cluster: Demo) -> None:
    import onnxruntime
    import tritonclient.grpc as triton_grpc
    import tritonclient.http as triton_http

    x, y = held_out(cluster)
    address = cluster.service_ip()
    session = onnxruntime.InferenceSession(str(cluster.artifact_dir() / "model.onnx"))
    name, output = session.get_inputs()[0].name, session.get_outputs()[0].name
    expected = session.run([output], {name: x})[0]

    rest = triton_http.InferenceServerClient(f"{address}:8080")
    rest_input = triton_http.InferInput(name, list(x.shape), "FP32")
    rest_input.set_data_from_numpy(x, binary_data=True)
    over_rest = rest.infer(demo.MODEL, [rest_input]).as_numpy(output)

    grpc = triton_grpc.InferenceServerClient(f"{address}:8081")
    grpc_input = triton_grpc.InferInput(name, list(x.shape), "FP32")
    grpc_input.set_data_from_numpy(x)
    over_grpc = grpc.infer(demo.MODEL, [grpc_input]).as_numpy(output)

    assert over_rest is not None
    assert over_grpc is not None
    np.testing.assert_allclose(over_rest, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(over_grpc, expected, rtol=1e-5, atol=1e-6)
    # the optimizer's gate measured the first optimize.data.samples rows
    samples = int(cluster.md()["spec"]["optimize"]["data"].get("samples", 512))
    accuracy = float((over_grpc.argmax(axis=1)[:samples] == y[:samples]).mean())
    gate = cluster.md()["status"]["optimization"]["report"]["metric"]["value"]
    assert accuracy == pytest.approx(gate, abs=1e-6)
    cluster.record("served_accuracy", accuracy)


def test_helm_test_passes(cluster: Demo) -> None:
    result = cluster.kube.helm("test", demo.RELEASE, "-n", demo.RELEASE_NAMESPACE, "--timeout", "3m")
    assert "Phase:          Succeeded" in result.stdout, result.stdout


def serving_pods(cluster: Demo) -> set[str]:
    pods = cluster.kube.kubectl_json("get", "pods", "-n", demo.NAMESPACE, "-l", SERVING_PODS)["items"]
    return {p["metadata"]["name"] for p in pods if p["status"].get("phase") == "Running"}


def test_prometheus_has_the_runtimes_request_and_latency_series_for_each_pod(cluster: Demo) -> None:
    selector = f'namespace="{demo.NAMESPACE}", model="{demo.MODEL}"'
    requests = f'sum by (pod) (ferry_requests_total{{{selector}, protocol="rest", code="200"}})'
    latency = f"sum by (pod) (ferry_request_duration_seconds_count{{{selector}}})"

    def total(expression: str) -> float:
        return sum(float(sample["value"][1]) for sample in cluster.query(expression))

    before = total(requests)
    body = request_body(cluster, input_name(cluster), 8)
    with Load(cluster.service_ip(), body, clients=1) as load:
        time.sleep(5)
    assert load.ok > 0, load.summary()
    assert not load.failures, load.summary()
    # the next scrape (the ServiceMonitor's interval) carries these requests
    wait_for(
        f"Prometheus to count the {load.ok} requests just sent",
        lambda: total(requests) >= before + load.ok,
        timeout=120,
        interval=5,
    )
    pods = serving_pods(cluster)
    for expression in (requests, latency):
        found = {sample["metric"].get("pod", "") for sample in cluster.query(expression)}
        assert pods <= found, (expression, found)
    quantile = cluster.query(
        f"histogram_quantile(0.99, sum by (le) (ferry_request_duration_seconds_bucket{{{selector}}}))"
    )
    assert quantile
    assert float(quantile[0]["value"][1]) > 0
    targets = json.loads(urllib.request.urlopen(f"{prometheus.url(cluster.config)}/api/v1/targets").read())
    jobs = {t["labels"]["job"]: t["health"] for t in targets["data"]["activeTargets"]}
    cluster.record("prometheus_targets", jobs)


def hpa_utilization(cluster: Demo) -> int | None:
    hpa = cluster.kube.kubectl_json("get", "hpa", demo.MODEL, "-n", demo.NAMESPACE)
    for metric in hpa.get("status", {}).get("currentMetrics") or []:
        current = metric.get("resource", {}).get("current", {})
        if "averageUtilization" in current:
            return int(current["averageUtilization"])
    return None


def test_load_scales_out_on_real_cpu_and_back_in_after(cluster: Demo) -> None:
    # The demo's spec.serving.autoscaling.scaleDown shortens the scale-in stabilization (Kubernetes'
    # default is 5 minutes); the operator writes it to the HPA.
    hpa = cluster.kube.kubectl_json("get", "hpa", demo.MODEL, "-n", demo.NAMESPACE)
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 20, hpa["spec"]
    wait_for_one_replica(cluster)
    body = request_body(cluster, input_name(cluster), 256)
    cycle = scale_out_and_back_in(
        cluster,
        body,
        clients=4,
        read_metric=hpa_utilization,
        scaled_out_means="the HPA to scale out and a second pod to be Ready",
        timeout=420,
        settle_seconds=15,
    )
    cluster.record(
        "hpa",
        {
            "replicas_over_time": cycle.replicas_over_time(),
            "cpu_utilization_over_time": [{"t": t, "percent": u} for t, u in cycle.readings],
            "peak_replicas": cycle.peak,
            "load": cycle.load.summary(),
        },
    )
    assert cycle.peak > 1
    assert max(u for _, u in cycle.readings if u is not None) > 50
    assert not cycle.load.failures, cycle.load.summary()


def hpa_pods_metric(cluster: Demo, name: str = demo.MODEL) -> float | None:
    """The HPA's current per-pod average of its Pods metric (a quantity: "3", "2500m")."""
    hpa = cluster.kube.kubectl_json("get", "hpa", name, "-n", demo.NAMESPACE)
    for metric in hpa.get("status", {}).get("currentMetrics") or []:
        value = metric.get("pods", {}).get("current", {}).get("averageValue")
        if value is not None:
            return quantity(value)
    return None


def test_load_scales_out_on_requests_in_flight_through_the_custom_metrics_api(cluster: Demo) -> None:
    # The demo started prometheus-adapter against its Prometheus: every serving pod has the metric.
    served = wait_for(
        "the custom metrics API to serve every serving pod's requests in flight",
        lambda: (
            set(custom_metric_per_pod(cluster.kube, demo.NAMESPACE, CONCURRENCY_METRIC))
            >= serving_pods(cluster)
        ),
        timeout=120,
        interval=5,
    )
    assert served
    wait_for_one_replica(cluster)
    # One-row requests wait for others to join their batch (the demo's batching.maxDelayMs), so each
    # client keeps about one request in flight; the target of 2 per pod makes 8 clients want 4 pods.
    target = 2
    manifest = demo.model_deployment()
    manifest["spec"]["serving"]["autoscaling"].update(metric="concurrency", target=target)
    cluster.kube.apply(manifest)
    try:
        wait_for(
            "the HPA to scale on the Pods metric",
            lambda: (
                cluster.kube.kubectl_json("get", "hpa", demo.MODEL, "-n", demo.NAMESPACE)["spec"]["metrics"][
                    0
                ]
                == {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": CONCURRENCY_METRIC},
                        "target": {"type": "AverageValue", "averageValue": str(target)},
                    },
                }
            ),
            timeout=60,
        )
        body = request_body(cluster, input_name(cluster), 1)
        cycle = scale_out_and_back_in(
            cluster,
            body,
            clients=8,
            read_metric=hpa_pods_metric,
            scaled_out_means="the HPA to scale out on requests in flight",
            timeout=300,
            settle_seconds=10,
        )
    finally:
        # back to the demo's CPU autoscaling for the next steps
        cluster.kube.apply(demo.model_deployment())
    cluster.record(
        "hpa_concurrency",
        {
            "target_per_pod": target,
            "replicas_over_time": cycle.replicas_over_time(),
            "in_flight_per_pod_over_time": [{"t": t, "average": v} for t, v in cycle.readings],
            "peak_replicas": cycle.peak,
            "load": cycle.load.summary(),
        },
    )
    assert cycle.peak > 1
    assert max(v for _, v in cycle.readings if v is not None) > target
    assert not cycle.load.failures, cycle.load.summary()


def test_model_update_rolls_out_under_steady_load_without_failed_requests(cluster: Demo) -> None:
    update = cluster.out / "models" / "digits-v2"
    if not (update / "model.keras").exists():
        trained = subprocess.run(
            [
                sys.executable,
                str(ROOT / "examples" / "digits" / "train.py"),
                str(update),
                "--seed",
                "11",
                "--epochs",
                "20",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert trained.returncode == 0, trained.stderr[-3000:]
    demo_env(cluster.config, lambda: demo.put_on_claim(demo.MODEL_CLAIM, update, "digits-v2"))
    before = cluster.md()["status"]
    old_pods = serving_pods(cluster)
    body = request_body(cluster, input_name(cluster), 8)
    started = time.monotonic()
    with ReplicaRecorder(cluster.kube) as replicas, Load(cluster.service_ip(), body, clients=2) as load:
        cluster.kube.apply(demo.model_deployment("digits-v2/model.keras"))

        def rolled_out() -> bool:
            status = cluster.md()["status"]
            ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", []))
            new_artifact = status.get("model", {}).get("uri") != before.get("model", {}).get("uri")
            current = serving_pods(cluster)
            return ready and new_artifact and bool(current) and not (current & old_pods)

        wait_for(
            "the update to be optimized, rolled out and the old pods gone",
            rolled_out,
            timeout=900,
            interval=3,
        )
        cluster.kube.kubectl(
            "rollout", "status", f"deployment/{demo.MODEL}", "-n", demo.NAMESPACE, "--timeout=300s"
        )

        def old_pods_gone() -> bool:
            pods = cluster.kube.kubectl_json("get", "pods", "-n", demo.NAMESPACE, "-l", SERVING_PODS)["items"]
            return not {p["metadata"]["name"] for p in pods} & old_pods

        # terminating pods still drain (preStop, then in-flight requests): the load runs until they exit
        wait_for("the old pods to finish terminating", old_pods_gone, timeout=180)
        time.sleep(5)
    after = cluster.md()["status"]
    cluster.record(
        "rollout",
        {
            "seconds": round(time.monotonic() - started, 1),
            "revision": {"before": before.get("revision"), "after": after.get("revision")},
            "replicas_over_time": [
                {"t": t, "replicas": r, "ready": ready} for t, r, ready in replicas.samples
            ],
            "load": load.summary(),
        },
    )
    assert after["model"]["uri"] != before["model"]["uri"]
    assert load.ok > 0
    assert not load.failures, load.summary()


def pod_address(cluster: Demo) -> str:
    pods = cluster.kube.kubectl_json("get", "pods", "-n", demo.NAMESPACE, "-l", SERVING_PODS)["items"]
    running = [p for p in pods if p["metadata"]["name"] in serving_pods(cluster)]
    return str(running[0]["status"]["podIP"])


def post(url: str, body: dict[str, Any]) -> int:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def test_dashboard_queries_return_data_from_this_prometheus(cluster: Demo) -> None:
    from ferry_operator.api import models
    from ferry_operator.builders import alerts

    # the latency SLO's recording rules, as a PrometheusRule (devcluster prometheus loads those)
    spec = models.ModelDeploymentSpec.model_validate(demo.model_deployment()["spec"])
    cluster.kube.apply(alerts.prometheus_rule(demo.MODEL, demo.NAMESPACE, spec))
    reloaded = subprocess.run(
        [
            str(ROOT / "devcluster" / "devcluster"),
            "--state-dir",
            str(cluster.config.state_dir),
            "prometheus",
            "up",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert reloaded.returncode == 0, reloaded.stderr
    # traffic, and feedback (to the pod that answered: feedback state is per replica) scored and rejected
    name = input_name(cluster)
    pod = f"http://{pod_address(cluster)}:8080/v2/models/{demo.MODEL}"
    x, y = held_out(cluster)
    for index in range(20):
        request = {
            "id": f"e2e-{index}",
            "inputs": [{"name": name, "shape": [1, 64], "datatype": "FP32", "data": x[index].tolist()}],
        }
        assert post(f"{pod}/infer", request) == 200
        assert post(f"{pod}/feedback", {"id": f"e2e-{index}", "label": int(y[index])}) == 200
    assert post(f"{pod}/feedback", {"id": "never-sent", "label": 1}) == 404
    # and generations of the generative model, for the Generation row
    with (
        Load(cluster.service_ip(), request_body(cluster, name, 8), clients=1),
        Streams(cluster.service_ip(demo.LLM), clients=2, max_tokens=32) as streams,
    ):
        time.sleep(10)
    assert streams.completed > 0, streams.summary()
    assert not streams.failures, streams.summary()

    dashboard = json.loads(DASHBOARD.read_text())
    expressions = {
        target["expr"]
        .replace("$__rate_interval", "2m")
        .replace("$namespace", demo.NAMESPACE)
        # the Model variable with both of the demo's models selected
        .replace("$model", f"{demo.MODEL}|{demo.LLM}")
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    }
    # Every query answers: the dashboard reads only Ferry's own series (the operator's through its
    # ServiceMonitor), and the error ratio is 0, not "No data", while nothing failed.
    deadline = time.monotonic() + 150
    missing: set[str] = set(expressions)
    while missing and time.monotonic() < deadline:
        missing = {e for e in missing if not cluster.query(e)}
        if missing:
            time.sleep(10)
    assert not missing, f"dashboard queries without data: {sorted(missing)}"
    # (of the model under load: an idle one's ratio is 0/0 over the window)
    error_ratio = [
        float(sample["value"][1])
        for sample in cluster.query(next(e for e in expressions if 'code=~"5..' in e))
        if sample["metric"].get("model") == demo.MODEL
    ]
    assert error_ratio
    assert all(0.0 <= ratio <= 1.0 for ratio in error_ratio), error_ratio
    cluster.record(
        "dashboard",
        {
            "queries": len(expressions),
            "with_data": len(expressions) - len(missing),
            "error_ratio": error_ratio,
        },
    )


def template_hashes(cluster: Demo, running_only: bool = True) -> set[str]:
    """The pod-template-hash labels of the serving pods: which revisions' ReplicaSets have pods."""
    pods = cluster.kube.kubectl_json("get", "pods", "-n", demo.NAMESPACE, "-l", SERVING_PODS)["items"]
    return {
        p["metadata"]["labels"]["pod-template-hash"]
        for p in pods
        if not running_only or p["status"].get("phase") == "Running"
    }


def test_broken_update_is_rolled_back_automatically_while_the_previous_revision_serves(cluster: Demo) -> None:
    # An ONNX model served as it is (no optimize) whose file is not a model: the runtime cannot load it.
    broken = cluster.out / "models" / "broken"
    broken.mkdir(parents=True, exist_ok=True)
    (broken / "model.onnx").write_bytes(b"this is not an ONNX model\n")
    demo_env(cluster.config, lambda: demo.put_on_claim(demo.MODEL_CLAIM, broken, "broken"))
    before = cluster.md()
    serving_revision = before["status"]["revision"]["current"]
    # the serving revision's ReplicaSet (the HPA may add pods of it meanwhile)
    old_hashes = template_hashes(cluster)
    manifest = demo.model_deployment()
    manifest["spec"]["model"] = {"uri": f"pvc://{demo.MODEL_CLAIM}/broken/model.onnx", "format": "onnx"}
    del manifest["spec"]["optimize"]
    body = request_body(cluster, input_name(cluster), 8)
    started = time.monotonic()
    with Load(cluster.service_ip(), body, clients=1) as load:
        cluster.kube.apply(manifest)

        def rolled_back() -> dict[str, Any] | None:
            status = cluster.md()["status"]
            rollback = status.get("rollback")
            return (
                rollback
                if rollback and rollback.get("generation") == before["metadata"]["generation"] + 1
                else None
            )

        rollback = wait_for(
            "the operator to roll the broken update back", rolled_back, timeout=600, interval=5
        )

        def failing_pods_gone() -> bool:
            return template_hashes(cluster, running_only=False) <= old_hashes

        wait_for("the failing new pods to be removed", failing_pods_gone, timeout=180, interval=5)
        time.sleep(5)
    status = cluster.md()["status"]
    cluster.record(
        "rollback",
        {"seconds": round(time.monotonic() - started, 1), "status": rollback, "load": load.summary()},
    )
    assert rollback["revision"] == serving_revision
    assert rollback["failedRevision"] != serving_revision
    assert rollback["reason"] in ("CrashLoopBackOff", "ProgressDeadlineExceeded"), rollback
    assert "restarted" in rollback["message"] or "did not become available" in rollback["message"], rollback
    conditions = {c["type"]: c for c in status["conditions"]}
    assert any("roll" in (c.get("reason", "") + c.get("message", "")).lower() for c in conditions.values()), (
        conditions
    )
    # the previous revision kept serving throughout, and still does
    assert serving_pods(cluster), status
    assert template_hashes(cluster) == old_hashes
    assert load.ok > 0
    assert not load.failures, load.summary()


# ----------------------------------------------------------------------------------- the generative model


PROMPT = "A man walks into a bar and"
# More openings of the kind the corpus has, whose greedy replies are pooled for the language check.
LANGUAGE_PROMPTS = ["The secret of life is", "Never trust a", "You will be", "Love is", "In the beginning"]


def openai_client(address: str) -> Any:
    import openai

    return openai.OpenAI(base_url=f"http://{address}:8080/v1", api_key="unused", max_retries=0, timeout=120)


class Streams(ClientThreads):
    """Clients streaming completions from the generative model's Service with the official openai client,
    a new client (connection) per stream so kube-proxy spreads them, counting streams by outcome."""

    def __init__(self, address: str, clients: int, max_tokens: int) -> None:
        super().__init__(clients, join_timeout=180)
        self.address = address
        self.max_tokens = max_tokens
        self.completed = 0
        self.tokens = 0

    def _run(self) -> None:
        import openai

        while not self._stop.is_set():
            client = openai_client(self.address)
            try:
                stream = client.completions.create(
                    model=demo.LLM,
                    prompt=PROMPT,
                    max_tokens=self.max_tokens,
                    temperature=0.8,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                usage = None
                for chunk in stream:
                    usage = chunk.usage or usage
                tokens = usage.completion_tokens if usage is not None else 0
                failure = "" if tokens > 0 else "a stream without usage or tokens"
            except (openai.APIError, OSError) as error:
                tokens, failure = 0, f"{type(error).__name__}: {error}"
            finally:
                client.close()
            with self._lock:
                if failure:
                    self.failures.append(failure)
                else:
                    self.completed += 1
                    self.tokens += tokens

    def summary(self) -> dict[str, Any]:
        return {"completed": self.completed, "tokens": self.tokens, "failures": self.failures[:5]}


def fortune_words() -> set[str]:
    """Every word of the corpus the demo's model learned from (Debian's fortunes)."""
    words: set[str] = set()
    for path in Path("/usr/share/games/fortunes").iterdir():
        if path.is_file() and not path.suffix and not path.is_symlink():
            words.update(re.findall(r"[a-z]+", path.read_text(encoding="latin-1").lower()))
    return words


def test_the_generative_model_was_quantized_in_a_job_behind_its_perplexity_gate(cluster: Demo) -> None:
    md = cluster.kube.kubectl_json("get", "modeldeployment", demo.LLM, "-n", demo.NAMESPACE)
    status = md["status"]
    optimization = status["optimization"]
    report = optimization["report"]
    cluster.record("generative_optimization", optimization)
    assert report["passed"] is True, report
    assert report["metric"]["name"] == "perplexity"
    candidates = {c["name"]: c for c in report["candidates"]}
    # The Hugging Face folder built by the Job: the fp32 build is the gate's reference.
    assert set(candidates) == {"fp32", "int4", "int8", "w8a8"}, candidates
    assert report["chosen"] in ("int4", "int8", "w8a8")
    assert candidates[report["chosen"]]["sizeBytes"] < candidates["fp32"]["sizeBytes"] / 2
    # Held-out fortunes: the chosen model's perplexity is within maxIncrease of the fp32 folder's.
    budget = demo.LLM_OPTIMIZE["validate"]["maxIncrease"]
    assert report["metric"]["value"] <= report["metric"]["baseline"] * (1 + budget)
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Optimized"]["status"] == "True", conditions
    # The serving pods fetch the folder the Job wrote to the artifact store.
    assert status["model"]["uri"] == optimization["artifact"]["uri"]
    assert status["model"]["uri"].startswith(f"pvc://{demo.ARTIFACT_CLAIM}/")
    assert status["model"]["format"] == "onnx-genai"
    jobs = cluster.kube.kubectl_json(
        "get", "jobs", "-n", demo.NAMESPACE, "-l", f"ferry.dev/modeldeployment={demo.LLM}"
    )["items"]
    assert len(jobs) == 1, [j["metadata"]["name"] for j in jobs]
    # One Job took the Hugging Face folder itself: the builder ran in the optimizer image.
    arguments = jobs[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert arguments[arguments.index("--format") + 1] == "huggingface", arguments
    # The folder is pinned by its manifest digest (the demo computed it on the claim): the Job succeeded
    # with --model-sha256, so the files it built from are those (it exits 2 on another digest).
    pinned = md["spec"]["model"]["sha256"]
    assert arguments[arguments.index("--model-sha256") + 1] == pinned, arguments


def test_the_generative_model_streams_through_its_service_with_the_openai_client(cluster: Demo) -> None:
    assert "reply:" in cluster.output, cluster.output[-3000:]
    client = openai_client(cluster.service_ip(demo.LLM))
    try:
        assert [model.id for model in client.models.list()] == [demo.LLM]
        pieces = []
        usage = None
        for chunk in client.completions.create(
            model=demo.LLM,
            prompt=PROMPT,
            max_tokens=40,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        ):
            pieces += [choice.text for choice in chunk.choices]
            usage = chunk.usage or usage
        whole = client.completions.create(model=demo.LLM, prompt=PROMPT, max_tokens=40, temperature=0)
        chat = client.chat.completions.create(
            model=demo.LLM, messages=[{"role": "user", "content": "Tell me a fortune."}], max_tokens=40
        )
        # The language check pools greedy replies to several prompts: one reply of a 2.4M model is a few
        # dozen words, often a loop of one phrase, and a sampled one (the chat above) is noisier still.
        greedy = [
            client.completions.create(model=demo.LLM, prompt=prompt, max_tokens=48, temperature=0)
            .choices[0]
            .text
            for prompt in LANGUAGE_PROMPTS
        ]
    finally:
        client.close()
    streamed = "".join(pieces)
    # Greedy is deterministic: the stream concatenates to the one-shot completion.
    assert streamed == whole.choices[0].text
    assert usage is not None
    assert usage.completion_tokens == whole.usage.completion_tokens > 0
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].message.content
    # Language, not noise: far more of what it writes are words of its corpus than of what random tokens of
    # the same tokenizer spell (many of its 2,048 tokens are whole words, so noise scores ~0.4, not 0).
    known = fortune_words()

    def known_share(text: str) -> float:
        words = re.findall(r"[a-z]+", text.lower())
        return sum(word in known for word in words) / max(1, len(words))

    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(demo.llm_model() / "hf" / "tokenizer.json"))
    rng = np.random.default_rng(0)
    noise = float(
        np.mean([known_share(tokenizer.decode(rng.integers(3, 2048, 48).tolist())) for _ in range(50)])
    )
    reply = " ".join([streamed, *greedy])
    share = known_share(reply)
    cluster.record(
        "generative_reply",
        {
            "prompt": PROMPT,
            "greedy": streamed,
            "chat": chat.choices[0].message.content,
            "pooled_prompts": LANGUAGE_PROMPTS,
            "known_word_share": share,
            "random_token_share": noise,
        },
    )
    assert len(re.findall(r"[a-z]+", reply)) >= 5, reply
    assert share >= noise + 0.15, (share, noise, reply)


def test_prometheus_has_the_generative_models_first_token_and_token_series(cluster: Demo) -> None:
    selector = f'namespace="{demo.NAMESPACE}", model="{demo.LLM}"'
    for series in (
        f"sum(ferry_generation_time_to_first_token_seconds_count{{{selector}}})",
        f"sum(ferry_generation_tokens_total{{{selector}}})",
    ):
        wait_for(
            f"Prometheus to have samples of {series}",
            lambda series=series: any(float(s["value"][1]) > 0 for s in cluster.query(series)),
            timeout=120,
            interval=5,
        )


def test_the_generative_pods_memory_request_is_sized_from_the_model_and_its_kv_cache(cluster: Demo) -> None:
    # The demo's llm sets no memory request: the operator sizes it from what the Job measured (status.model)
    # as weights + maxSequences full-context KV caches + the runtime's 256Mi.
    model = cluster.md(demo.LLM)["status"]["model"]
    assert model["format"] == "onnx-genai"
    sequences = demo.llm_deployment()["spec"]["serving"]["generation"]["maxSequences"]
    kv_pool = model["kvCacheBytesPerToken"] * model["contextLength"] * sequences
    expected = math.ceil((model["sizeBytes"] + kv_pool + 256 * 2**20) / 2**20)
    deployment = cluster.kube.kubectl_json("get", "deployment", demo.LLM, "-n", demo.NAMESPACE)
    runtime = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "runtime")
    assert runtime["resources"]["requests"]["memory"] == f"{expected}Mi", runtime["resources"]


def generative_pod_memory(cluster: Demo) -> list[dict[str, Any]]:
    """Each serving pod of the llm: its runtime container's working set (metrics-server) and request."""
    from ferry_operator.builders.sizing import quantity_bytes

    pods = cluster.kube.kubectl_json(
        "get", "pods", "-n", demo.NAMESPACE, "-l", f"ferry.dev/modeldeployment={demo.LLM}"
    )["items"]
    requests = {
        pod["metadata"]["name"]: next(
            c["resources"]["requests"]["memory"] for c in pod["spec"]["containers"] if c["name"] == "runtime"
        )
        for pod in pods
    }
    usage = cluster.kube.kubectl_json(
        "get", "pods.metrics.k8s.io", "-n", demo.NAMESPACE, "-l", f"ferry.dev/modeldeployment={demo.LLM}"
    )["items"]
    return [
        {
            "pod": item["metadata"]["name"],
            "workingSetBytes": quantity_bytes(container["usage"]["memory"]),
            "requestBytes": quantity_bytes(requests[item["metadata"]["name"]]),
        }
        for item in usage
        if item["metadata"]["name"] in requests
        for container in item["containers"]
        if container["name"] == "runtime"
    ]


def test_concurrent_streams_scale_the_generative_model_out_on_its_queue_and_back_in(cluster: Demo) -> None:
    # The demo's llm: 4 sequences per pod, metric queue, target 2 waiting per pod, at most 2 pods. Twelve
    # looping clients keep about 8 requests waiting on one pod, so the HPA wants the second.
    wait_for(
        "the custom metrics API to serve the generative pod's waiting requests",
        lambda: custom_metric_per_pod(cluster.kube, demo.NAMESPACE, QUEUE_METRIC),
        timeout=180,
        interval=5,
    )
    started = time.monotonic()
    readings: list[tuple[int, float | None]] = []

    with ReplicaRecorder(cluster.kube, demo.LLM) as replicas:
        with Streams(cluster.service_ip(demo.LLM), clients=12, max_tokens=96) as streams:

            def scaled_out() -> bool:
                readings.append((round(time.monotonic() - started), hpa_pods_metric(cluster, demo.LLM)))
                return bool(replicas.samples) and replicas.samples[-1][2] > 1

            wait_for(
                "the HPA to scale the generative model out on its queue", scaled_out, timeout=420, interval=5
            )
            time.sleep(15)  # the second pod takes streams under load
            # metrics-server's working set of each busy pod, against the request the operator sized.
            memory = generative_pod_memory(cluster)

        def scaled_in() -> bool:
            readings.append((round(time.monotonic() - started), hpa_pods_metric(cluster, demo.LLM)))
            return replicas.samples[-1][1] == 1

        wait_for("the HPA to scale the generative model back in to 1", scaled_in, timeout=420, interval=5)
    cluster.record(
        "hpa_queue",
        {
            "replicas_over_time": [
                {"t": t, "replicas": r, "ready": ready} for t, r, ready in replicas.samples
            ],
            "waiting_per_pod_over_time": [{"t": t, "average": v} for t, v in readings],
            "streams": streams.summary(),
            "memory": memory,
        },
    )
    assert memory, "metrics-server reported no generative pod"
    for pod in memory:
        assert pod["workingSetBytes"] <= pod["requestBytes"], memory
    assert max(sample[2] for sample in replicas.samples) == 2
    assert max(v for _, v in readings if v is not None) > 2
    assert streams.completed > 0
    assert not streams.failures, streams.summary()


def test_kubectl_ferry_reaches_both_models_through_the_api_servers_service_proxy(cluster: Demo) -> None:
    # The default path of `kubectl ferry predict` and `chat` (no --url): the API server's service proxy,
    # with the kubeconfig's credentials, as a user outside the cluster network would call it.
    plugin = [
        sys.executable,
        "-m",
        "ferry_operator.plugin",
        "--kubeconfig",
        str(cluster.config.admin_kubeconfig),
    ]
    predicted = subprocess.run(
        [*plugin, "predict", demo.MODEL, "-n", demo.NAMESPACE, "--input", str(cluster.out / "request.json")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert predicted.returncode == 0, predicted.stderr
    metadata = cluster.kube.kubectl(
        "get",
        "--raw",
        f"/api/v1/namespaces/{demo.NAMESPACE}/services/{demo.MODEL}:http/proxy/v2/models/{demo.MODEL}",
    ).stdout
    outputs = json.loads(metadata)["outputs"]
    assert predicted.stdout.startswith(outputs[0]["name"]), predicted.stdout
    chat = subprocess.run(
        [*plugin, "chat", demo.LLM, "-n", demo.NAMESPACE, "-m", "Tell me a fortune.", "--max-tokens", "24"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert chat.returncode == 0, chat.stderr
    assert re.search(r"[a-z]{2,}", chat.stdout), chat.stdout
    cluster.record("kubectl_ferry_proxy", {"predict": predicted.stdout[:300], "chat": chat.stdout[:300]})


# ---------------------------------------------------------------------- authentication and TLS

SECURE = "digits-secure"


def issue_certificate(directory: Path, names: list[str]) -> tuple[Path, Path, Path]:
    """A CA made here and a server certificate for `names` signed by it: (ca.crt, tls.crt, tls.key)."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True, timeout=60)

    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl(
        "req", "-x509", *curve, "-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=e2e-ca"
    )
    openssl("req", *curve, "-keyout", "tls.key", "-out", "tls.csr", "-subj", f"/CN={names[0]}")
    (directory / "san.cnf").write_text("subjectAltName=" + ",".join(f"DNS:{name}" for name in names) + "\n")
    openssl(
        "x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-set_serial", "1",
        "-days", "1", "-out", "tls.crt", "-extfile", "san.cnf",
    )  # fmt: skip
    return directory / "ca.crt", directory / "tls.crt", directory / "tls.key"


def test_a_model_with_auth_and_tls_answers_only_verified_clients_with_its_token(
    cluster: Demo, tmp_path: Path
) -> None:
    """The demo's model again as `digits-secure`, with bearer tokens from a Secret and TLS from a
    kubernetes.io/tls Secret (a certificate for the Service's DNS name, as cert-manager would issue it),
    on the real node under Pod Security restricted. Clients verify the certificate against the CA and
    the Service's name while connecting to its ClusterIP (the host cannot resolve cluster DNS)."""
    import secrets

    import grpc
    import tritonclient.grpc as triton_grpc
    import urllib3
    from tritonclient.utils import InferenceServerException

    kube, namespace = cluster.kube, demo.NAMESPACE
    dns = f"{SECURE}.{namespace}.svc"
    ca, certificate, key = issue_certificate(tmp_path, [dns, f"{dns}.cluster.local"])
    token = secrets.token_urlsafe(24)
    kube.kubectl(
        "create", "secret", "generic", f"{SECURE}-tokens", "-n", namespace, f"--from-literal=token={token}"
    )
    kube.kubectl(
        "create", "secret", "tls", f"{SECURE}-tls", "-n", namespace, f"--cert={certificate}", f"--key={key}"
    )
    secure = demo.model_deployment()
    secure["metadata"]["name"] = SECURE
    serving = secure["spec"]["serving"]
    del serving["autoscaling"]
    serving["replicas"] = 1
    serving["auth"] = {"mode": "bearer", "secretName": f"{SECURE}-tokens"}
    serving["tls"] = {"secretName": f"{SECURE}-tls"}
    started = time.monotonic()
    kube.apply(secure)
    try:
        kube.kubectl(
            "wait", "--for=condition=Ready", f"modeldeployment/{SECURE}", "-n", namespace, "--timeout=300s"
        )
        ready_seconds = time.monotonic() - started
        # The devcluster's Prometheus makes its scrape jobs from the ServiceMonitors that exist when it is
        # (re)configured, as `devcluster prometheus up` does after a model is added.
        wait_for(
            "the secure model's ServiceMonitor",
            lambda: (
                kube.kubectl("get", "servicemonitor", SECURE, "-n", namespace, check=False).returncode == 0
            ),
            timeout=60,
        )
        prometheus.up(cluster.config)
        address = cluster.service_ip(SECURE)
        body = request_body(cluster, input_name(cluster), 8)
        infer = f"/v2/models/{SECURE}/infer"
        verified = urllib3.HTTPSConnectionPool(
            address,
            8080,
            ca_certs=str(ca),
            cert_reqs="CERT_REQUIRED",
            assert_hostname=dns,
            server_hostname=dns,
        )
        headers = {"Content-Type": "application/json"}
        refused = verified.request("POST", infer, body=body, headers=headers, retries=False)
        assert refused.status == 401, refused.data
        assert refused.headers["www-authenticate"].startswith("Bearer")
        answered = verified.request(
            "POST", infer, body=body, headers={**headers, "Authorization": f"Bearer {token}"}, retries=False
        )
        assert answered.status == 200, answered.data
        # It serves its own artifact (the demo's first model; the `digits` model itself has been updated by
        # the tests before this one): ONNX Runtime here on that artifact is the reference.
        import onnxruntime

        session = onnxruntime.InferenceSession(str(cluster.artifact_dir(SECURE) / "model.onnx"))
        x = held_out(cluster)[0][:8]
        output = json.loads(answered.data)["outputs"][0]["name"]
        expected = session.run([output], {session.get_inputs()[0].name: x})[0]
        np.testing.assert_allclose(
            np.asarray(json.loads(answered.data)["outputs"][0]["data"]),
            expected.ravel(),
            rtol=1e-5,
            atol=1e-6,
        )
        # A client that does not trust the CA, or speaks plain text, gets no answer.
        untrusted = urllib3.HTTPSConnectionPool(address, 8080, cert_reqs="CERT_REQUIRED", server_hostname=dns)
        with pytest.raises(urllib3.exceptions.SSLError):
            untrusted.request("GET", "/v2/health/ready", retries=False)
        with pytest.raises((urllib.error.URLError, ConnectionError, http_client_errors())):
            urllib.request.urlopen(f"http://{address}:8080/v2/models/{SECURE}", timeout=10)

        over_grpc = triton_grpc.InferenceServerClient(
            f"{address}:8081",
            ssl=True,
            root_certificates=str(ca),
            channel_args=[("grpc.ssl_target_name_override", dns)],
        )
        tensor = triton_grpc.InferInput(input_name(cluster), list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        with pytest.raises(InferenceServerException) as unauthenticated:
            over_grpc.infer(SECURE, [tensor])
        assert unauthenticated.value.status() == str(grpc.StatusCode.UNAUTHENTICATED)
        result = over_grpc.infer(SECURE, [tensor], headers={"authorization": f"Bearer {token}"})
        np.testing.assert_allclose(result.as_numpy(output), expected, rtol=1e-5, atol=1e-6)
        # With TLS, /metrics is plain text on the metrics port (8082), which the ServiceMonitor names: this
        # Prometheus scrapes it there, counting the refused and the admitted calls above.
        decisions = wait_for(
            "Prometheus to scrape the secure model's metrics port",
            lambda: {
                sample["metric"]["outcome"]: float(sample["value"][1])
                for sample in cluster.query(f'ferry_auth_decisions_total{{model="{SECURE}"}}')
            }.get("allowed"),
            timeout=120,
        )
        assert decisions >= 2  # one REST and one gRPC call were admitted
        pods = kube.kubectl_json("get", "pods", "-n", namespace, "-l", f"ferry.dev/modeldeployment={SECURE}")
        labels = kube.kubectl_json("get", "namespace", namespace)["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
        cluster.record(
            "auth_and_tls",
            {
                "ready_seconds": round(ready_seconds, 1),
                "pods": [p["metadata"]["name"] for p in pods["items"]],
                "rest_without_token": refused.status,
                "rest_with_token": answered.status,
            },
        )
    finally:
        kube.kubectl("delete", "modeldeployment", SECURE, "-n", namespace, "--wait=false", check=False)
        kube.kubectl("delete", "secret", f"{SECURE}-tokens", f"{SECURE}-tls", "-n", namespace, check=False)


def http_client_errors() -> type[Exception]:
    import http.client

    return http.client.HTTPException
