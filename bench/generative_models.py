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
from typing import Any

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


def make_hf_llama(
    directory: Path, shape: LlamaShape = TINY, seed: int = 0, texts: list[str] | None = None
) -> Path:
    """Write a Hugging Face Llama folder (config, safetensors, tokenizer, chat template) and return it;
    the tokenizer is trained on `texts` (default: `corpus()`), the weights are random."""
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
    bpe.train_from_iterator(corpus() if texts is None else texts, trainer=trainer)
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


# --- transformers as a reference, in a process of its own ---
# torch (through transformers and triton) aborts when it is imported into a process that has already
# loaded TensorFlow, as the test session has (seen in CI: "Fatal Python error: Aborted" importing triton).
# So tests make the model and ask transformers for its answers through this module's command line.


def reference(command: str, hf_directory: Path, payload: object = None) -> Any:
    """Run one command of this module's command line in a fresh Python and return its JSON answer."""
    result = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), command, str(hf_directory)],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"generative_models.py {command} failed: {result.stderr[-3000:]}")
    return json.loads(result.stdout)


def _greedy(hf_directory: Path, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """transformers' greedy `generate` for each {"prompt": text or token ids, "max_new_tokens": n}."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hf_directory)
    model = AutoModelForCausalLM.from_pretrained(hf_directory, dtype=torch.float32).eval()
    answers = []
    for request in requests:
        prompt = request["prompt"]
        ids = tokenizer(prompt)["input_ids"] if isinstance(prompt, str) else prompt
        with torch.no_grad():
            output = model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=request["max_new_tokens"],
                do_sample=False,
            )
        generated = [int(token) for token in output[0, len(ids) :]]
        text = tokenizer.decode(generated, skip_special_tokens=True)
        answers.append({"prompt_ids": list(ids), "generated": generated, "text": text})
    return answers


def _perplexity(hf_directory: Path, request: dict[str, Any]) -> dict[str, float]:
    """transformers' perplexity of {"records": [text, ...], "window": n}, by the rule ferry-optimize
    documents: each record tokenized on its own, cut into windows of n tokens, each scored alone."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hf_directory)
    model = AutoModelForCausalLM.from_pretrained(hf_directory, dtype=torch.float32).eval()
    window = request["window"]
    total, count = 0.0, 0
    for record in request["records"]:
        ids = tokenizer(record)["input_ids"]
        for start in range(0, len(ids), window):
            chunk = ids[start : start + window]
            if len(chunk) < 2:
                continue
            with torch.no_grad():
                logits = model(torch.tensor([chunk])).logits[0].double()
            log_probabilities = torch.log_softmax(logits[:-1], dim=-1)
            targets = torch.tensor(chunk[1:])
            total -= float(log_probabilities[torch.arange(len(targets)), targets].sum())
            count += len(targets)
    return {"perplexity": float(torch.exp(torch.tensor(total / count))), "tokens": count}


def _chat_template(hf_directory: Path, messages: list[dict[str, str]]) -> list[int]:
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(hf_directory).apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True
    )
    if not isinstance(ids, list):  # transformers 5 returns a BatchEncoding
        ids = ids["input_ids"]
    return [int(token) for token in ids]


def _main() -> int:
    command, directory = sys.argv[1], Path(sys.argv[2])
    payload = json.loads(sys.stdin.read() or "null")
    if command == "make":
        shape = BENCH if (payload or {}).get("shape") == "bench" else TINY
        make_hf_llama(directory, shape, (payload or {}).get("seed", 0))
        answer: Any = str(directory)
    elif command == "greedy":
        answer = _greedy(directory, payload)
    elif command == "chat-template":
        answer = _chat_template(directory, payload)
    elif command == "perplexity":
        answer = _perplexity(directory, payload)
    else:
        raise SystemExit(f"unknown command {command!r}; commands: make, greedy, chat-template, perplexity")
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
