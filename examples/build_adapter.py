"""Train a tiny LoRA adapter with PEFT, the way a real one is made, only small enough for a laptop.

Saves a randomly initialised 2-layer Llama as the base model and a LoRA adapter (r=8 on the
attention projections) trained for a few steps to continue a repeating token pattern.
Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("examples/out"), help="where to write")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    torch.manual_seed(0)
    base_dir, adapter_dir = (args.out / "base-model").resolve(), (args.out / "tiny-lora").resolve()
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    LlamaForCausalLM(config).save_pretrained(base_dir)
    base = LlamaForCausalLM.from_pretrained(base_dir)  # so the adapter records where its base is

    lora = LoraConfig(
        r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], use_rslora=True
    )
    model = get_peft_model(base, lora)
    pattern = torch.arange(0, 128, 7) % 128
    batch = pattern.repeat(4, 3)[:, :48]  # 4 sequences of a repeating pattern
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    model.train()
    for step in range(args.steps):
        loss = model(batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step in (0, args.steps - 1):
            print(f"step {step + 1:>3}/{args.steps}: loss {loss.item():.3f}")
    model.save_pretrained(adapter_dir)
    trainable, total = model.get_nb_trainable_parameters()
    print(f"saved a LoRA adapter ({trainable} trainable of {total} parameters) to {adapter_dir}")


if __name__ == "__main__":
    main()
