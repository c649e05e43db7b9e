"""Train the benchmark's LoRA adapter: MiniLM-L6 + PEFT LoRA r=8 on the 20-class docs topic task.

LoRA (r=8, alpha=16, dropout 0.1) on every linear layer of the encoder: query, key, value, attention
output dense, intermediate dense, output dense and the pooler dense (37 modules); the classifier head
is trained in full and saved through `modules_to_save`. Seeded, on CPU.

Writes (under bench/out):
  minilm-base/   the pretrained MiniLM-L6 encoder saved as a 20-label BertForSequenceClassification
                 (config, weights without the head, tokenizer): what `load_base_model` reads;
  minilm-lora/   the trained PEFT adapter (fp32 LoRA factors + the classifier head);
  train.json     hyper-parameters, train time, validation/test accuracy, and the check that
                 `load_base_model(minilm-base)` + `with_adapter(minilm-lora)` gives the trained model's
                 logits.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
from common import (
    ADAPTER,
    BASE,
    DATA,
    MAX_LENGTH,
    OUT,
    Timer,
    logits,
    machine,
    minilm_dir,
    quiet_transformers,
    write_json,
)
from data import load_split

TARGETS = ["query", "key", "value", "dense"]  # "dense": attention output, intermediate, output, pooler


def save_base(path: Path, labels: list[str]) -> None:
    """The encoder as a 20-label sequence classifier, without head weights (the adapter carries them)."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    src = minilm_dir()
    model = AutoModelForSequenceClassification.from_pretrained(
        src,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(src).save_pretrained(path)
    weights = path / "model.safetensors"
    tensors = {k: v for k, v in load_file(weights).items() if not k.startswith("classifier.")}
    save_file(tensors, weights, metadata={"format": "pt"})


def batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of similar length (less padding): sort within windows of 8 batches."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = 8 * batch_size
    out = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        out.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(out)
    return out


def accuracy(model, tokenizer, texts: list[str], labels: list[int]) -> float:
    pred = logits(model, tokenizer, texts).argmax(-1)
    return float((pred == torch.tensor(labels)).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--base-out", type=Path, default=BASE)
    parser.add_argument("--adapter-out", type=Path, default=ADAPTER)
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    args = parser.parse_args()

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from adapters.compress.calibration import load_base_model, with_adapter
    from adapters.compress.peft_io import read_adapter

    quiet_transformers()
    if args.threads:
        torch.set_num_threads(args.threads)
    manifest = json.loads((args.data / "manifest.json").read_text())
    labels = manifest["labels"]
    train_x, train_y = load_split("train", args.data)
    val_x, val_y = load_split("validation", args.data)
    test_x, test_y = load_split("test", args.data)

    save_base(args.base_out, labels)
    tokenizer = AutoTokenizer.from_pretrained(args.base_out)
    torch.manual_seed(args.seed)  # the head's initial values and dropout
    model = AutoModelForSequenceClassification.from_pretrained(args.base_out)
    lora = LoraConfig(
        r=args.rank,
        lora_alpha=args.alpha,
        lora_dropout=0.1,
        target_modules=TARGETS,
        modules_to_save=["classifier"],
        task_type="SEQ_CLS",
    )
    model = get_peft_model(model, lora)
    n_modules = sum(
        1 for _, m in model.named_modules() if type(m).__name__ == "Linear" and hasattr(m, "lora_A")
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    lengths = [len(t) for t in tokenizer(train_x, truncation=True, max_length=MAX_LENGTH)["input_ids"]]
    rng = random.Random(args.seed)
    per_epoch = math.ceil(len(train_x) / args.batch_size)
    total = math.ceil(args.epochs * per_epoch)
    warmup = max(1, total // 16)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / (total - warmup)))
    )
    print(f"{n_modules} LoRA modules, {sum(p.numel() for p in params)} trainable parameters, {total} steps")

    history = []
    step, plan = 0, []
    started = time.perf_counter()
    model.train()
    while step < total:
        if not plan:
            plan = batches(lengths, args.batch_size, rng)
        idx = plan.pop()
        batch = tokenizer(
            [train_x[i] for i in idx],
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=MAX_LENGTH,
        )
        loss = model(**batch, labels=torch.tensor([train_y[i] for i in idx])).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        history.append(float(loss.detach()))
        if step % 25 == 0 or step == total:
            recent = sum(history[-25:]) / len(history[-25:])
            print(f"step {step}/{total} loss {recent:.3f} ({time.perf_counter() - started:.0f}s)", flush=True)
    train_seconds = time.perf_counter() - started
    model.eval()

    with Timer() as t_eval:
        val_acc = accuracy(model, tokenizer, val_x, val_y)
        test_logits = logits(model, tokenizer, test_x)
    test_acc = float((test_logits.argmax(-1) == torch.tensor(test_y)).float().mean())
    model.save_pretrained(args.adapter_out)
    config_path = args.adapter_out / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = str(args.base_out)
    config_path.write_text(json.dumps(config, indent=2) + "\n")

    # The saved base + adapter must be the trained model, exactly.
    checkpoint = read_adapter(args.adapter_out)
    base, base_tokenizer = load_base_model(args.base_out)
    reloaded = with_adapter(base, args.adapter_out)
    diff = float((logits(reloaded, base_tokenizer, test_x[:256]) - test_logits[:256]).abs().max())
    lora_bytes = sum(checkpoint.tensors[k].numel() * 4 for p in checkpoint.pairs for k in (p.a_key, p.b_key))
    result = {
        "machine": machine(),
        "hyperparameters": vars(args) | {"data": str(args.data), "base_out": str(args.base_out)},
        "lora_modules": len(checkpoint.pairs),
        "lora_bytes": lora_bytes,
        "head_bytes": checkpoint.nbytes() - lora_bytes,
        "steps": total,
        "train_seconds": round(train_seconds, 1),
        "final_loss": round(sum(history[-25:]) / len(history[-25:]), 4),
        "validation_accuracy": round(val_acc, 4),
        "test_accuracy": round(test_acc, 4),
        "eval_seconds": round(t_eval.seconds, 1),
        "reload_max_abs_logit_diff": diff,
    }
    for k, v in {**result, "hyperparameters": None}.items():
        if v is not None:
            print(f"{k}: {v}")
    write_json(OUT / "train.json", result)
    if diff > 1e-4:
        raise SystemExit(f"reloaded base + adapter differs from the trained model (max |logit diff| {diff})")


if __name__ == "__main__":
    main()
