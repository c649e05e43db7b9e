"""Small causal-LM cases for the fidelity benchmarks, built offline in a minute or two on one core.

text-lm     a 4-layer Llama (hidden 128, byte-level vocabulary) pretrained on the documentation prose
            of ten of the task's classes, then a PEFT LoRA (r=8 on every linear module of the blocks)
            trained on the prose of the other ten: a pretrained base and a domain-shift adapter,
            scored on next-byte predictions over held-out prose of the adapter's domain.
quickstart  the README's example (examples/build_adapter.py): a randomly initialised 2-layer Llama and
            a LoRA trained to continue a token pattern; its base has near-uniform logits, so small
            changes to the adapter move the top token: the hardest case for a data-free gate.

  .venv/bin/python bench/fidelity/tiny_lm.py    # writes bench/out/lm/{text-lm,quickstart}/
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import DATA, OUT, quiet_transformers

LM = OUT / "lm"
SEQ = 128


def byte_batches(texts: list[str], seq: int = SEQ) -> torch.Tensor:
    """The texts as one byte stream cut into rows of `seq` tokens (vocabulary 256)."""
    stream = "\n".join(texts).encode("utf-8", "replace")
    usable = len(stream) // seq * seq
    return torch.tensor(list(stream[:usable]), dtype=torch.long).view(-1, seq)


def domain_texts(split: str, labels: range) -> list[str]:
    rows = [json.loads(line) for line in (DATA / f"{split}.jsonl").read_text().splitlines()]
    return [r["text"] for r in rows if r["label"] in labels]


def _train(model, rows: torch.Tensor, steps: int, lr: float, params, seed: int) -> float:
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(params, lr=lr)
    model.train()
    loss = torch.tensor(0.0)
    for _ in range(steps):
        batch = rows[torch.randint(len(rows), (16,), generator=generator)]
        loss = model(batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return float(loss)


def build_text_lm(out: Path, pretrain_steps: int, adapter_steps: int) -> dict:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=256,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=SEQ,
    )
    started = time.perf_counter()
    base = LlamaForCausalLM(config)
    pre = _train(
        base, byte_batches(domain_texts("train", range(10))), pretrain_steps, 3e-3, base.parameters(), 0
    )
    base.save_pretrained(out / "base-model")
    base = LlamaForCausalLM.from_pretrained(out / "base-model")
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=targets))
    trainable = [p for p in model.parameters() if p.requires_grad]
    fine = _train(
        model, byte_batches(domain_texts("train", range(10, 20))), adapter_steps, 2e-3, trainable, 1
    )
    model.save_pretrained(out / "adapter")
    return {"pretrain_loss": pre, "adapter_loss": fine, "seconds": round(time.perf_counter() - started, 1)}


def eval_tokens(case: str, count: int = 2048) -> torch.Tensor:
    """Held-out inputs whose every position is one next-token prediction."""
    if case == "text-lm":
        rows = byte_batches(domain_texts("test", range(10, 20)))
        return rows[: max(1, count // SEQ)]
    generator = torch.Generator().manual_seed(1)
    return torch.randint(0, 128, (count // 32, 32), generator=generator)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pretrain-steps", type=int, default=600)
    parser.add_argument("--adapter-steps", type=int, default=300)
    args = parser.parse_args()
    quiet_transformers()
    out = LM / "text-lm"
    print("text-lm:", build_text_lm(out, args.pretrain_steps, args.adapter_steps))
    example = Path(__file__).resolve().parents[2] / "examples" / "build_adapter.py"
    subprocess.run([sys.executable, str(example), "--out", str(LM / "quickstart")], check=True)


if __name__ == "__main__":
    main()
