"""Authentication on the runtime (--auth): bearer tokens from a mounted-Secret directory, over REST and
gRPC with Triton's and the official OpenAI clients, rotation without a restart, and the metrics port.

The TokenReview mode against a real API server is in test_auth_cluster.py; here its cache and bounds
are checked with a reviewer function, because the failure paths (a slow or failing API server) are
what a real server does not produce on demand.
"""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from conftest import RuntimeProcess, TinyLlama, start_runtime, write_secret_volume
from ferry_runtime import auth
from runtime_models import DigitsModel

TOKEN = "s3cr3t-token_0.A~b+c/d="
ROTATED = "rotated-token-2"


def request(
    url: str, token: str | None = None, data: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, data=data, headers=headers), timeout=30
        ) as reply:
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def infer_body(digits: DigitsModel) -> bytes:
    row = digits.test_images[:1]
    return (
        b'{"inputs":[{"name":"input","datatype":"FP32","shape":[1,64],"data":%s}]}'
        % str(row.ravel().tolist()).encode()
    )


@pytest.fixture(scope="module")
def token_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("auth") / "tokens"
    write_secret_volume(directory, {"token": TOKEN}, 1)
    return directory


@pytest.fixture(scope="module")
def guarded(
    digits: DigitsModel, token_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RuntimeProcess]:
    runtime = start_runtime(
        digits.path.parent,
        "digits",
        tmp_path_factory.mktemp("auth-logs"),
        "--auth",
        "bearer",
        "--auth-token-dir",
        str(token_dir),
    )
    yield runtime
    assert runtime.stop() == 0, runtime.log()


def test_health_and_metrics_stay_open(guarded: RuntimeProcess) -> None:
    for path in ("/v2/health/live", "/v2/health/ready", "/v2", "/metrics"):
        status, _, body = request(guarded.url(path))
        assert status == 200, (path, body)


def test_inference_needs_the_token(guarded: RuntimeProcess, digits: DigitsModel) -> None:
    url, body = guarded.url("/v2/models/digits/infer"), infer_body(digits)
    status, headers, answer = request(url, None, body)
    assert status == 401, answer
    assert headers["www-authenticate"] == 'Bearer realm="ferry"'
    assert b"Authorization: Bearer" in answer
    status, headers, answer = request(url, "not-the-token", body)
    assert status == 401
    assert headers["www-authenticate"] == 'Bearer realm="ferry", error="invalid_token"'
    status, _, answer = request(url, TOKEN, body)
    assert status == 200, answer
    # Model metadata, model readiness and feedback are the model's too.
    assert request(guarded.url("/v2/models/digits"))[0] == 401
    assert request(guarded.url("/v2/models/digits/ready"))[0] == 401
    assert request(guarded.url("/v2/models/digits"), TOKEN)[0] == 200
    assert request(guarded.url("/v2/models/digits/feedback"), None, b"{}")[0] == 401


@pytest.mark.parametrize(
    "header",
    [
        b"Basic dXNlcjpwYXNz",
        b"Bearer",
        b"Bearer ",
        b"Bearer a b",
        b"Bearer \xff\xfe",
        b"bearer" + b"x" * 9000,
    ],
    ids=["basic", "no-token", "empty", "space", "binary", "huge"],
)
def test_malformed_authorization_is_a_401_not_a_crash(guarded: RuntimeProcess, header: bytes) -> None:
    with socket.create_connection(("127.0.0.1", guarded.http_port), timeout=30) as connection:
        connection.sendall(
            b"GET /v2/models/digits HTTP/1.1\r\nhost: x\r\nauthorization: %s\r\nconnection: close\r\n\r\n"
            % header
        )
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]


def test_scheme_is_case_insensitive(guarded: RuntimeProcess) -> None:
    with socket.create_connection(("127.0.0.1", guarded.http_port), timeout=30) as connection:
        connection.sendall(
            b"GET /v2/models/digits HTTP/1.1\r\nhost: x\r\nauthorization: BEARER %s\r\n"
            b"connection: close\r\n\r\n" % TOKEN.encode()
        )
        assert connection.recv(65536).startswith(b"HTTP/1.1 200 ")


def test_triton_http_client_with_and_without_the_token(guarded: RuntimeProcess, digits: DigitsModel) -> None:
    client = triton_http.InferenceServerClient(guarded.http)
    images = digits.test_images[:8]
    tensor = triton_http.InferInput("input", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images, binary_data=True)
    with pytest.raises(InferenceServerException) as refused:
        client.infer("digits", [tensor])
    assert "401" in str(refused.value.status()) or "Bearer" in str(refused.value)
    result = client.infer("digits", [tensor], headers={"Authorization": f"Bearer {TOKEN}"})
    np.testing.assert_array_equal(result.as_numpy("label"), digits.expected_labels[:8])
    assert client.is_server_ready()  # health needs no header


