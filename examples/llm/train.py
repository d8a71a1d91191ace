"""Train the demo's text-generation model: a small Llama on the Debian `fortunes` package, on this machine.

    python examples/llm/train.py OUT_DIR [--steps N]

Nothing comes from a model hub. The text is the fortune cookies Debian ships
(/usr/share/games/fortunes, installed by scripts/install-system-deps.sh); a byte-level BPE tokenizer is
trained on it, then a ~2.4M-parameter LlamaForCausalLM for a few minutes on two cores, enough that a
completion reads as (odd) English rather than noise. OUT_DIR gets:
- `hf/`: the Hugging Face folder (config.json, model.safetensors, tokenizer, ChatML chat template);
- `heldout.txt`: fortunes kept out of training (perplexity data for an optimizer's quality gate);
- `train.json`: the loss curve and the time it took.
Deterministic for a given corpus and seed (torch runs single-process; thread count changes only speed).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.generative_models import LlamaShape, make_hf_llama  # noqa: E402

FORTUNES = Path("/usr/share/games/fortunes")
SHAPE = LlamaShape(
    vocab_size=2048, hidden_size=192, intermediate_size=512, layers=4, heads=6, kv_heads=3, max_positions=512
)
SEQUENCE = 128
BATCH = 16
HELD_OUT = 0.05


def fortunes() -> list[str]:
    """Every fortune of the package's plain-text files (the .dat indexes and .u8 links skipped), ASCII."""
    if not FORTUNES.is_dir():
        sys.exit(f"train.py: {FORTUNES} is missing: install Debian's fortunes (install-system-deps.sh)")
    texts = []
    for path in sorted(FORTUNES.iterdir()):
        if path.suffix or path.is_symlink() or not path.is_file():
            continue
        for fortune in path.read_text(encoding="latin-1").split("\n%\n"):
            text = fortune.encode("ascii", "ignore").decode().strip()
            if 20 <= len(text) <= 1000:
                texts.append(text)
    return texts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    torch.manual_seed(args.seed)
    texts = fortunes()
    random.Random(args.seed).shuffle(texts)
    held_out = texts[: int(len(texts) * HELD_OUT)]
    training = texts[len(held_out) :]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "heldout.txt").write_text("\n\n".join(held_out) + "\n")

    hf = make_hf_llama(args.out / "hf", SHAPE, seed=args.seed, texts=training)
    tokenizer = AutoTokenizer.from_pretrained(hf)
    eos = tokenizer.eos_token_id
    # One stream of fortunes, each ended by the end-of-text token (so the model learns to stop).
    stream = [token for text in training for token in (*tokenizer.encode(text), eos)]
    data = torch.tensor(stream, dtype=torch.long)
    windows = (len(data) - 1) // SEQUENCE

    model = LlamaForCausalLM.from_pretrained(hf, torch_dtype=torch.float32)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1, betas=(0.9, 0.95))
    warmup = max(1, args.steps // 20)

    def learning_rate(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, args.steps - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, learning_rate)
    generator = torch.Generator().manual_seed(args.seed)
    losses = []
    started = time.monotonic()
    for step in range(args.steps):
        starts = torch.randint(0, windows, (BATCH,), generator=generator) * SEQUENCE
        batch = torch.stack([data[start : start + SEQUENCE] for start in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(round(loss.item(), 4))
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss:.3f}  {time.monotonic() - started:.0f}s", flush=True)
    model.eval()
    model.save_pretrained(hf, safe_serialization=True)
    (args.out / "train.json").write_text(
        json.dumps(
            {
                "steps": args.steps,
                "tokens": len(stream),
                "parameters": sum(p.numel() for p in model.parameters()),
                "seconds": round(time.monotonic() - started, 1),
                "loss": losses,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
