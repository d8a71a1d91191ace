"""Text to tokens and back with the model folder's own tokenizer.json, and its chat template.

The tokenizer is Hugging Face `tokenizers` (Rust, no torch or transformers). The chat template is the
Jinja template the model ships (`chat_template` in tokenizer_config.json, or chat_template.jinja as
transformers 5 writes it), rendered the way transformers' `apply_chat_template` renders it: a sandboxed
environment, `trim_blocks`/`lstrip_blocks`, `raise_exception`, and the tokenizer's special tokens as
variables. A template is code from the model's author, so it runs sandboxed and its failures are the
client's (a message the template refuses) or the model's (a broken template), never the server's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import jinja2.sandbox
from tokenizers import Tokenizer, decoders

from ferry_runtime.errors import InvalidInput, ModelLoadError


class _TemplateRefused(Exception):
    """`raise_exception(...)` called by the chat template: the messages break the model's rules."""


def _raise_exception(message: str) -> None:
    raise _TemplateRefused(message)


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str
    content: str


def _special(config: dict[str, Any], key: str) -> str | None:
    value = config.get(key)
    if isinstance(value, dict):  # older tokenizer_config.json files store AddedToken dicts
        value = value.get("content")
    return value if isinstance(value, str) else None


class TextTokenizer:
    def __init__(self, directory: Path) -> None:
        path = directory / "tokenizer.json"
        try:
            self._tokenizer = Tokenizer.from_file(str(path))
        except Exception as error:  # the Rust side raises plain Exceptions
            raise ModelLoadError(f"cannot load the tokenizer {path}: {error}") from error
        config_path = directory / "tokenizer_config.json"
        config: dict[str, Any] = json.loads(config_path.read_text()) if config_path.is_file() else {}
        self.bos_token = _special(config, "bos_token")
        self.eos_token = _special(config, "eos_token")
        self._template = self._load_template(directory, config)
        # No token covers more characters than its longest vocabulary entry (byte-level and SentencePiece
        # entries spell at least one character per text character), so a text longer than
        # `max_tokens * max_token_chars` cannot fit the context: refused before the tokenizer spends CPU
        # on it (a 64 MiB prompt would hold the event loop for seconds). Set by the model to its context.
        self.max_token_chars = max(len(piece) for piece in self._tokenizer.get_vocab(with_added_tokens=True))
        self.max_tokens: int | None = None

    @staticmethod
    def _load_template(directory: Path, config: dict[str, Any]) -> jinja2.Template | None:
        source = config.get("chat_template")
        if isinstance(source, list):  # named templates: the default one serves chat
            source = next((t.get("template") for t in source if t.get("name") == "default"), None)
        jinja_file = directory / "chat_template.jinja"
        if not isinstance(source, str) and jinja_file.is_file():
            source = jinja_file.read_text()
        if not isinstance(source, str):
            return None
        environment = jinja2.sandbox.ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        environment.globals["raise_exception"] = _raise_exception
        try:
            return environment.from_string(source)
        except jinja2.TemplateError as error:
            raise ModelLoadError(f"the model's chat template does not compile: {error}") from error

    def encode(self, text: str, add_special_tokens: bool = True, field: str = "prompt") -> list[int]:
        limit = self.max_tokens
        if limit is not None and len(text) > limit * self.max_token_chars:
            raise InvalidInput(
                f"{field}: {len(text)} characters cannot fit this model's {limit}-token context "
                f"(no token spans more than {self.max_token_chars} characters)",
                field,
            )
        return list(self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids)

    def render_chat(self, messages: Sequence[ChatMessage]) -> str:
        """The prompt text for a conversation, ending where the assistant's reply begins."""
        if self._template is None:
            raise InvalidInput(
                "messages: this model has no chat template; use /v1/completions with a prompt", "messages"
            )
        try:
            return self._template.render(
                messages=[{"role": m.role, "content": m.content} for m in messages],
                add_generation_prompt=True,
                bos_token=self.bos_token or "",
                eos_token=self.eos_token or "",
            )
        except _TemplateRefused as refusal:
            raise InvalidInput(
                f"messages: the model's chat template refused them: {refusal}", "messages"
            ) from None
        except (jinja2.TemplateError, TypeError, ValueError) as error:
            raise InvalidInput(
                f"messages: the model's chat template cannot render them: {error}", "messages"
            ) from None

    def encode_chat(self, messages: Sequence[ChatMessage]) -> list[int]:
        # As transformers' apply_chat_template(tokenize=True): the template places the special tokens.
        return self.encode(self.render_chat(messages), add_special_tokens=False, field="messages")

    def stream(self) -> TokenTextStream:
        return TokenTextStream(self._tokenizer)


class TokenTextStream:
    """Incremental detokenization: the text each new token adds, with multi-byte characters kept whole."""

    __slots__ = ("_decoder", "_tokenizer")

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._decoder = decoders.DecodeStream(skip_special_tokens=True)

    def step(self, token_id: int) -> str:
        piece = self._decoder.step(self._tokenizer, token_id)
        return piece or ""
