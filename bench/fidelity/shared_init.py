"""Do adapters trained from the same PEFT init seed share enough of lora_A to code it as (init + drift)?

Three LoRA adapters (r=8 on every projection) of one tiny random Llama, all created after
torch.manual_seed(SEED) (so PEFT gives them the same initial lora_A), trained on different data for
different numbers of steps. For each: how far A drifted from the init (||A - A0|| / ||A||), and the
bytes of A quantized with one uniform step, coded directly or as the drift from the regenerated init
(the init costs nothing: a reader regenerates it from the seed). Equal step, equal error in A; the
bytes are the empirical entropy of the integers (what an ideal entropy coder with a per-tensor model
spends). A measurement only: nothing of it is in the codec.

    .venv/bin/python bench/fidelity/shared_init.py
"""

from __future__ import annotations

import argparse
import json
import math

import torch

SEED = 1234
PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def base_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=256,
        hidden_size=128,
        intermediate_size=344,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).eval()


def lora_model():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(SEED)  # the shared init seed
    return get_peft_model(base_model(), LoraConfig(r=8, lora_alpha=16, target_modules=PROJ))


def lora_a(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n}


def train(model, data_seed: int, steps: int, lr: float) -> None:
    """Next-token training on a data set of its own: sequences from a seeded random bigram chain."""
    gen = torch.Generator().manual_seed(data_seed)
    table = torch.randint(0, 256, (256, 4), generator=gen)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        start = torch.randint(0, 256, (16,), generator=gen)
        seq = [start]
        for _ in range(31):
            pick = torch.randint(0, 4, (16,), generator=gen)
            seq.append(table[seq[-1], pick])
        ids = torch.stack(seq, 1)
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def entropy_bits(ints: torch.Tensor) -> float:
    _, counts = torch.unique(ints, return_counts=True)
    p = counts.double() / ints.numel()
    return float(-(counts.double() * p.log2()).sum())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--steps", type=int, nargs=3, default=[50, 150, 400])
    parser.add_argument("--rel-step", type=float, default=0.05, help="quantizer step / std of A")
    args = parser.parse_args()
    init = lora_a(lora_model())
    results = []
    for k, steps in enumerate(args.steps):
        model = lora_model()
        assert all(torch.equal(v, init[n]) for n, v in lora_a(model).items())  # same init
        train(model, data_seed=100 + k, steps=steps, lr=args.lr)
        a = lora_a(model)
        drift = math.sqrt(sum(float((a[n] - init[n]).pow(2).sum()) for n in a))
        norm = math.sqrt(sum(float(a[n].pow(2).sum()) for n in a))
        direct = as_drift = 0.0
        for n in a:
            step = args.rel_step * float(a[n].std())
            direct += entropy_bits(torch.round(a[n] / step))
            as_drift += entropy_bits(torch.round((a[n] - init[n]) / step))
        results.append(
            {
                "steps": steps,
                "relative_drift": round(drift / norm, 4),
                "a_bytes_direct": round(direct / 8),
                "a_bytes_as_drift": round(as_drift / 8),
                "saving": round(1 - as_drift / direct, 3),
            }
        )
    print(json.dumps({"lr": args.lr, "rel_step": args.rel_step, "adapters": results}, indent=2))


if __name__ == "__main__":
    main()
