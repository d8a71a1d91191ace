"""The OpenAI-compatible text API (completions, chat completions, models) and the v2 generate extension.

Parsing turns a JSON body into a `GenerationRequest` or raises InvalidInput naming the parameter, what was
expected and what was sent; rendering builds the response documents and stream chunks. Nothing here
touches sockets (protocol/rest/generate.py does) or the model (generative/model.py does).

Decisions where OpenAI's reference leaves room (docs/generative.md has the table):
* unknown parameters are refused (400), so a typo such as `max_token` is not silently ignored;
  parameters Ferry does not implement are accepted only at their default value (`n: 1`, `logprobs: null`);
* `max_tokens` defaults to 16 for completions (as OpenAI's) and to the rest of the context for chat;
* `top_k` and `ignore_eos` (not in OpenAI's API) are accepted as vLLM and llama.cpp's server accept them;
  a `top_k` of 0 or -1 disables it;
* `developer` messages are `system` messages to the chat template (as OpenAI maps them for older models).
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ferry_runtime.errors import FerryError, InvalidInput, NotFound
from ferry_runtime.generative.model import GenerationRequest, GenerationResult
from ferry_runtime.generative.sampling import SamplingParams
from ferry_runtime.generative.tokenizer import ChatMessage, TextTokenizer

MAX_STOP_STRINGS = 16
MAX_STOP_LENGTH = 256
_CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# Parameters accepted only at the value that means "not used": (allowed values).
_DEFAULT_ONLY: dict[str, tuple[Any, ...]] = {
    "n": (1, None),
    "best_of": (1, None),
    "echo": (False, None),
    "logprobs": (None, False, 0),
    "top_logprobs": (None, 0),
    "suffix": (None, ""),
    "logit_bias": (None,),
    "tools": (None,),
    "tool_choice": (None, "none"),
    "functions": (None,),
    "function_call": (None, "none"),
}
_SAMPLING = frozenset(
    {
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "seed",
        "stop",
        "ignore_eos",
        "presence_penalty",
        "frequency_penalty",
    }
)
_COMMON = frozenset({"model", "stream", "stream_options", "user", "metadata", "store", "service_tier"})
_COMPLETION_FIELDS = _COMMON | _SAMPLING | {"prompt"} | _DEFAULT_ONLY.keys()
_CHAT_FIELDS = (
    _COMMON
    | _SAMPLING
    | {"messages", "max_completion_tokens", "parallel_tool_calls", "response_format"}
    | _DEFAULT_ONLY.keys()
)


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), f"the number {value}" if isinstance(value, int | float) else type(value).__name__
    )


def _number(body: Mapping[str, Any], name: str, low: float, high: float, default: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise InvalidInput(
            f"{name}: expected a number from {low:g} to {high:g}, got {_type_name(value)}", name
        )
    return float(value)


def _integer(body: Mapping[str, Any], name: str, low: int, high: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (high is not None and value > high)
    ):
        bound = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise InvalidInput(f"{name}: expected an integer {bound}, got {_type_name(value)}", name)
    return value


def _boolean(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidInput(f"{name}: expected true or false, got {_type_name(value)}", name)
    return value


def _stops(value: Any, name: str = "stop") -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(stop, str) for stop in stops):
        raise InvalidInput(f"{name}: expected a string or an array of strings, got {_type_name(value)}", name)
    if len(stops) > MAX_STOP_STRINGS:
        raise InvalidInput(f"{name}: at most {MAX_STOP_STRINGS} stop strings, got {len(stops)}", name)
    for stop in stops:
        if not stop or len(stop) > MAX_STOP_LENGTH:
            raise InvalidInput(
                f"{name}: each stop string must have 1 to {MAX_STOP_LENGTH} characters, got {len(stop)}", name
            )
    return tuple(stops)


def _check_fields(body: Mapping[str, Any], allowed: frozenset[str] | set[str], endpoint: str) -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise InvalidInput(
            f"{unknown[0]}: unrecognized request argument for {endpoint}"
            + (f" (also unrecognized: {', '.join(unknown[1:])})" if unknown[1:] else ""),
            unknown[0],
        )
    for name, allowed_values in _DEFAULT_ONLY.items():
        if name in body and body[name] not in allowed_values and body[name] != {}:
            raise InvalidInput(
                f"{name}: Ferry does not implement {name}; send it unset or as {allowed_values[0]!r}", name
            )


def _sampling(body: Mapping[str, Any]) -> SamplingParams:
    top_k = _integer(body, "top_k", -1)
    return SamplingParams(
        temperature=_number(body, "temperature", 0.0, 2.0, 1.0),
        top_p=_number(body, "top_p", 0.0, 1.0, 1.0) or 1.0,
        top_k=0 if top_k is None or top_k < 0 else top_k,
        seed=_integer(body, "seed", -(2**63), 2**64 - 1),
        presence_penalty=_number(body, "presence_penalty", -2.0, 2.0, 0.0),
        frequency_penalty=_number(body, "frequency_penalty", -2.0, 2.0, 0.0),
    )


def _seed_bits(params: SamplingParams) -> SamplingParams:
    # numpy's generator takes non-negative seeds; a negative OpenAI seed maps to its 64-bit pattern.
    if params.seed is not None and params.seed < 0:
        return dataclasses.replace(params, seed=params.seed % 2**64)
    return params


@dataclass(frozen=True, slots=True)
class StreamOptions:
    stream: bool
    include_usage: bool


def _stream_options(body: Mapping[str, Any]) -> StreamOptions:
    stream = _boolean(body, "stream")
    options = body.get("stream_options")
    if options is None:
        return StreamOptions(stream, False)
    if not stream:
        raise InvalidInput("stream_options: only allowed when stream is true", "stream_options")
    if not isinstance(options, dict) or set(options) - {"include_usage", "continuous_usage_stats"}:
        raise InvalidInput(
            f"stream_options: expected an object with include_usage, got {_type_name(options)}"
            + (f" with {sorted(options)}" if isinstance(options, dict) else ""),
            "stream_options",
        )
    return StreamOptions(True, _boolean(options, "include_usage"))


def check_model(body: Mapping[str, Any], served: str) -> None:
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"model: expected the model's name (a string), got {_type_name(name)}", "model")
    require_served(name, served)


def require_served(name: str, served: str) -> None:
    """404 `model_not_found` unless `name` is the served model (from a body or a /v1/models/{id} path)."""
    if name != served:
        raise NotFound(f"model: the model '{name}' does not exist; this server serves '{served}'", "model")


def _json_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidInput(f"the request body must be a JSON object, got {_type_name(body)}")
    return body


def _openai_body(body: Any, fields: frozenset[str], endpoint: str, served: str) -> dict[str, Any]:
    """An OpenAI request body: an object of known parameters that names the served model."""
    document = _json_object(body)
    _check_fields(document, fields, endpoint)
    check_model(document, served)
    return document


@dataclass(frozen=True, slots=True)
class TextRequest:
    generation: GenerationRequest
    options: StreamOptions


def parse_completion(raw_body: Any, served: str, tokenizer: TextTokenizer) -> TextRequest:
    body = _openai_body(raw_body, _COMPLETION_FIELDS, "/v1/completions", served)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # a batch of one prompt
    if isinstance(prompt, str):
        tokens = tokenizer.encode(prompt)
    elif isinstance(prompt, list) and prompt and all(type(t) is int for t in prompt):
        tokens = list(prompt)
    elif isinstance(prompt, list) and len(prompt) > 1:
        raise InvalidInput(f"prompt: Ferry takes one prompt per request, got {len(prompt)}", "prompt")
    else:
        raise InvalidInput(
            f"prompt: expected a string or an array of token ids, got {_type_name(prompt)}", "prompt"
        )
    max_tokens = _integer(body, "max_tokens", 1)
    return TextRequest(
        GenerationRequest(
            prompt_tokens=tokens,
            max_new_tokens=16 if max_tokens is None else max_tokens,
            sampling=_seed_bits(_sampling(body)),
            stop=_stops(body.get("stop")),
            ignore_eos=_boolean(body, "ignore_eos"),
            prompt_field="prompt",
            max_tokens_field="max_tokens",
        ),
        _stream_options(body),
    )


def _message_content(content: Any, index: int) -> str:
    where = f"messages[{index}].content"
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part_index, part in enumerate(content):
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                shown = part.get("type") if isinstance(part, dict) else _type_name(part)
                raise InvalidInput(
                    f"{where}[{part_index}]: only text parts ({{'type': 'text', 'text': ...}}) are "
                    f"supported, got {shown!r}",
                    "messages",
                )
            texts.append(part["text"])
        return "".join(texts)
    raise InvalidInput(
        f"{where}: expected a string or an array of text parts, got {_type_name(content)}", "messages"
    )


def parse_chat(raw_body: Any, served: str, tokenizer: TextTokenizer) -> TextRequest:
    body = _openai_body(raw_body, _CHAT_FIELDS, "/v1/chat/completions", served)
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise InvalidInput(
            f"messages: expected a non-empty array of messages, got {_type_name(raw)}", "messages"
        )
    messages = []
    for index, message in enumerate(raw):
        if not isinstance(message, dict):
            raise InvalidInput(
                f"messages[{index}]: expected an object, got {_type_name(message)}", "messages"
            )
        role = message.get("role")
        if role not in _CHAT_ROLES:
            raise InvalidInput(
                f"messages[{index}].role: expected one of {', '.join(sorted(_CHAT_ROLES))}, got {role!r}",
                "messages",
            )
        messages.append(ChatMessage(_CHAT_ROLES[role], _message_content(message.get("content"), index)))
    response_format = body.get("response_format")
    if response_format is not None and response_format != {"type": "text"}:
        raise InvalidInput("response_format: only {'type': 'text'} is supported", "response_format")
    max_tokens = _integer(body, "max_completion_tokens", 1)
    field = "max_completion_tokens"
    if max_tokens is None:
        max_tokens, field = _integer(body, "max_tokens", 1), "max_tokens"
    return TextRequest(
        GenerationRequest(
            prompt_tokens=tokenizer.encode_chat(messages),
            max_new_tokens=max_tokens,
            sampling=_seed_bits(_sampling(body)),
            stop=_stops(body.get("stop")),
            ignore_eos=_boolean(body, "ignore_eos"),
            prompt_field="messages",
            max_tokens_field=field,
        ),
        _stream_options(body),
    )


# Open Inference Protocol generate extension: parameters at the top level or under "parameters".
_GENERATE_PARAMETERS = _SAMPLING | {"stream", "stop_words", "bad_words", "exclude_input_in_output"}


def parse_generate(raw_body: Any, tokenizer: TextTokenizer) -> GenerationRequest:
    body = _json_object(raw_body)
    text = body.get("text_input")
    if not isinstance(text, str):
        raise InvalidInput(f"text_input: expected a string, got {_type_name(text)}", "text_input")
    nested = body.get("parameters", {})
    if not isinstance(nested, dict):
        raise InvalidInput(f"parameters: expected an object, got {_type_name(nested)}", "parameters")
    parameters = {k: v for k, v in body.items() if k not in ("text_input", "parameters", "id")} | nested
    unknown = sorted(set(parameters) - _GENERATE_PARAMETERS)
    if unknown:
        raise InvalidInput(
            f"{unknown[0]}: unknown generate parameter; known: {', '.join(sorted(_GENERATE_PARAMETERS))}",
            unknown[0],
        )
    if parameters.get("bad_words"):
        raise InvalidInput("bad_words: Ferry does not implement bad_words; send it empty", "bad_words")
    if parameters.get("exclude_input_in_output") is False:
        raise InvalidInput(
            "exclude_input_in_output: Ferry returns only the generated text", "exclude_input_in_output"
        )
    stops = _stops(parameters.get("stop")) + _stops(parameters.get("stop_words") or None, "stop_words")
    max_tokens = _integer(parameters, "max_tokens", 1)
    return GenerationRequest(
        prompt_tokens=tokenizer.encode(text, field="text_input"),
        max_new_tokens=16 if max_tokens is None else max_tokens,
        sampling=_seed_bits(_sampling(parameters)),
        stop=stops,
        ignore_eos=_boolean(parameters, "ignore_eos"),
        prompt_field="text_input",
        max_tokens_field="max_tokens",
    )


# --- rendering ---


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def usage(result: GenerationResult) -> dict[str, int]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


def finish_reason(result: GenerationResult) -> str | None:
    # "cancelled" (server shutting down) ends the text where it is: OpenAI has no such reason.
    reason = result.finish_reason
    return "length" if reason == "cancelled" else reason


@dataclass(frozen=True, slots=True)
class Renderer:
    """Builds one response's documents; `chat` picks the chat or completion shapes."""

    chat: bool
    model: str
    id: str
    created: int

    @classmethod
    def start(cls, chat: bool, model: str) -> Renderer:
        return cls(chat, model, new_id("chatcmpl" if chat else "cmpl"), int(time.time()))

    def _envelope(self, streaming: bool) -> dict[str, Any]:
        if self.chat:
            kind = "chat.completion.chunk" if streaming else "chat.completion"
        else:
            kind = "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def complete(self, result: GenerationResult) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish_reason(result), "logprobs": None}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": result.text}
        else:
            choice["text"] = result.text
        return self._envelope(False) | {"choices": [choice], "usage": usage(result)}

    def chunk(self, text: str, reason: str | None, first: bool, include_usage: bool) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "finish_reason": reason, "logprobs": None}
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant"} if first else {}
            if text or first:
                delta["content"] = text
            choice["delta"] = delta
        else:
            choice["text"] = text
        document = self._envelope(True) | {"choices": [choice]}
        if include_usage:
            document["usage"] = None
        return document

    def usage_chunk(self, result: GenerationResult) -> dict[str, Any]:
        return self._envelope(True) | {"choices": [], "usage": usage(result)}


def models_document(model: str, created: int) -> dict[str, Any]:
    return {"object": "list", "data": [model_document(model, created)]}


def model_document(model: str, created: int) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": created, "owned_by": "ferry"}


_ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error", 413: "invalid_request_error"}


def error_document(error: FerryError) -> dict[str, Any]:
    status = error.http_status
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    code = {
        401: "invalid_api_key",  # what OpenAI's API answers a missing or wrong key with
        403: "permission_denied",
        404: "model_not_found" if error.param == "model" else "not_found",
        503: "overloaded",
    }.get(status)
    return {"error": {"message": error.message, "type": kind, "param": error.param, "code": code}}
