"""Fixtures for the observability tests: promtool, the rendered alert rules, and a real ferry-runtime."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from ferry_devcluster.testing import ferry_runtime_command

ROOT = Path(__file__).resolve().parents[2]
# The digits model builder is shared with the runtime tests and bench/runtime_bench.py.
sys.path.insert(0, str(ROOT / "bench"))

import runtime_models  # noqa: E402


@pytest.fixture(scope="session")
def promtool() -> Path:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is missing: run scripts/install-system-deps.sh (Debian package prometheus)")
    return Path(found)


def run_promtool(promtool: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(promtool), *args], capture_output=True, text=True, check=False, cwd=cwd)


@dataclass
class Runtime:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(60)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_runtime(model_dir: Path, name: str, log_dir: Path, *extra: str) -> Runtime:
    port = _free_port()
    args = ferry_runtime_command(model_dir, name, port, *extra)
    log_path = log_dir / f"ferry-runtime-{name}-{port}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, env=os.environ.copy())
    runtime = Runtime(process, port, log_path)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"ferry-runtime exited with {process.returncode}:\n{runtime.log()}")
        try:
            with urllib.request.urlopen(runtime.url("/v2/health/ready"), timeout=2) as reply:
                if reply.status == 200:
                    return runtime
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"ferry-runtime not ready after 120 s:\n{runtime.log()}")


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> runtime_models.DigitsModel:
    return runtime_models.build_digits_model(tmp_path_factory.mktemp("digits"))


@pytest.fixture
def runtime_logs(tmp_path: Path) -> Path:
    return tmp_path
