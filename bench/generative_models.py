"""Small Llama-architecture models made on this machine, for tests and benchmarks (nothing from a hub).

`make_hf_llama` writes a Hugging Face folder: a BPE tokenizer trained here on the ASCII text of a few
standard library modules (fixed for a given Python; ASCII only, so every token decodes to whole
characters and streamed text can be compared with a one-shot decode), a chat template, and a
`LlamaForCausalLM` initialised from a config with a fixed seed. `build_genai_model` turns such a folder
into an onnxruntime-genai model folder with onnxruntime-genai's own model builder.

Random weights make a model whose greedy output is deterministic but meaningless, which is all serving
tests need: they compare Ferry's tokens with transformers' own `generate` on the same weights.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

# ChatML, the template family Qwen and many fine-tunes ship: one place to test role handling.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


@dataclass(frozen=True)
class LlamaShape:
    """The architecture knobs; `TINY` keeps tests fast, `BENCH` is the ~125M-parameter benchmark model."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    layers: int
    heads: int
    kv_heads: int
    max_positions: int


TINY = LlamaShape(
    vocab_size=512, hidden_size=64, intermediate_size=128, layers=2, heads=4, kv_heads=2, max_positions=512
)
BENCH = LlamaShape(
    vocab_size=8192,
    hidden_size=768,
    intermediate_size=3072,
    layers=12,
    heads=12,
    kv_heads=4,
    max_positions=2048,
)


def corpus() -> list[str]:
    """Training text for the tokenizer: the source of a few stdlib modules, stable for one Python."""
    import argparse
    import difflib
    import email.message
    import textwrap as wrap_module

    sources = [inspect.getsource(module) for module in (argparse, difflib, email.message, wrap_module)]
    return [source.encode("ascii", "ignore").decode() for source in sources]


def make_hf_llama(directory: Path, shape: LlamaShape = TINY, seed: int = 0) -> Path:
    """Write a Hugging Face Llama folder (config, safetensors, tokenizer, chat template) and return it."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=shape.vocab_size,
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
    )
    bpe.train_from_iterator(corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(directory)
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=shape.max_positions,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(directory, safe_serialization=True)
    # Chat turns end with <|im_end|>: both ends stop a generation, in transformers as in Ferry.
    model.generation_config.eos_token_id = [eos, tokenizer.convert_tokens_to_ids("<|im_end|>")]
    model.generation_config.save_pretrained(directory)
    return directory


def build_genai_model(hf_directory: Path, output: Path, precision: str = "fp32") -> Path:
    """onnxruntime-genai's model builder on a Hugging Face folder: an onnxruntime-genai model folder."""
    cache = output.parent / f"{output.name}.builder-cache"
    # The command line is the builder's stable interface (its Python entry point needs parsed options).
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_directory)]
    command += ["-o", str(output), "-p", precision, "-e", "cpu", "-c", str(cache)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"the model builder failed: {result.stderr[-2000:]}")
    config = json.loads((output / "genai_config.json").read_text())
    if "model" not in config:
        raise RuntimeError(textwrap.shorten(f"the builder wrote no usable genai_config.json: {config}", 300))
    return output
