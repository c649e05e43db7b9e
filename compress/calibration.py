"""Base models and calibration texts: loading them, batching them, and the input statistics of the
activation-aware fit. (Agreement between an adapter and a candidate is `distill.Teacher.agreement`.)

Needs `transformers` and `peft` (the `hf` extra); imported only when these functions run. Models are
read from local directories only (`base_models.load_base_model`, re-exported here).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from .base_models import load_base_model  # noqa: F401 - where callers have always found it
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
# Enough for a classifier's held-out gate (one prediction per text) and a fit set beside it.
DEFAULT_CORPUS_SIZE = 4096


def default_texts(count: int = DEFAULT_CORPUS_SIZE) -> list[str]:
    """The packaged general-purpose corpus, for when the user gives no calibration texts: 145
    hand-written short texts (prose, instructions, dialogue, questions, code and numbers) and, up to
    `count`, texts from the seeded generator in corpus.py. Texts from the adapter's own domain are
    better; this keeps compression usable, and the gate decidable, without them."""
    from importlib.resources import files

    from .corpus import generated_texts

    data = files("adapters.compress").joinpath("data", DEFAULT_CORPUS).read_text(encoding="utf-8")
    written = [line.strip() for line in data.splitlines() if line.strip()]
    return written + generated_texts(max(0, count - len(written)))


def calibration_texts(path: str | Path | None, count: int = DEFAULT_CORPUS_SIZE) -> tuple[list[str], str]:
    """The user's texts (a file, see `read_texts`), topped up from the packaged corpus to `count`
    so the held-out gate has enough predictions; and a note on where they came from."""
    if path is None:
        return default_texts(count), "packaged corpus"
    texts = read_texts(path)
    missing = count - len(texts)
    if missing <= 0:
        return texts, str(path)
    known = set(texts)
    extra = [t for t in default_texts(count + len(texts)) if t not in known][:missing]
    return texts + extra, f"{path} ({len(texts)} texts) + packaged corpus ({len(extra)})"


def split_texts(texts: Sequence[str], held_out: float = 0.2, seed: int = 0) -> tuple[list[str], list[str]]:
    """A seeded split into (fit, held-out) texts; both non-empty when there are two or more texts."""
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed)).tolist()
    n_held = min(len(texts) - 1, max(1, round(len(texts) * held_out))) if len(texts) > 1 else 0
    held = sorted(order[:n_held])
    fit = sorted(order[n_held:])
    return [texts[i] for i in fit], [texts[i] for i in held]


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
    tokenizer,
    texts: Sequence[str],
    batch_size: int = 8,
    max_length: int = 128,
    device="cpu",
    model=None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Tokenized batches; for an encoder-decoder `model`, with its decoder inputs (`decoder_inputs`)."""
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(
            list(texts[start : start + batch_size]),
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=max_length,
        )
        batch = {k: v.to(device) for k, v in enc.items()}
        yield decoder_inputs(model, batch) if model is not None else batch


def decoder_inputs(model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch with decoder inputs when `model` is an encoder-decoder (T5, BART), else as it is.

    The decoder reads the text itself shifted right behind the decoder start token, as in teacher
    forcing, so decoder position t predicts token t of the text: predictions, like the encoder's
    tokens, are where `attention_mask` is set, and both sides share its shape (the statistics' token
    mask and the distillation's prediction mask apply to encoder and decoder alike).
    """
    config = getattr(model, "config", None)
    if not getattr(config, "is_encoder_decoder", False) or "decoder_input_ids" in batch:
        return batch
    start = getattr(config, "decoder_start_token_id", None)
    if start is None:
        start = getattr(config, "pad_token_id", None) or 0
    ids, mask = batch["input_ids"], batch["attention_mask"]
    shifted = torch.full_like(ids, start)
    shifted[:, 1:] = ids[:, :-1]
    decoder_mask = torch.ones_like(mask)
    decoder_mask[:, 1:] = mask[:, :-1]
    return {**batch, "decoder_input_ids": shifted, "decoder_attention_mask": decoder_mask}


@torch.no_grad()
def collect_stats(
    model, tokenizer, texts: Sequence[str], modules: Sequence[str], max_rank: int = DEFAULT_MAX_RANK, **kw
) -> dict[str, InputStats]:
    """Input second moments of `modules` over the texts (padding left out)."""
    device = next(model.parameters()).device
    with collecting(model, modules) as collector:
        for batch in token_batches(tokenizer, texts, device=device, model=model, **kw):
            collector.token_mask = batch["attention_mask"].bool()
            model(**batch)
    return collector.result(max_rank)