def test_triton_grpc_client_with_and_without_the_token(guarded: RuntimeProcess, digits: DigitsModel) -> None:
    client = triton_grpc.InferenceServerClient(guarded.grpc)
    images = digits.test_images[:8]
    tensor = triton_grpc.InferInput("input", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)
    with pytest.raises(InferenceServerException) as refused:
        client.infer("digits", [tensor])
    assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
    with pytest.raises(InferenceServerException) as wrong:
        client.infer("digits", [tensor], headers={"authorization": "Bearer wrong"})
    assert wrong.value.status() == "StatusCode.UNAUTHENTICATED"
    result = client.infer("digits", [tensor], headers={"authorization": f"Bearer {TOKEN}"})
    np.testing.assert_array_equal(result.as_numpy("label"), digits.expected_labels[:8])
    assert client.is_server_live()  # ServerLive and ServerReady stay open for probes


def test_decisions_are_counted(guarded: RuntimeProcess) -> None:
    def counts() -> dict[str, float]:
        text = request(guarded.url("/metrics"))[2].decode()
        found = {}
        for line in text.splitlines():
            if line.startswith("ferry_auth_decisions_total{"):
                labels, _, value = line.rpartition(" ")
                found[labels.split('outcome="')[1].split('"')[0]] = float(value)
        return found

    before = counts()
    request(guarded.url("/v2/models/digits"))
    request(guarded.url("/v2/models/digits"), "wrong")
    request(guarded.url("/v2/models/digits"), TOKEN)
    after = counts()
    for outcome in ("missing", "invalid", "allowed"):
        assert after[outcome] == before.get(outcome, 0) + 1, (outcome, before, after)


def test_rotating_the_secret_takes_effect_without_a_restart(guarded: RuntimeProcess, token_dir: Path) -> None:
    url = guarded.url("/v2/models/digits")
    assert request(url, TOKEN)[0] == 200
    # The overlap a rotation needs: both keys accepted, then the old one removed.
    write_secret_volume(token_dir, {"token": TOKEN, "next": ROTATED}, 2)
    deadline = time.monotonic() + 30
    while request(url, ROTATED)[0] != 200:
        assert time.monotonic() < deadline, "the added token was never accepted"
        time.sleep(0.2)
    assert request(url, TOKEN)[0] == 200
    write_secret_volume(token_dir, {"next": ROTATED}, 3)
    while request(url, TOKEN)[0] != 401:
        assert time.monotonic() < deadline, "the removed token was still accepted"
        time.sleep(0.2)
    assert request(url, ROTATED)[0] == 200
    assert guarded.process.poll() is None


def test_openai_client_sends_its_api_key(tiny_llama: TinyLlama, token_dir: Path, log_dir: Path) -> None:
    import openai

    write_secret_volume(token_dir, {"token": TOKEN}, 4)
    runtime = start_runtime(
        tiny_llama.genai, "tiny-llama", log_dir, "--auth", "bearer", "--auth-token-dir", str(token_dir)
    )
    try:
        base_url = runtime.url("/v1")
        client = openai.OpenAI(api_key=TOKEN, base_url=base_url, max_retries=0)
        completion = client.completions.create(model="tiny-llama", prompt="the", max_tokens=4, temperature=0)
        assert completion.usage is not None
        assert completion.usage.completion_tokens == 4
        stream = client.chat.completions.create(
            model="tiny-llama",
            messages=[{"role": "user", "content": "hello"}],
            max_tokens=4,
            temperature=0,
            stream=True,
        )
        assert sum(1 for _ in stream) >= 1
        with pytest.raises(openai.AuthenticationError) as refused:
            openai.OpenAI(api_key="wrong", base_url=base_url, max_retries=0).models.list()
        assert refused.value.code == "invalid_api_key"
    finally:
        assert runtime.stop() == 0, runtime.log()


