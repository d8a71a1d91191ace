"""What an onnxruntime-genai model folder says about its decoder (genai_config.json and the tokenizer)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ferry_runtime.errors import ModelLoadError

GENAI_CONFIG = "genai_config.json"


def is_generative_model_dir(directory: Path) -> bool:
    """True when the folder is an onnxruntime-genai model (served by the generative path)."""
    return (directory / GENAI_CONFIG).is_file()


@dataclass(frozen=True, slots=True)
class DecoderConfig:
    # The decoder's ONNX file, inside the model folder.
    model_file: Path
    # Model family as the builder names it ("llama", "qwen2", "phi3", ...), shown in metadata.
    model_type: str
    layers: int
    kv_heads: int
    head_size: int
    vocab_size: int
    # The longest sequence (prompt + generated tokens) the model was built for.
    context_length: int
    # Token ids that end a generation (genai_config's eos_token_id, and generation_config.json's).
    eos_token_ids: frozenset[int]
    input_ids_name: str
    attention_mask_name: str
    logits_name: str
    # Per-layer names; `%d` in the config is replaced by the layer index.
    past_key_names: tuple[str, ...]
    past_value_names: tuple[str, ...]
    present_key_names: tuple[str, ...]
    present_value_names: tuple[str, ...]


def _ids(value: Any) -> set[int]:
    if isinstance(value, int):
        return {value}
    if isinstance(value, list):
        return {item for item in value if isinstance(item, int)}
    return set()


def load_decoder_config(directory: Path) -> DecoderConfig:
    path = directory / GENAI_CONFIG
    try:
        document = json.loads(path.read_text())
        model = document["model"]
        decoder = model["decoder"]
        inputs, outputs = decoder["inputs"], decoder["outputs"]
        layers = int(decoder["num_hidden_layers"])
        eos = _ids(model.get("eos_token_id"))
        generation = directory / "generation_config.json"
        if generation.is_file():
            eos |= _ids(json.loads(generation.read_text()).get("eos_token_id"))
        config = DecoderConfig(
            model_file=directory / decoder["filename"],
            model_type=str(model.get("type", "unknown")),
            layers=layers,
            kv_heads=int(decoder["num_key_value_heads"]),
            head_size=int(decoder["head_size"]),
            vocab_size=int(model["vocab_size"]),
            context_length=int(model["context_length"]),
            eos_token_ids=frozenset(eos),
            input_ids_name=inputs.get("input_ids", "input_ids"),
            attention_mask_name=inputs.get("attention_mask", "attention_mask"),
            logits_name=outputs.get("logits", "logits"),
            past_key_names=tuple(inputs["past_key_names"] % i for i in range(layers)),
            past_value_names=tuple(inputs["past_value_names"] % i for i in range(layers)),
            present_key_names=tuple(outputs["present_key_names"] % i for i in range(layers)),
            present_value_names=tuple(outputs["present_value_names"] % i for i in range(layers)),
        )
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelLoadError(f"{path} is not a usable onnxruntime-genai config: {error!r}") from error
    if not config.model_file.is_file():
        raise ModelLoadError(
            f"{path} names decoder file {config.model_file.name}, which is not in {directory}"
        )
    if not config.eos_token_ids:
        raise ModelLoadError(f"{path} names no eos_token_id: generation could never stop on its own")
    return config
