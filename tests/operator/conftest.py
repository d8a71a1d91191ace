"""Fixtures for the operator's cluster tests: the CRD installed, and a real `ferry-operator` process.

The cluster itself (`kube`, `namespace`) comes from tests/conftest.py.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ferry_devcluster import monitoring
from ferry_devcluster.testing import Kube

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "ferry.dev_modeldeployments.yaml"
OPERATOR = Path(sys.executable).parent / "ferry-operator"
T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 120.0, interval: float = 0.2) -> T:
    """Poll `probe` until it returns something truthy; fail naming `what` and the last value seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last seen: {last!r}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OperatorProcess:
    """`ferry-operator --namespace NS` as a subprocess of the test, logging to a file."""

    def __init__(self, kube: Kube, namespace: str, log_path: Path, **env: str) -> None:
        self.kube = kube
        self.namespace = namespace
        self.log_path = log_path
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self.metrics_port = free_port()

    def start(self) -> OperatorProcess:
        assert self.process is None or self.process.poll() is not None, "operator already running"
        environment = {
            **os.environ,
            "KUBECONFIG": str(self.kube.kubeconfig),
            "FERRY_OPERATOR_METRICS_PORT": str(self.metrics_port),
            "FERRY_OPERATOR_RUNTIME_IMAGE": "ferry-runtime:test",
            **self.env,
        }
        with self.log_path.open("ab") as log:
            log.write(f"--- start {time.strftime('%H:%M:%S')}\n".encode())
            self.process = subprocess.Popen(
                [str(OPERATOR), "--namespace", self.namespace],
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup, no graceful shutdown, as a crashed or evicted operator."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            return str(response.read().decode())

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics_port}/healthz", timeout=5
            ) as response:
                return int(response.status) == 200
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture(scope="session")
def crd_installed(_kube_session: Kube) -> Kube:
    kube = _kube_session
    kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    kube.kubectl("wait", "--for=condition=Established", "crd/modeldeployments.ferry.dev", "--timeout=60s")
    return kube


@pytest.fixture
def monitoring_crds(crd_installed: Kube) -> Iterator[None]:
    """The monitoring.coreos.com CRDs, removed afterwards unless they were there before."""
    already = monitoring.installed(crd_installed.kubeconfig)
    monitoring.install(crd_installed.kubeconfig)
    yield
    if not already:
        monitoring.uninstall(crd_installed.kubeconfig)


@pytest.fixture
def operator(
    crd_installed: Kube, namespace: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[OperatorProcess]:
    process = OperatorProcess(crd_installed, namespace, tmp_path / "operator.log").start()
    try:
        wait_for("the operator's health endpoint", process.healthy, timeout=60)
    except AssertionError:
        process.stop()
        sys.stderr.write(f"\n--- ferry-operator log ---\n{process.log()[-20000:]}\n")
        raise
    yield process
    process.stop()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        sys.stderr.write(f"\n--- ferry-operator log ---\n{process.log()[-20000:]}\n")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Iterator[None]:
    # Lets the operator fixture print the operator's log only when the test failed.
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{report.when}", report)


class Cluster:
    """Reads and writes for the tests, through kubectl (the same client users have)."""

    def __init__(self, kube: Kube, namespace: str) -> None:
        self.kube = kube
        self.namespace = namespace

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.kube.kubectl("-n", self.namespace, *args, stdin=stdin, check=check)

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        result = self.kubectl("get", kind, name, "-o", "json", "--ignore-not-found", check=True)
        return json.loads(result.stdout) if result.stdout.strip() else None

    def items(self, kind: str, selector: str) -> list[dict[str, Any]]:
        listing = json.loads(self.kubectl("get", kind, "-l", selector, "-o", "json").stdout)
        return list(listing["items"])

    def apply_md(self, name: str, spec: dict[str, Any]) -> None:
        manifest = {
            "apiVersion": "ferry.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": name},
            "spec": spec,
        }
        self.kubectl("apply", "-f", "-", stdin=json.dumps(manifest))

    def condition(self, name: str, condition_type: str) -> dict[str, Any] | None:
        md = self.get("modeldeployment", name) or {}
        for condition in (md.get("status") or {}).get("conditions") or []:
            if condition["type"] == condition_type:
                return dict(condition)
        return None

    def ready(self, name: str, generation: int | None = None) -> dict[str, Any] | None:
        """The ModelDeployment when it is Ready for its current (or the given) generation."""
        md = self.get("modeldeployment", name)
        if md is None:
            return None
        status = md.get("status") or {}
        want = generation if generation is not None else md["metadata"]["generation"]
        if status.get("observedGeneration") != want or status.get("phase") != "Ready":
            return None
        ready = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), None)
        return md if ready is not None and ready["status"] == "True" else None

    def events(self, name: str) -> list[dict[str, Any]]:
        listing = json.loads(
            self.kubectl(
                "get",
                "events",
                "--field-selector",
                f"involvedObject.name={name},involvedObject.kind=ModelDeployment",
                "-o",
                "json",
            ).stdout
        )
        return list(listing["items"])


@pytest.fixture
def cluster(kube: Kube, namespace: str) -> Cluster:
    return Cluster(kube, namespace)


@pytest.fixture
def model_pvc(cluster: Cluster) -> str:
    """The claim the test specs' pvc://models/... URIs read from (kwok's volume stages bind it)."""
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "models"},
        "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps(claim))
    return "models"
