"""Fixtures that run the real `ferry-runtime` process on real models built in the test session."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ferry_devcluster.testing import ferry_runtime_command

ROOT = Path(__file__).resolve().parents[2]
# The model builders are shared with bench/runtime_bench.py, which lives outside any package.
sys.path.insert(0, str(ROOT / "bench"))

import runtime_models  # noqa: E402


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class RuntimeProcess:
    """A running ferry-runtime; `stop()` sends SIGTERM and returns the exit code."""

    process: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    log_path: Path
    args: list[str] = field(default_factory=list)

    @property
    def http(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def url(self, path: str) -> str:
        return f"http://{self.http}{path}"

    def log(self) -> str:
        return self.log_path.read_text()

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.terminate()
        return self.process.wait(timeout)


def start_runtime(
    model_dir: Path, name: str, log_dir: Path, *extra: str, wait_ready: bool = True
) -> RuntimeProcess:
    http_port, grpc_port = free_port(), free_port()
    args = ferry_runtime_command(model_dir, name, http_port, *extra, grpc_port=grpc_port)
    log_path = log_dir / f"ferry-runtime-{name}-{http_port}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, env=os.environ.copy())
    runtime = RuntimeProcess(process, http_port, grpc_port, log_path, args)
    if wait_ready:
        wait_until_ready(runtime)
    return runtime


def wait_until_ready(runtime: RuntimeProcess, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if runtime.process.poll() is not None:
            raise AssertionError(f"ferry-runtime exited with {runtime.process.returncode}:\n{runtime.log()}")
        try:
            with urllib.request.urlopen(runtime.url("/v2/health/ready"), timeout=2) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.05)
    runtime.process.kill()
    raise AssertionError(f"ferry-runtime not ready after {timeout} s:\n{runtime.log()}")


def write_secret_volume(directory: Path, tokens: dict[str, str], generation: int) -> None:
    """Lay tokens out as the kubelet lays out a Secret volume: KEY -> ..data/KEY, ..data -> a timestamped
    directory, swapped with one atomic rename when the Secret changes."""
    directory.mkdir(exist_ok=True)
    version = directory / f"..2026_12_06_{generation:04d}"
    version.mkdir()
    for key, value in tokens.items():
        (version / key).write_text(value + "\n")
    link = directory / "..data_tmp"
    link.symlink_to(version.name)
    link.replace(directory / "..data")
    for key in tokens:
        if not (directory / key).is_symlink():
            (directory / key).symlink_to(f"..data/{key}")
    for stale in directory.iterdir():
        if stale.is_symlink() and stale.name not in tokens and not stale.name.startswith("."):
            stale.unlink()


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> runtime_models.DigitsModel:
    return runtime_models.build_digits_model(tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="session")
def digits_server(
    digits: runtime_models.DigitsModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RuntimeProcess]:
    runtime = start_runtime(
        digits.path.parent, "digits", tmp_path_factory.mktemp("logs"), "--max-body-bytes", "1000000"
    )
    yield runtime
    assert runtime.stop() == 0, runtime.log()


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path


@dataclass(frozen=True)
class TinyLlama:
    """A Llama made in this session: its Hugging Face folder and the onnxruntime-genai folder made from it."""

    hf: Path
    genai: Path


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> TinyLlama:
    import generative_models

    root = tmp_path_factory.mktemp("tiny-llama")
    # In a process of its own: torch must not be imported where TensorFlow already is (see the module).
    hf = Path(generative_models.reference("make", root / "hf"))
    return TinyLlama(hf, generative_models.build_genai_model(hf, root / "genai"))


@pytest.fixture(scope="session")
def llm_server(tiny_llama: TinyLlama, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    runtime = start_runtime(
        tiny_llama.genai, "tiny-llama", tmp_path_factory.mktemp("llm-logs"), "--max-sequences", "16"
    )
    yield runtime
    assert runtime.stop() == 0, runtime.log()
