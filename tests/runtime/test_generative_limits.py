"""Client mistakes get a 4xx in OpenAI's error JSON naming the parameter; overload gets 503 with
Retry-After; SIGTERM lets running streams finish. Against a real ferry-runtime on a Llama made here."""

from __future__ import annotations

import http.client
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import openai
import pytest

from conftest import RuntimeProcess, TinyLlama, start_runtime

pytestmark = pytest.mark.slow

MODEL = "tiny-llama"
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
USER = [{"role": "user", "content": "hi"}]
LONG_PROMPT = "word " * 600  # beyond the model's 512-token context


def request(
    server: RuntimeProcess, method: str, path: str, body: bytes | None
) -> tuple[int, dict[str, str], Any]:
    connection = http.client.HTTPConnection(server.http, timeout=60)
    connection.request(method, path, body, {"content-type": "application/json"})
    reply = connection.getresponse()
    data = reply.read()
    connection.close()
    return reply.status, {k.lower(): v for k, v in reply.getheaders()}, json.loads(data) if data else None


BAD_REQUESTS: list[tuple[str, str, Any, int, str | None, str]] = [
    # (name, path, body, status, param, words the message must contain)
    ("malformed JSON", COMPLETIONS, b'{"model": "tiny-llama", "prompt": ', 400, None, "not valid JSON"),
    ("empty body", COMPLETIONS, b"", 400, None, "empty"),
    ("body not an object", CHAT, [1, 2], 400, None, "JSON object"),
    ("unknown model", COMPLETIONS, {"model": "gpt-9", "prompt": "x"}, 404, "model", "gpt-9"),
    ("missing model", CHAT, {"messages": USER}, 400, "model", "model"),
    (
        "prompt beyond the context",
        COMPLETIONS,
        {"model": MODEL, "prompt": LONG_PROMPT},
        400,
        "prompt",
        "context",
    ),
    (
        "max_tokens beyond the context",
        CHAT,
        {"model": MODEL, "messages": USER, "max_tokens": 10**6},
        400,
        "max_tokens",
        "context",
    ),
    (
        "max_tokens zero",
        COMPLETIONS,
        {"model": MODEL, "prompt": "x", "max_tokens": 0},
        400,
        "max_tokens",
        "at least 1",
    ),
    (
        "max_tokens a string",
        COMPLETIONS,
        {"model": MODEL, "prompt": "x", "max_tokens": "9"},
        400,
        "max_tokens",
        "integer",
    ),
    (
        "temperature out of range",
        CHAT,
        {"model": MODEL, "messages": USER, "temperature": 5},
        400,
        "temperature",
        "0 to 2",
    ),
    ("top_p out of range", CHAT, {"model": MODEL, "messages": USER, "top_p": -1}, 400, "top_p", "0 to 1"),
    (
        "bad role",
        CHAT,
        {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]},
        400,
        "messages",
        "wizard",
    ),
    ("no messages", CHAT, {"model": MODEL, "messages": []}, 400, "messages", "non-empty"),
    (
        "image content",
        CHAT,
        {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
        400,
        "messages",
        "text parts",
    ),
    (
        "unknown parameter",
        COMPLETIONS,
        {"model": MODEL, "prompt": "x", "max_token": 3},
        400,
        "max_token",
        "unrecognized",
    ),
    ("n above 1", CHAT, {"model": MODEL, "messages": USER, "n": 2}, 400, "n", "does not implement"),
    (
        "penalty out of range",
        COMPLETIONS,
        {"model": MODEL, "prompt": "x", "frequency_penalty": 2.5},
        400,
        "frequency_penalty",
        "from -2 to 2",
    ),
    (
        "stream_options without stream",
        CHAT,
        {"model": MODEL, "messages": USER, "stream_options": {"include_usage": True}},
        400,
        "stream_options",
        "stream",
    ),
    ("stop not strings", COMPLETIONS, {"model": MODEL, "prompt": "x", "stop": [1]}, 400, "stop", "strings"),
    (
        "token id outside the vocabulary",
        COMPLETIONS,
        {"model": MODEL, "prompt": [1, 99999]},
        400,
        "prompt",
        "vocabulary",
    ),
    ("empty prompt", COMPLETIONS, {"model": MODEL, "prompt": ""}, 400, "prompt", "empty"),
    ("several prompts", COMPLETIONS, {"model": MODEL, "prompt": ["a", "b"]}, 400, "prompt", "one prompt"),
    # Refused by length before tokenizing: no tokenizer time for a text that cannot fit.
    ("megabyte prompt", COMPLETIONS, {"model": MODEL, "prompt": "x" * 2**20}, 400, "prompt", "cannot fit"),
    (
        "megabyte message",
        CHAT,
        {"model": MODEL, "messages": [{"role": "user", "content": "y" * 2**20}]},
        400,
        "messages",
        "cannot fit",
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "status", "param", "words"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_client_mistakes_get_openai_errors(  # noqa: PLR0917 (one parameter per table column)
    llm_server: RuntimeProcess, path: str, body: Any, status: int, param: str | None, words: str
) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    got, _, document = request(llm_server, "POST", path, data)
    assert got == status, document
    error = document["error"]
    assert error["param"] == param
    assert words in error["message"]
    assert error["type"] in ("invalid_request_error", "not_found_error")


def test_the_openai_client_sees_typed_errors(llm_server: RuntimeProcess) -> None:
    api = openai.OpenAI(base_url=llm_server.url("/v1"), api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        api.completions.create(model="missing", prompt="x")
    with pytest.raises(openai.BadRequestError) as caught:
        api.chat.completions.create(model=MODEL, messages=USER, max_tokens=100000)  # type: ignore[arg-type]
    assert caught.value.param == "max_tokens"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", COMPLETIONS, 405),
        ("DELETE", "/v1/models", 405),
        ("GET", "/v1/models/other", 404),
        ("POST", "/v1/embeddings", 404),
    ],
)
def test_wrong_routes_and_methods(llm_server: RuntimeProcess, method: str, path: str, status: int) -> None:
    got, _, _ = request(llm_server, method, path, b"{}" if method == "POST" else None)
    assert got == status


def test_generate_extension_mistakes_are_400(llm_server: RuntimeProcess) -> None:
    for body, param in (
        ({"parameters": {"max_tokens": 3}}, "text_input"),
        ({"text_input": "x", "parameters": {"max_tokens": -3}}, "max_tokens"),
        ({"text_input": "x", "parameters": {"beam_width": 4}}, "beam_width"),
        ({"text_input": "x", "parameters": []}, "parameters"),
    ):
        got, _, document = request(
            llm_server, "POST", f"/v2/models/{MODEL}/generate", json.dumps(body).encode()
        )
        assert got == 400, document
        assert document["error"].startswith(param)
    got, _, _ = request(llm_server, "POST", "/v2/models/other/generate", b'{"text_input": "x"}')
    assert got == 404


def test_no_5xx_was_counted(llm_server: RuntimeProcess) -> None:
    with urllib.request.urlopen(llm_server.url("/metrics"), timeout=10) as reply:
        lines = [
            line for line in reply.read().decode().splitlines() if line.startswith("ferry_requests_total")
        ]
    assert lines, "request counts are exported"
    assert not [line for line in lines if 'code="5' in line], lines


def _long_stream(server: RuntimeProcess, tokens: int) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection(server.http, timeout=60)
    body = {
        "model": MODEL,
        "prompt": "import",
        "max_tokens": tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    connection.request("POST", COMPLETIONS, json.dumps(body), {"content-type": "application/json"})
    reply = connection.getresponse()
    assert reply.status == 200
    assert reply.readline().startswith(b"data: ")
    return reply


def _gauge(server: RuntimeProcess, name: str) -> float:
    with urllib.request.urlopen(server.url("/metrics"), timeout=10) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return -1


def test_a_full_queue_answers_503_with_retry_after(tiny_llama: TinyLlama, tmp_path: Path) -> None:
    server = start_runtime(
        tiny_llama.genai, MODEL, tmp_path, "--max-sequences", "1", "--max-waiting-sequences", "1"
    )
    try:
        running = _long_stream(server, 500)
        waiting_connection = http.client.HTTPConnection(server.http, timeout=60)
        waiting_connection.request(
            "POST", COMPLETIONS, json.dumps({"model": MODEL, "prompt": "x", "max_tokens": 2})
        )
        deadline = time.monotonic() + 30
        while _gauge(server, "ferry_generation_waiting_sequences") != 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        status, headers, document = request(
            server, "POST", COMPLETIONS, json.dumps({"model": MODEL, "prompt": "y"}).encode()
        )
        assert status == 503, document
        assert int(headers["retry-after"]) >= 1
        assert "waiting" in document["error"]["message"]
        assert running.read().rstrip().endswith(b"[DONE]")
        assert waiting_connection.getresponse().status == 200
    finally:
        assert server.stop() == 0, server.log()


def test_sigterm_lets_running_streams_finish(tiny_llama: TinyLlama, tmp_path: Path) -> None:
    server = start_runtime(tiny_llama.genai, MODEL, tmp_path)
    stream = _long_stream(server, 480)
    server.terminate()
    rest = stream.read()
    events = [event for event in rest.decode().split("\n\n") if event]
    assert events[-1] == "data: [DONE]"
    final = json.loads(events[-3][len("data: ") :])
    assert final["choices"][0]["finish_reason"] == "length"
    assert json.loads(events[-2][len("data: ") :])["usage"]["completion_tokens"] == 480
    assert server.process.wait(60) == 0, server.log()
    # The stream was running when SIGTERM came, and still got every token.
    assert "draining generations: 1 running" in server.log()


def test_context_and_kv_budget_settings_bound_the_pool(tiny_llama: TinyLlama, tmp_path: Path) -> None:
    from ferry_runtime.generative.config import load_decoder_config
    from ferry_runtime.generative.engine import kv_bytes_per_token

    per_sequence = kv_bytes_per_token(load_decoder_config(tiny_llama.genai)) * 64
    # A budget for 2.5 sequences of 64 tokens holds 2, whatever --max-sequences asks.
    budget = str(int(per_sequence * 2.5))
    server = start_runtime(
        tiny_llama.genai, MODEL, tmp_path, "--max-sequence-length", "64", "--kv-cache-bytes", budget
    )
    try:
        assert "2 sequences x 64 tokens" in server.log()
        body = {"model": MODEL, "prompt": [5] * 10, "max_tokens": 60}
        status, _, document = request(server, "POST", COMPLETIONS, json.dumps(body).encode())
        assert status == 400
        assert "64-token context" in document["error"]["message"]
        assert document["error"]["param"] == "max_tokens"
        body["max_tokens"] = 54
        assert request(server, "POST", COMPLETIONS, json.dumps(body).encode())[0] == 200
    finally:
        assert server.stop() == 0, server.log()
    too_small = start_runtime(tiny_llama.genai, MODEL, tmp_path, "--kv-cache-bytes", "1024", wait_ready=False)
    assert too_small.process.wait(60) == 1
    assert "kv_cache_bytes=1024 cannot hold one sequence" in too_small.log()
