"""Helpers for tests that run against a cluster (used by tests/conftest.py's fixtures)."""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ferry_devcluster import build, cluster
from ferry_devcluster.config import PORT_OFFSETS, ClusterConfig

COMMAND_TIMEOUT_SECONDS = 300
# The ferry-runtime console script of the environment the tests run in.
FERRY_RUNTIME = str(Path(sys.executable).parent / "ferry-runtime")


@dataclass(frozen=True)
class Kube:
    """A cluster to test against."""

    kubeconfig: Path
    # True when the cluster is this checkout's devcluster (GPU nodes, `devcluster` commands apply)
    is_devcluster: bool

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        command = [str(build.kubectl()), "--kubeconfig", str(self.kubeconfig), *args]
        result = subprocess.run(
            command, input=stdin, capture_output=True, text=True, check=False, timeout=COMMAND_TIMEOUT_SECONDS
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
        return result

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def apply(self, manifest: dict[str, Any] | str, namespace: str | None = None) -> None:
        document = manifest if isinstance(manifest, str) else json.dumps(manifest)
        self.kubectl("apply", *(["-n", namespace] if namespace else []), "-f", "-", stdin=document)

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        helm = build.ensure(["helm"])["helm"]
        result = subprocess.run(
            [str(helm), "--kubeconfig", str(self.kubeconfig), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=COMMAND_TIMEOUT_SECONDS,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
        return result


def is_loopback_server(server: str) -> bool:
    host = urllib.parse.urlsplit(server).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@contextmanager
def shared_devcluster(config: ClusterConfig, out: TextIO) -> Iterator[Kube]:
    """The devcluster for one test session, shared with any other session using the same state dir.

    Each session holds a shared lock on a file in the state directory while it runs. A cluster that a
    test session started (marked by a file) is stopped by the last session to finish, unless
    FERRY_DEVCLUSTER_KEEP=1; one that was running before any session (a developer's `devcluster up`)
    is left running. So CI ends with nothing running, parallel sessions do not pull the cluster from
    under each other, and a developer keeps a warm cluster between runs.
    """
    config.state_dir.mkdir(parents=True, exist_ok=True)
    started_by_tests = config.state_dir / "started-by-tests"
    with (config.state_dir / "test-sessions.lock").open("a") as sessions:
        fcntl.flock(sessions, fcntl.LOCK_SH)
        try:
            the_cluster = cluster.Cluster(config, out)
            if the_cluster.supervisor.pid("kube-apiserver") is None:
                started_by_tests.touch()
            the_cluster.up()
            yield Kube(kubeconfig=config.admin_kubeconfig, is_devcluster=True)
        finally:
            fcntl.flock(sessions, fcntl.LOCK_UN)
            try:
                fcntl.flock(sessions, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pass  # another session still uses the cluster; the last one out decides
            else:
                if started_by_tests.exists() and os.environ.get("FERRY_DEVCLUSTER_KEEP") != "1":
                    cluster.Cluster(config, out).down()
                    started_by_tests.unlink(missing_ok=True)
                fcntl.flock(sessions, fcntl.LOCK_UN)


def free_port_base() -> int:
    """A port base whose every port is free now, for a second cluster beside the shared one.

    Searched below the kernel's ephemeral ports (32768-60999), where an outgoing connection could take a
    port between this check and the cluster's bind, and below NodePorts; the default base is skipped.
    """
    for base in range(20000 + (os.getpid() % 10) * 100, 26300, 100):
        try:
            for offset in PORT_OFFSETS.values():
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", base + offset))
        except OSError:
            continue
        return base
    raise RuntimeError("no free port range between 20000 and 26300")


def real_node_slot_or_skip(wait_seconds: float = 1200.0) -> None:
    """Return once no other devcluster on this machine runs a real node (there can be one per machine).

    Locally a busy slot skips the test (someone is using the node). Under CI (CI=true) a skip would let a
    run go green without the real-node proof, so it waits for the slot and fails if it never frees.
    """
    # pytest only where a test calls this: the package itself stays standard-library only.
    import pytest

    from ferry_devcluster import real_node

    others = real_node.node_processes_elsewhere()
    if not others:
        return
    if not os.environ.get("CI"):
        pytest.skip(f"another devcluster runs a real node on this machine (one per machine): {others}")
    deadline = time.monotonic() + wait_seconds
    while others and time.monotonic() < deadline:
        time.sleep(10)
        others = real_node.node_processes_elsewhere()
    if others:
        pytest.fail(f"CI needs the real node; another devcluster held it {wait_seconds:.0f} s: {others}")


def free_port() -> int:
    """One free port below the kernel's ephemeral range (32768-60999): the Prometheus port of a free base."""
    return free_port_base() + PORT_OFFSETS["prometheus"]


def ferry_runtime_command(
    model_dir: Path, model_name: str, http_port: int, *extra: str, grpc_port: int = 0
) -> list[str]:
    """The command line of a ferry-runtime a test starts on this host: on 127.0.0.1 with one intra-op
    thread (the cores are shared with the rest of the suite), then the `extra` flags."""
    return [
        FERRY_RUNTIME,
        "--model-dir",
        str(model_dir),
        "--model-name",
        model_name,
        "--host",
        "127.0.0.1",
        "--http-port",
        str(http_port),
        "--grpc-port",
        str(grpc_port),
        "--intra-op-threads",
        "1",
        *extra,
    ]


def custom_metric_per_pod(kube: Kube, namespace: str, metric: str) -> dict[str, float]:
    """Every pod's value of `metric` from the custom metrics API (prometheus-adapter), asked as the HPA
    controller asks it; empty while the API does not answer."""
    path = f"/apis/custom.metrics.k8s.io/v1beta1/namespaces/{namespace}/pods/*/{metric}"
    result = kube.kubectl("get", "--raw", path, check=False)
    if result.returncode != 0:
        return {}
    return {
        item["describedObject"]["name"]: quantity(item["value"])
        for item in json.loads(result.stdout)["items"]
    }


def quantity(text: str) -> float:
    """A Kubernetes quantity as the metrics APIs write one: plain, or in milli-units ("15500m" is 15.5)."""
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


@dataclass
class HostProcess:
    """A server process a test started on this host, answering on 127.0.0.1:port, logging to log_path."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


class HostPrometheus(HostProcess):
    """Debian's `prometheus` binary on the host with a static configuration (no cluster discovery)."""

    def query(self, expression: str) -> list[dict[str, Any]]:
        """The instant vector of `expression` now (/api/v1/query): [{"metric": labels, "value": [t, "v"]}]."""
        address = self.url("/api/v1/query?" + urllib.parse.urlencode({"query": expression}))
        with urllib.request.urlopen(address, timeout=10) as reply:
            document = json.loads(reply.read())
        if document.get("status") != "success" or document["data"]["resultType"] != "vector":
            raise AssertionError(f"query {expression!r} did not return a vector: {document}")
        result: list[dict[str, Any]] = document["data"]["result"]
        return result


def start_prometheus(
    configuration: dict[str, Any], directory: Path, timeout: float = 120.0
) -> HostPrometheus:
    """Start Prometheus with `configuration` (a prometheus.yml as a dict), its files under `directory`;
    returns once /-/ready answers. The caller stops it."""
    from ferry_devcluster import prometheus

    directory.mkdir(parents=True, exist_ok=True)
    config_file = directory / "prometheus.yml"
    # JSON is YAML
    config_file.write_text(json.dumps(configuration))
    port = free_port()
    log_path = directory / "prometheus.log"
    argv = [
        str(prometheus.binary()),
        f"--config.file={config_file}",
        f"--storage.tsdb.path={directory / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    server = HostPrometheus(process, port, log_path)
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(server.url("/-/ready"), timeout=2) as reply:
                if reply.status == 200:
                    return server
        except OSError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(
        f"prometheus not ready at {server.url()} within {timeout:.0f} s:\n{server.log()[-3000:]}"
    )
