"""Base models and calibration texts: loading them, batching them, and the input statistics of the
activation-aware fit. (Agreement between an adapter and a candidate is `distill.Teacher.agreement`.)

Needs `transformers` and `peft` (the `hf` extra); imported only when these functions run. Models are
read from local directories only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from .errors import CompressError
from .peft_io import LoraCheckpoint, loading_config, write_adapter
from .stats import DEFAULT_MAX_RANK, InputStats, collecting


def read_texts(path: str | Path) -> list[str]:
    """Calibration texts: a .jsonl file (objects with a "text" field) or plain text, one per line."""
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CompressError(f"{path}: cannot read calibration texts ({exc})") from None
    texts: list[str] = []
    if path.suffix == ".jsonl":
        for number, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                raise CompressError(f"{path}:{number}: not valid JSON") from None
            if not isinstance(item, dict) or not isinstance(item.get("text"), str):
                raise CompressError(f'{path}:{number}: expected an object with a "text" string')
            texts.append(item["text"])
    else:
        texts = [line.strip() for line in raw.splitlines() if line.strip()]
    if not texts:
        raise CompressError(f"{path}: no calibration texts found")
    return texts


DEFAULT_CORPUS = "calibration.txt"


def default_texts() -> list[str]:
    """The packaged general-purpose corpus (145 short texts: prose, instructions, dialogue, questions,
    code and numbers), for when the user gives no calibration texts. Texts from the adapter's own
    domain are better; this keeps compression usable without them."""
    from importlib.resources import files

    data = files("adapters.compress").joinpath("data", DEFAULT_CORPUS).read_text(encoding="utf-8")
    return [line.strip() for line in data.splitlines() if line.strip()]


def split_texts(texts: Sequence[str], held_out: float = 0.2, seed: int = 0) -> tuple[list[str], list[str]]:
    """A seeded split into (fit, held-out) texts; both non-empty when there are two or more texts."""
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed)).tolist()
    n_held = min(len(texts) - 1, max(1, round(len(texts) * held_out))) if len(texts) > 1 else 0
    held = sorted(order[:n_held])
    fit = sorted(order[n_held:])
    return [texts[i] for i in fit], [texts[i] for i in held]


def load_base_model(path: str | Path, device: torch.device | str = "cpu"):
    """A local transformers model (with its task head when the config names one) and its tokenizer."""
    import transformers
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    path = Path(path)
    if not (path / "config.json").is_file():
        raise CompressError(f"{path}: not a model directory (no config.json)")
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    arch = " ".join(config.architectures or [])
    if "CausalLM" in arch or "LMHead" in arch:
        loader = AutoModelForCausalLM
    elif "SequenceClassification" in arch:
        loader = AutoModelForSequenceClassification
    else:
        loader = AutoModel
    model = loader.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return model.to(device).eval(), tokenizer


def with_adapter(base, adapter: str | Path | LoraCheckpoint, workdir: str | Path | None = None):
    """The base model with a PEFT adapter applied: a directory (the user's own), or a checkpoint
    (an upload, maybe) written to workdir with a config whose patterns cannot backtrack."""
    import tempfile
    import warnings

    from peft import PeftModel

    if isinstance(adapter, LoraCheckpoint):
        workdir = Path(workdir or tempfile.mkdtemp(prefix="adapters-"))
        safe = LoraCheckpoint(loading_config(adapter), adapter.tensors, adapter.pairs)
        adapter = write_adapter(safe, workdir)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # transformers deprecations PEFT trips
        return PeftModel.from_pretrained(base, str(adapter), is_trainable=False).eval()


def token_batches(
    tokenizer, texts: Sequence[str], batch_size: int = 8, max_length: int = 128, device="cpu"
) -> Iterator[dict[str, torch.Tensor]]:
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(
            list(texts[start : start + batch_size]),
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=max_length,
        )
        yield {k: v.to(device) for k, v in enc.items()}


@torch.no_grad()
def collect_stats(
    model, tokenizer, texts: Sequence[str], modules: Sequence[str], max_rank: int = DEFAULT_MAX_RANK, **kw
) -> dict[str, InputStats]:
    """Input second moments of `modules` over the texts (padding left out)."""
    device = next(model.parameters()).device
    with collecting(model, modules) as collector:
        for batch in token_batches(tokenizer, texts, device=device, **kw):
            collector.token_mask = batch["attention_mask"].bool()
            model(**batch)
    return collector.result(max_rank)
