"""`kubectl ferry predict/chat --token`: the token reaches the model server as `Authorization: Bearer`, and
is refused (not silently dropped) on the service-proxy path, where the API server removes the header."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ferry_operator import plugin

METADATA = {"name": "m", "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}]}
INFER = {"outputs": [{"name": "y", "datatype": "FP32", "shape": [1, 1], "data": [3.0]}]}


class ModelServer(ThreadingHTTPServer):
    """Answers like a model server that requires `Bearer secret-1`, and records what it was sent."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.authorizations: list[str | None] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: ModelServer

    def do_GET(self) -> None:
        self._answer(METADATA)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/v1/chat/completions":
            if self._authorized():
                events = [{"choices": [{"delta": {"content": "hello"}}]}]
                body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
                self._send(200, body.encode(), "text/event-stream")
            return
        self._answer(INFER)

    def _answer(self, document: dict[str, Any]) -> None:
        if self._authorized():
            self._send(200, json.dumps(document).encode(), "application/json")

    def _authorized(self) -> bool:
        authorization = self.headers.get("Authorization")
        self.server.authorizations.append(authorization)
        if authorization == "Bearer secret-1":
            return True
        self._send(401, json.dumps({"error": "missing or invalid bearer token"}).encode(), "application/json")
        return False

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ModelServer]:
    httpd = ModelServer()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def request_file(tmp_path: Path) -> Path:
    path = tmp_path / "request.json"
    path.write_text(
        json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]})
    )
    return path


def predict(*args: str, environ: dict[str, str] | None = None) -> tuple[int, str]:
    out = io.StringIO()
    code = plugin.main(["predict", "m", *args], out=out, environ=environ or {})
    return code, out.getvalue()


def test_token_is_sent_as_a_bearer_authorization_header(server: ModelServer, request_file: Path) -> None:
    code, out = predict("--input", str(request_file), "--url", server.url, "--token", "secret-1")
    assert code == 0
    assert out.strip() == "y FP32 [1, 1]: [3.0]"
    # Both calls (the model's metadata, then the inference) carry it.
    assert server.authorizations == ["Bearer secret-1", "Bearer secret-1"]


def test_token_file_loses_its_trailing_newline(
    server: ModelServer, request_file: Path, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("secret-1\n")  # as `kubectl create token SA > FILE` writes it
    code, _ = predict("--input", str(request_file), "--url", server.url, "--token-file", str(token_file))
    assert code == 0
    assert set(server.authorizations) == {"Bearer secret-1"}


def test_the_environment_supplies_a_token_and_an_option_overrides_it(
    server: ModelServer, request_file: Path
) -> None:
    code, _ = predict("--input", str(request_file), "--url", server.url, environ={"FERRY_TOKEN": "secret-1"})
    assert code == 0
    code, _ = predict(
        "--input",
        str(request_file),
        "--url",
        server.url,
        "--token",
        "stale",
        environ={"FERRY_TOKEN": "secret-1"},
    )
    assert code == 1
    assert server.authorizations[-1] == "Bearer stale"


def test_a_refused_token_shows_the_servers_message(
    server: ModelServer, request_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = predict("--input", str(request_file), "--url", server.url)
    assert code == 1
    assert server.authorizations == [None]
    assert "401 missing or invalid bearer token" in capsys.readouterr().err


def test_chat_streams_with_a_token(server: ModelServer) -> None:
    out = io.StringIO()
    code = plugin.main(
        ["chat", "m", "--message", "hi", "--url", server.url, "--token", "secret-1"], out=out, environ={}
    )
    assert code == 0
    assert out.getvalue() == "hello\n"
    assert server.authorizations == ["Bearer secret-1"]


@pytest.mark.parametrize(
    ("command", "token_args", "environ"),
    [
        (["predict", "digits", "--input", "x.json"], ["--token", "t"], {}),
        (["chat", "digits", "--message", "hi"], [], {"FERRY_TOKEN": "t"}),
    ],
)
def test_the_service_proxy_path_refuses_a_token_before_sending_anything(
    command: list[str], token_args: list[str], environ: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    # No kubeconfig is read and no request is made: through the proxy the token would be dropped silently.
    code = plugin.main([*command, "-n", "ml", *token_args], out=io.StringIO(), environ=environ)
    assert code == 1
    err = capsys.readouterr().err
    assert "removes the Authorization header" in err
    assert "kubectl port-forward -n ml service/digits 8080:8080" in err
    assert "--url http://127.0.0.1:8080" in err
    assert ("--token" if token_args else "$FERRY_TOKEN") in err


def test_a_token_with_white_space_or_an_empty_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    for token_args in (["--token", "two words"], ["--token-file", str(empty)]):
        code = plugin.main(
            ["predict", "m", "--input", "x.json", "--url", "http://127.0.0.1:9", *token_args],
            out=io.StringIO(),
            environ={},
        )
        assert code == 1
        assert "a token is one word with no white space" in capsys.readouterr().err


def test_token_and_token_file_are_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        plugin.parse_args(["predict", "m", "--input", "x", "--token", "a", "--token-file", "f"])
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_help_says_a_token_needs_url(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        plugin.parse_args(["predict", "--help"])
    assert "service proxy removes the Authorization header" in " ".join(capsys.readouterr().out.split())


def test_a_401_through_the_service_proxy_says_the_model_wants_a_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The API server accepted our own credentials (the ModelDeployment was read); the model refused.
    class Refused:
        status = 401

    class ProxyingApi:
        def param_serialize(
            self, method: str, path: str, **_: Any
        ) -> tuple[str, str, dict[str, str], None, None]:
            return method, path, {}, None, None

        def call_api(self, *_: Any, **__: Any) -> Refused:
            return Refused()

    monkeypatch.setattr(plugin, "_get", lambda *_: {})
    args = plugin.parse_args(["predict", "digits", "--input", "x.json", "-n", "ml"])
    with pytest.raises(plugin.PluginError) as raised:
        plugin._server(ProxyingApi(), args)("GET", "/v2/models/digits", None)
    message = str(raised.value)
    assert "401: the model requires a token (spec.serving.auth)" in message
    assert "kubectl port-forward -n ml service/digits 8080:8080" in message
    assert "--token, --token-file or $FERRY_TOKEN" in message