def test_metrics_port_serves_metrics_alone(digits: DigitsModel, log_dir: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        metrics_port = probe.getsockname()[1]
    runtime = start_runtime(digits.path.parent, "digits", log_dir, "--metrics-port", str(metrics_port))
    try:
        metrics = f"http://127.0.0.1:{metrics_port}"
        status, _, body = request(f"{metrics}/metrics")
        assert status == 200
        assert b"ferry_model_ready" in body
        assert request(f"{metrics}/v2/health/ready")[0] == 200
        status, _, body = request(f"{metrics}/v2/models/digits")
        assert status == 404
        assert b"metrics port" in body
        status, _, body = request(runtime.url("/metrics"))
        assert status == 404
        assert str(metrics_port).encode() in body
        assert request(runtime.url("/v2/models/digits"))[0] == 200
    finally:
        assert runtime.stop() == 0, runtime.log()


def test_bad_auth_settings_are_refused_before_serving(digits: DigitsModel) -> None:
    from ferry_runtime.settings import load_settings

    base = ["--model-dir", str(digits.path.parent), "--model-name", "digits"]
    for extra, named in (
        (["--auth", "basic"], "auth must be none, bearer or kubernetes"),
        (["--auth", "bearer"], "auth_token_dir"),
        (["--auth", "kubernetes", "--auth-allowed-service-accounts", "just-a-name"], "namespace/name"),
        (["--metrics-port", "8080"], "metrics_port 8080"),
    ):
        with pytest.raises(ValueError, match=named):
            load_settings([*base, *extra], environ={})


# --- the TokenReview authenticator's cache and bounds, with a reviewer function ---


class CountingReviewer:
    def __init__(self, verdicts: dict[bytes, auth.Verdict], delay: float = 0.0) -> None:
        self.verdicts = verdicts
        self.delay = delay
        self.calls: list[bytes] = []

    def __call__(self, token: bytes) -> auth.Verdict:
        self.calls.append(token)
        time.sleep(self.delay)
        return self.verdicts.get(token, auth.Verdict(auth.INVALID, "unknown"))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_reviews_are_cached_shared_and_expire() -> None:
    async def scenario() -> None:
        reviewer = CountingReviewer(
            {b"good": auth.Verdict(auth.ALLOWED, subject="system:serviceaccount:a:b")}
        )
        clock = Clock()
        authenticator = auth.TokenReviewAuthenticator(reviewer, asyncio.get_running_loop(), 10.0, clock)
        first, second = authenticator.check(b"Bearer good"), authenticator.check(b"Bearer good")
        assert isinstance(first, asyncio.Future)
        assert first is second
        assert (await first).allowed
        assert authenticator.check(b"Bearer good") == auth.Verdict(
            auth.ALLOWED, subject="system:serviceaccount:a:b"
        )
        bad = authenticator.check(b"Bearer bad")
        assert isinstance(bad, asyncio.Future)
        assert (await bad).outcome == auth.INVALID
        assert authenticator.check(b"Bearer bad").outcome == auth.INVALID  # type: ignore[union-attr]
        assert reviewer.calls == [b"good", b"bad"]
        clock.now += 3  # a refusal is kept 2 s, an acceptance 10 s
        assert isinstance(authenticator.check(b"Bearer bad"), asyncio.Future)
        assert isinstance(authenticator.check(b"Bearer good"), auth.Verdict)
        clock.now += 8
        assert isinstance(authenticator.check(b"Bearer good"), asyncio.Future)
        authenticator.close()

    asyncio.run(scenario())


def test_reviews_in_flight_are_bounded_and_failures_are_not_cached() -> None:
    async def scenario() -> None:
        reviewer = CountingReviewer({}, delay=0.2)
        authenticator = auth.TokenReviewAuthenticator(reviewer, asyncio.get_running_loop(), 10.0)
        pending = [authenticator.check(b"Bearer t%d" % i) for i in range(auth._MAX_REVIEWS_IN_FLIGHT)]
        assert all(isinstance(item, asyncio.Future) for item in pending)
        over = authenticator.check(b"Bearer one-too-many")
        assert isinstance(over, auth.Verdict)
        assert over.outcome == auth.UNAVAILABLE
        error = auth.refusal(over, "Bearer")
        assert error is not None
        assert error.http_status == 503
        await asyncio.gather(*[item for item in pending if isinstance(item, asyncio.Future)])

        def failing(_token: bytes) -> auth.Verdict:
            raise OSError("connection refused")

        broken = auth.TokenReviewAuthenticator(failing, asyncio.get_running_loop(), 10.0)
        for _ in range(2):
            future = broken.check(b"Bearer x")
            assert isinstance(future, asyncio.Future)  # a failed review is asked again, not cached
            assert (await future).outcome == auth.UNAVAILABLE
        authenticator.close()
        broken.close()

    asyncio.run(scenario())


def test_service_account_names() -> None:
    assert auth.service_account("system:serviceaccount:ml:client") == "ml/client"
    assert auth.service_account("system:node:worker") == ""
    assert auth.service_account("alice") == ""


def test_token_directory_ignores_kubelet_entries_and_keeps_tokens_when_unreadable(tmp_path: Path) -> None:
    directory = tmp_path / "tokens"
    write_secret_volume(directory, {"a": "one", "b": "two"}, 1)
    clock = Clock()
    tokens = auth.TokenDirectory(directory, clock)
    assert len(tokens.digests()) == 2
    moved = tmp_path / "gone"
    directory.rename(moved)  # the volume unmounted or unreadable: the tokens read last still count
    clock.now += 2
    assert len(tokens.digests()) == 2
    moved.rename(directory)
    write_secret_volume(directory, {"b": "two"}, 2)
    clock.now += 2
    assert tokens.digests() == frozenset({auth._digest(b"two")})


def test_an_unreadable_api_server_ca_stops_the_runtime_naming_the_setting(
    digits: DigitsModel, tmp_path: Path, log_dir: Path
) -> None:
    runtime = start_runtime(
        digits.path.parent,
        "digits",
        log_dir,
        "--auth",
        "kubernetes",
        "--auth-api-server",
        "https://127.0.0.1:1",
        "--auth-api-ca-file",
        str(tmp_path / "missing-ca.crt"),
        wait_ready=False,
    )
    assert runtime.process.wait(60) == 2
    assert "cannot start (--auth)" in runtime.log()
