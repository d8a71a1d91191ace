"""The OpenAI-compatible API and the v2 generate extension of a real ferry-runtime, driven by real clients.

The official `openai` Python client talks to the server unchanged; greedy text equals transformers' own
`generate` on the source weights; streams concatenate to the non-streamed text; a request that arrives
while a long stream runs finishes first; a client that disconnects mid-stream frees its slot.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.request
from typing import Any

import openai
import pytest

from conftest import RuntimeProcess, TinyLlama

pytestmark = pytest.mark.slow

MODEL = "tiny-llama"


def client(server: RuntimeProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url("/v1"), api_key="unused", max_retries=0, timeout=60)


def post(
    server: RuntimeProcess, path: str, body: bytes | dict[str, Any], method: str = "POST"
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection(server.http, timeout=60)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    connection.request(method, path, data, {"content-type": "application/json"})
    reply = connection.getresponse()
    result = reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()
    connection.close()
    return result


def metric(server: RuntimeProcess, name: str) -> float:
    with urllib.request.urlopen(server.url("/metrics"), timeout=10) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} is not exported")


def test_models_are_listed(llm_server: RuntimeProcess) -> None:
    models = client(llm_server).models.list()
    assert [model.id for model in models.data] == [MODEL]
    assert client(llm_server).models.retrieve(MODEL).id == MODEL


def test_greedy_completion_equals_transformers(llm_server: RuntimeProcess, tiny_llama: TinyLlama) -> None:
    import generative_models

    prompt = "def format_help(self):"
    completion = client(llm_server).completions.create(
        model=MODEL, prompt=prompt, max_tokens=24, temperature=0
    )
    (expected,) = generative_models.reference(
        "greedy", tiny_llama.hf, [{"prompt": prompt, "max_new_tokens": 24}]
    )
    assert completion.choices[0].text == expected["text"]
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == len(expected["prompt_ids"])
    assert completion.usage.completion_tokens == len(expected["generated"])


def test_chat_uses_the_models_template(llm_server: RuntimeProcess, tiny_llama: TinyLlama) -> None:
    import generative_models

    messages = [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "A parser?"}]
    chat = client(llm_server).chat.completions.create(
        model=MODEL, messages=messages, max_tokens=8, temperature=0
    )  # type: ignore[arg-type]
    expected_prompt = generative_models.reference("chat-template", tiny_llama.hf, messages)
    assert chat.usage is not None
    assert chat.usage.prompt_tokens == len(expected_prompt)
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("kind", ["completion", "chat"])
def test_stream_concatenates_to_the_whole_answer(llm_server: RuntimeProcess, kind: str) -> None:
    api = client(llm_server)
    if kind == "completion":
        whole = api.completions.create(model=MODEL, prompt="import sys\n", max_tokens=30, temperature=0)
        pieces = []
        usage = None
        for chunk in api.completions.create(
            model=MODEL,
            prompt="import sys\n",
            max_tokens=30,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        ):
            pieces.extend(choice.text for choice in chunk.choices)
            usage = chunk.usage or usage
        assert "".join(pieces) == whole.choices[0].text
    else:
        messages = [{"role": "user", "content": "hello"}]
        whole_chat = api.chat.completions.create(model=MODEL, messages=messages, max_tokens=30, temperature=0)  # type: ignore[arg-type]
        pieces, usage, reasons = [], None, []
        for chunk in api.chat.completions.create(
            model=MODEL,
            messages=messages,
            max_tokens=30,
            temperature=0,
            stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True},
        ):
            for choice in chunk.choices:
                pieces.append(choice.delta.content or "")
                reasons.append(choice.finish_reason)
            usage = chunk.usage or usage
        assert "".join(pieces) == whole_chat.choices[0].message.content
        assert reasons[-1] == whole_chat.choices[0].finish_reason
        whole = whole_chat  # type: ignore[assignment]
    assert usage is not None
    assert whole.usage is not None
    assert usage.completion_tokens == whole.usage.completion_tokens


def test_raw_stream_is_server_sent_events_ending_in_done(llm_server: RuntimeProcess) -> None:
    status, headers, body = post(
        llm_server, "/v1/completions", {"model": MODEL, "prompt": "x = ", "max_tokens": 5, "stream": True}
    )
    assert status == 200
    assert headers["content-type"] == "text/event-stream"
    events = [line for line in body.decode().split("\n\n") if line]
    assert events[-1] == "data: [DONE]"
    assert all(event.startswith("data: ") for event in events)


def test_seeded_sampling_repeats_and_stop_strings_cut(llm_server: RuntimeProcess) -> None:
    api = client(llm_server)
    kwargs: dict[str, Any] = {
        "model": MODEL,
        "prompt": "def ",
        "max_tokens": 40,
        "temperature": 1.0,
        "top_p": 0.9,
    }
    first = api.completions.create(seed=7, **kwargs).choices[0].text
    assert api.completions.create(seed=7, **kwargs).choices[0].text == first
    greedy = api.completions.create(model=MODEL, prompt="def ", max_tokens=40, temperature=0).choices[0].text
    # top_k=1 leaves one candidate: sampling at any temperature is the greedy text.
    top_one = api.completions.create(
        model=MODEL, prompt="def ", max_tokens=40, temperature=1.5, extra_body={"top_k": 1}
    )
    assert top_one.choices[0].text == greedy
    stop = greedy[5:8]
    assert stop, f"the greedy text is too short to cut: {greedy!r}"
    cut = api.completions.create(model=MODEL, prompt="def ", max_tokens=40, temperature=0, stop=[stop])
    assert cut.choices[0].text == greedy[: greedy.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_penalties_steer_greedy_decoding_away_from_repeated_tokens(llm_server: RuntimeProcess) -> None:
    api = client(llm_server)
    kwargs: dict[str, Any] = {"model": MODEL, "prompt": "def ", "max_tokens": 48, "temperature": 0}
    plain = api.completions.create(**kwargs, logprobs=None)
    penalized = api.completions.create(**kwargs, frequency_penalty=2.0, presence_penalty=2.0)

    # A random tiny model's greedy text repeats itself; penalties over what it generated break that.
    def distinct(text: str) -> int:
        return len(set(text.split()))

    assert penalized.choices[0].text != plain.choices[0].text
    assert distinct(penalized.choices[0].text) > distinct(plain.choices[0].text)
    # Still deterministic: penalties change the logits, not the choice rule.
    again = api.completions.create(**kwargs, frequency_penalty=2.0, presence_penalty=2.0)
    assert again.choices[0].text == penalized.choices[0].text


def test_generate_extension_as_triton_documents_it(llm_server: RuntimeProcess) -> None:
    # The request body of Triton's generate extension documentation (parameters at the top level and
    # under "parameters"), and its streaming variant.
    request = {"text_input": "class Parser:", "parameters": {"max_tokens": 12, "temperature": 0}}
    status, _, body = post(llm_server, f"/v2/models/{MODEL}/generate", request)
    assert status == 200, body
    answer = json.loads(body)
    assert answer["model_name"] == MODEL
    status, headers, streamed = post(
        llm_server, f"/v2/models/{MODEL}/generate_stream", request | {"stream": True}
    )
    assert status == 200
    assert headers["content-type"] == "text/event-stream"
    pieces = [json.loads(event[len("data: ") :]) for event in streamed.decode().split("\n\n") if event]
    assert "".join(piece["text_output"] for piece in pieces) == answer["text_output"]
    whole = client(llm_server).completions.create(
        model=MODEL, prompt="class Parser:", max_tokens=12, temperature=0
    )
    assert answer["text_output"] == whole.choices[0].text
    status, _, metadata = post(llm_server, f"/v2/models/{MODEL}", b"", method="GET")
    assert json.loads(metadata)["platform"] == "onnxruntime_genai"


def _stream_lines(server: RuntimeProcess, body: dict[str, Any]) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection(server.http, timeout=60)
    connection.request("POST", "/v1/completions", json.dumps(body), {"content-type": "application/json"})
    reply = connection.getresponse()
    assert reply.status == 200
    return reply


def test_a_request_arriving_mid_batch_finishes_before_the_batch(llm_server: RuntimeProcess) -> None:
    long_reply = _stream_lines(
        llm_server,
        {"model": MODEL, "prompt": "import", "max_tokens": 450, "ignore_eos": True, "stream": True},
    )
    for _ in range(20):
        assert long_reply.readline().startswith(b"data: ")
        long_reply.readline()
    short = client(llm_server).completions.create(model=MODEL, prompt="x", max_tokens=4, temperature=0)
    short_done = time.monotonic()
    rest = long_reply.read()
    long_done = time.monotonic()
    assert rest.rstrip().endswith(b"data: [DONE]")
    assert short.usage is not None
    assert short.usage.completion_tokens >= 1
    # The short request was admitted between decode steps: it finished while the long one still ran.
    assert short_done < long_done
    assert rest.count(b'"text"') > 50, "the long stream should still have had most of its tokens to go"


def test_streams_complete_while_a_client_disconnects(llm_server: RuntimeProcess) -> None:
    api = client(llm_server)
    expected = (
        api.completions.create(model=MODEL, prompt="def main(", max_tokens=60, temperature=0).choices[0].text
    )
    texts: list[str] = []
    failures: list[BaseException] = []

    def stream() -> None:
        try:
            chunks = api.completions.create(
                model=MODEL, prompt="def main(", max_tokens=60, temperature=0, stream=True
            )
            texts.append("".join(choice.text for chunk in chunks for choice in chunk.choices))
        except BaseException as error:  # reported below
            failures.append(error)

    def hang_up() -> None:
        with socket.create_connection(("127.0.0.1", llm_server.http_port)) as sock:
            body = json.dumps(
                {"model": MODEL, "prompt": "a", "max_tokens": 400, "ignore_eos": True, "stream": True}
            )
            head = f"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: {len(body)}\r\n\r\n"
            sock.sendall((head + body).encode())
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")

    threads = [threading.Thread(target=stream) for _ in range(9)] + [threading.Thread(target=hang_up)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures, failures
    assert texts == [expected] * 9
    deadline = time.monotonic() + 10
    while metric(llm_server, "ferry_generation_running_sequences") != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    # The disconnected client's 400 tokens stopped with it.
    assert metric(llm_server, "ferry_generation_running_sequences") == 0


def test_generation_metrics_are_exported(llm_server: RuntimeProcess) -> None:
    client(llm_server).completions.create(model=MODEL, prompt="x", max_tokens=3, temperature=0)
    assert metric(llm_server, "ferry_generation_tokens_total") >= 3
    assert metric(llm_server, "ferry_generation_prompt_tokens_total") >= 1
    assert metric(llm_server, "ferry_generation_time_to_first_token_seconds_count") >= 1
    assert metric(llm_server, "ferry_generation_inter_token_seconds_count") >= 2
    assert metric(llm_server, "ferry_generation_duration_seconds_count") >= 1
    assert metric(llm_server, "ferry_generation_waiting_sequences") == 0
    assert metric(llm_server, "ferry_generation_kv_cache_usage_ratio") >= 0


def test_kubectl_ferry_chat_streams_the_reply(
    llm_server: RuntimeProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    from ferry_operator import plugin

    out = io.StringIO()
    argv = ["chat", MODEL, "--url", llm_server.url(""), "-m", "A parser?", "--max-tokens", "20"]
    assert plugin.main([*argv, "--temperature", "0"], out=out) == 0
    whole = client(llm_server).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "A parser?"}], max_tokens=20, temperature=0
    )
    assert out.getvalue() == (whole.choices[0].message.content or "") + "\n"
    assert whole.usage is not None
    assert f"{whole.usage.completion_tokens} generated" in capsys.readouterr().err
    assert plugin.main(["chat", "other", "--url", llm_server.url(""), "-m", "x"], out=io.StringIO()) == 1
    assert "the model 'other' does not exist" in capsys.readouterr().err
