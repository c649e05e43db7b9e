"""Codes at equal whole-file bytes: NOLA's row code, NOLA's transform code and the transform-code peer.

For each case and each ratio (source adapter file bytes / artifact bytes: 5x, 10x, 20x, 40x by default)
every method gets the same whole-file budget: the NOLA codes make artifacts of that size (header,
lossless tensors and coefficients, as written); the peer gets what is left after the lossless tensors
and the PEFT config it would also have to carry. Reported per method: file bytes, weight error (energy-
weighted relative error of delta-W), top-1 agreement with the uncompressed adapter and its binomial
standard error, mean KL(original || compressed) per prediction, and the time to compress.

Cases
  lm       a small Llama-shaped causal LM (byte-level, 3 layers, hidden 96) pretrained for a minute on the
           generated corpus (compress/corpus.py), then a PEFT LoRA (r=16 on every linear layer) trained
           for two minutes on Python docstrings (real text); next-token agreement over held-out
           docstring windows (4,064 predictions). Built once into bench/out/codec-lm.
  minilm   the MiniLM classifier adapter of run.py, when bench/out/minilm-lora and the test split exist
           (read only); agreement per test text.

`--curve` adds, for the transform code on the lm case, weight error against agreement over a ladder
of ratios (to calibrate the data-free gate's weight-error threshold).

    OMP_NUM_THREADS=1 python bench/fidelity/codec_compare.py --out bench/out/codec_compare.json
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ADAPTER, BASE, DATA, OUT, machine, write_json
from peers import RECORD_BYTES, transform_peer

from adapters.compress.codec import reconstruct
from adapters.compress.corpus import generated_texts
from adapters.compress.fidelity import measure
from adapters.compress.nola import NolaCodec, NolaConfig, lora_pairs
from adapters.compress.peft_io import config_json, read_adapter

LM_DIR = OUT / "codec-lm"
WINDOW = 128
LM = {
    "vocab_size": 256,
    "hidden_size": 96,
    "intermediate_size": 256,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": WINDOW,
}
DOC_MODULES = ("email", "http", "json", "logging", "argparse", "unittest", "urllib", "collections", "xml")


def _windows(texts: list[str], count: int | None = None) -> torch.Tensor:
    stream = "\n".join(texts).encode("utf-8", errors="replace")
    n = len(stream) // WINDOW if count is None else count
    data = torch.tensor(list(stream[: n * WINDOW]), dtype=torch.long)
    return data.reshape(n, WINDOW)


def _train(model, data: torch.Tensor, seconds: float, lr: float, seed: int) -> int:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    start, steps = time.perf_counter(), 0
    model.train()
    while time.perf_counter() - start < seconds:
        batch = data[torch.randint(len(data), (32,), generator=gen)]
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
    model.eval()
    return steps


def _docstrings() -> list[str]:
    from data import clean, docstrings, source_files

    paragraphs = {
        c
        for f in source_files(DOC_MODULES)
        for d in docstrings(f)
        for p in d.split("\n\n")
        if (c := clean(p))
    }
    texts = sorted(paragraphs)
    random.Random(0).shuffle(texts)
    return texts


def build_lm(base_seconds: float, lora_seconds: float) -> dict[str, Any]:
    """Train (once) the base LM and its LoRA; returns paths and the held-out windows."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    texts = _docstrings()
    held_texts, train_texts = texts[:300], texts[300:]
    held = _windows(held_texts, 32)
    train = _windows(train_texts)
    fit = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(2))[:128]]
    info: dict[str, Any] = {"base": LM_DIR / "base", "adapter": LM_DIR / "adapter", "held": held, "fit": fit}
    if (LM_DIR / "adapter" / "adapter_model.safetensors").is_file():
        return info
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**LM))
    base_steps = _train(model, _windows(generated_texts(4000, seed=1)), base_seconds, 3e-3, 0)
    model.save_pretrained(LM_DIR / "base")
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=targets))
    lora_steps = _train(peft_model, _windows(train_texts), lora_seconds, 3e-3, 1)
    peft_model.save_pretrained(LM_DIR / "adapter")
    print(f"lm case built: base {base_steps} steps, lora {lora_steps} steps", flush=True)
    return info


class LmScorer:
    def __init__(self, info: dict[str, Any]):
        from peft import PeftModel
        from transformers import LlamaForCausalLM

        self.held = info["held"]
        self.ckpt = read_adapter(info["adapter"])
        base = LlamaForCausalLM.from_pretrained(info["base"]).eval()
        self.model = PeftModel.from_pretrained(base, str(info["adapter"])).eval()
        self.reference = self._logits()
        with self.model.disable_adapter():
            self.base_logits = self._logits()
        self.fit_windows = info["fit"]
        self._stats = None

    @torch.no_grad()
    def stats(self):
        """Input second moments of the adapter's modules over the fit windows (never the held ones)."""
        from adapters.compress.stats import collecting

        if self._stats is None:
            with collecting(self.model, [p.module for p in self.ckpt.pairs]) as collector:
                for batch in self.fit_windows.split(32):
                    self.model(input_ids=batch)
            self._stats = collector.result()
        return self._stats

    @torch.no_grad()
    def _logits(self) -> torch.Tensor:
        return self.model(input_ids=self.held).logits[:, :-1].float()

    @torch.no_grad()
    def score(self, tensors: dict[str, torch.Tensor]) -> dict[str, float]:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(self.model, {k: v.float() for k, v in tensors.items()})
        out = compare(self.reference, self._logits())
        set_peft_model_state_dict(self.model, self.ckpt.tensors)
        return out


class MiniLmScorer:
    def __init__(self, adapter: Path = ADAPTER, base: Path = BASE, data: Path = DATA):
        from common import logits
        from data import load_split

        from adapters.compress.calibration import load_base_model, with_adapter

        self.ckpt = read_adapter(adapter)
        self.base = base
        self.texts, _ = load_split("test", data)
        self._logits, self._load, self._with = logits, load_base_model, with_adapter
        model, self.tokenizer = load_base_model(base, adapter=self.ckpt)
        self.reference = logits(with_adapter(model, adapter), self.tokenizer, self.texts)
        self.workdir = Path(tempfile.mkdtemp(prefix="codec-", dir=OUT))
        self.data, self._stats = data, None

    def calibration(self) -> list[str]:
        from data import load_split

        return load_split("calibration", self.data)[0]

    def stats(self):
        """Input second moments over (up to 1,024 of) the training texts, as the pipeline collects them."""
        from data import load_split

        from adapters.compress.calibration import collect_stats

        if self._stats is None:
            texts, _ = load_split("train", self.data)
            base, _ = self._load(self.base, adapter=self.ckpt)
            model = self._with(base, self.ckpt, self.workdir / "source")
            modules = [p.module for p in self.ckpt.pairs]
            self._stats = collect_stats(model, self.tokenizer, texts[:1024], modules, max_length=128)
        return self._stats

    def score(self, tensors: dict[str, torch.Tensor]) -> dict[str, float]:
        from adapters.compress.peft_io import LoraCheckpoint

        base, _ = self._load(self.base, adapter=self.ckpt)
        candidate = LoraCheckpoint(self.ckpt.config, tensors, self.ckpt.pairs)
        model = self._with(base, candidate, self.workdir / "candidate")
        return compare(self.reference, self._logits(model, self.tokenizer, self.texts))


def compare(reference: torch.Tensor, candidate: torch.Tensor) -> dict[str, float]:
    ref, cand = reference.reshape(-1, reference.shape[-1]), candidate.reshape(-1, candidate.shape[-1])
    agree = (ref.argmax(-1) == cand.argmax(-1)).double()
    log_p, log_q = ref.log_softmax(-1), cand.log_softmax(-1)
    n = agree.numel()
    p = float(agree.mean())
    return {
        "agreement": round(p, 5),
        "agreement_se": round(math.sqrt(max(p * (1 - p), 0.0) / n), 5),
        "predictions": n,
        "kl": round(float((log_p.exp() * (log_p - log_q)).sum(-1).mean()), 6),
    }


def nola_row(
    ckpt, source_file: Path, ratio: float, code: str, workdir: Path, stats=None, **options
) -> dict[str, Any]:
    """A NOLA code at `ratio`: the weight fit, or with `stats` the activation-aware fit."""
    fit = "activation" if stats else "weight"
    suffix = "".join(f"-{k}={v}" for k, v in sorted(options.items()))
    out = workdir / f"{code}-{fit}{suffix}-{ratio:g}.nola"
    cfg = NolaConfig(ratio=ratio, code=code, fit=fit, **options)
    t = time.perf_counter()
    report = NolaCodec(cfg, stats).compress(ckpt, out, source_bytes=source_file.stat().st_size)
    seconds = time.perf_counter() - t
    tensors = reconstruct(out).tensors
    measured = measure(ckpt, tensors, lora_pairs(ckpt), stats)
    return {
        "file_bytes": out.stat().st_size,
        "coefficient_bytes": report.fidelity["coefficient_bytes"],
        "weight_error": measured["weight_rel_error"],
        **({"output_error": measured["output_rel_error"]} if stats else {}),
        "seconds": round(seconds, 2),
        "tensors": tensors,
    }


def distilled_row(scorer, source_file: Path, ratio: float, code: str, workdir: Path) -> dict[str, Any]:
    """The pipeline's distillation of one code (statistics, closed form, distillation; no gate) on the
    calibration split, within --distill-seconds."""
    from adapters.compress.distill import DistillConfig

    ckpt = scorer.ckpt
    out = workdir / f"{code}-distilled-{ratio:g}.nola"
    cfg = NolaConfig(ratio=ratio, code=code, fit="distill", extras="exact")
    distill = DistillConfig(max_seconds=DISTILL_SECONDS[0])
    codec = NolaCodec(cfg, base_model=scorer.base, texts=scorer.calibration(), distill=distill)
    t = time.perf_counter()
    report = codec.compress(ckpt, out, source_bytes=source_file.stat().st_size)
    seconds = time.perf_counter() - t
    tensors = reconstruct(out).tensors
    record = report.fidelity.get("distill", {})
    print(
        f"  distill {code}: {record.get('steps_run')} steps, {record.get('stopped')}, "
        f"validation {record.get('validation_before')} -> {record.get('validation_best')}",
        flush=True,
    )
    return {
        "file_bytes": out.stat().st_size,
        "coefficient_bytes": report.fidelity["coefficient_bytes"],
        "weight_error": measure(ckpt, tensors, lora_pairs(ckpt))["weight_rel_error"],
        "seconds": round(seconds, 2),
        "distill": {
            k: record.get(k)
            for k in ("steps_run", "stopped", "validation_before", "validation_best", "kept", "seconds")
        },
        "tensors": tensors,
    }


def peer_row(ckpt, target: int, container: int | None = None) -> dict[str, Any]:
    """The peer within `target` whole-file bytes, of which `container` (default: the lossless tensors
    and the plain PEFT config) are not coefficients."""
    extras = ckpt.nbytes() - sum(ckpt.tensors[k].nbytes for p in ckpt.pairs for k in (p.a_key, p.b_key))
    fixed = extras + len(config_json(ckpt.config).encode()) if container is None else container
    t = time.perf_counter()
    result = transform_peer(ckpt, target - fixed)
    seconds = time.perf_counter() - t
    return {
        "file_bytes": result.lora_bytes + fixed,
        "coefficient_bytes": result.lora_bytes - RECORD_BYTES * len(ckpt.pairs),
        "weight_error": result.settings["weight_rel_error"],
        "seconds": round(seconds, 2),
        "tensors": result.tensors,
    }


METHODS = (
    "nola rows",
    "nola transform",
    "nola transform, fp16 extras",
    "transform peer",
    "peer, same box",
    "nola rows, activation",
    "nola transform, activation",
    "nola rows, distilled",
    "nola transform, distilled",
)
DISTILL_SECONDS = [120.0]  # set by --distill-seconds: the same time budget for both codes


def run_case(
    name: str, scorer, source_file: Path, ratios, workdir: Path, methods=METHODS
) -> list[dict[str, Any]]:
    ckpt = scorer.ckpt
    size = source_file.stat().st_size
    rows = []
    for ratio in ratios:
        target = int(size / ratio)
        container: list[int] = []
        made = {
            # The row code as it was (heads exact), the transform code with heads exact and at fp16.
            "nola rows": lambda r=ratio: nola_row(ckpt, source_file, r, "rows", workdir, extras="exact"),
            "nola transform": lambda r=ratio: nola_row(
                ckpt, source_file, r, "transform", workdir, extras="exact"
            ),
            "nola transform, fp16 extras": lambda r=ratio: nola_row(
                ckpt, source_file, r, "transform", workdir, extras="fp16"
            ),
            "transform peer": lambda t=target: peer_row(ckpt, t),
            # The same peer in the transform artifact's container (its header, config and lossless
            # tensors): the same coefficient bytes, so only the codes differ.
            "peer, same box": lambda t=target, c=container: peer_row(ckpt, t, c[0] if c else None),
            # The activation-aware fits (input statistics of the fit texts), heads exact.
            "nola rows, activation": lambda r=ratio: nola_row(
                ckpt, source_file, r, "rows", workdir, scorer.stats(), extras="exact"
            ),
            "nola transform, activation": lambda r=ratio: nola_row(
                ckpt, source_file, r, "transform", workdir, scorer.stats(), extras="exact"
            ),
        }
        if hasattr(scorer, "calibration"):  # distillation needs a tokenized base model (minilm)
            for code in ("rows", "transform"):
                made[f"nola {code}, distilled"] = lambda r=ratio, c=code: distilled_row(
                    scorer, source_file, r, c, workdir
                )
        for method, make in made.items():
            if method not in methods:
                continue
            try:
                row = make()
            except Exception as exc:  # noqa: BLE001 - a size out of reach is a row, not a crash
                rows.append({"case": name, "ratio": ratio, "method": method, "error": str(exc)})
                continue
            tensors = row.pop("tensors")
            if method == "nola transform":
                container.append(row["file_bytes"] - row["coefficient_bytes"])
            row.update(scorer.score(tensors))
            row = {"case": name, "ratio": ratio, "method": method, "target_bytes": target, **row}
            rows.append(row)
            print(_line(row), flush=True)
    return rows


def _line(r: dict[str, Any]) -> str:
    return (
        f"{r['case']:7s} {r['ratio']:>5g}x {r['method']:27s} {r['file_bytes']:>8d} B  "
        f"werr {r['weight_error']:.4f}  "
        f"agree {r['agreement']:.4f} ± {r['agreement_se']:.4f}  KL {r['kl']:.5f}  {r['seconds']:6.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ratios", type=float, nargs="+", default=[5, 10, 20, 40])
    parser.add_argument("--cases", nargs="+", default=["lm", "minilm"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--extras-only", action="store_true", help="minilm: score the head at fp16 alone")
    parser.add_argument("--curve", action="store_true", help="transform code: weight error vs agreement (lm)")
    parser.add_argument("--distill-seconds", type=float, default=120, help="per distillation run")
    parser.add_argument("--base-seconds", type=float, default=60)
    parser.add_argument("--lora-seconds", type=float, default=120)
    parser.add_argument("--minilm-adapter", type=Path, default=ADAPTER, help="read only")
    parser.add_argument("--minilm-base", type=Path, default=BASE)
    parser.add_argument("--data", type=Path, default=DATA, help="the classifier's splits (test.jsonl)")
    parser.add_argument("--out", type=Path, default=OUT / "codec_compare.json")
    args = parser.parse_args()
    DISTILL_SECONDS[0] = args.distill_seconds
    workdir = Path(
        tempfile.mkdtemp(prefix="codec-compare-", dir=OUT.mkdir(parents=True, exist_ok=True) or OUT)
    )
    result: dict[str, Any] = {"machine": machine(), "rows": [], "curve": []}
    if "lm" in args.cases:
        info = build_lm(args.base_seconds, args.lora_seconds)
        scorer = LmScorer(info)
        base = compare(scorer.reference, scorer.base_logits)
        print(f"lm: base model without the adapter agrees {base['agreement']:.4f} (KL {base['kl']:.4f})")
        result["lm_without_adapter"] = base
        source = Path(info["adapter"]) / "adapter_model.safetensors"
        result["rows"] += run_case("lm", scorer, source, args.ratios, workdir, args.methods)
        if args.curve:
            for ratio in (3, 4, 5, 6, 7, 8, 10, 12, 14, 17, 20, 24, 28, 34, 40):
                row = nola_row(scorer.ckpt, source, ratio, "transform", workdir)
                row.update(scorer.score(row.pop("tensors")))
                result["curve"].append({"ratio": ratio, **row})
                print(
                    f"curve {ratio:>3}x werr {row['weight_error']:.4f} agree {row['agreement']:.4f}",
                    flush=True,
                )
    if "minilm" in args.cases:
        source = args.minilm_adapter / "adapter_model.safetensors"
        if source.is_file() and (args.data / "test.jsonl").is_file():
            scorer = MiniLmScorer(args.minilm_adapter, args.minilm_base, args.data)
            if args.extras_only:  # what fp16 extras alone cost: exact factors, the head at fp16
                pairs = {k for p in scorer.ckpt.pairs for k in (p.a_key, p.b_key)}
                half = {
                    k: v if k in pairs or v.dtype != torch.float32 else v.half().float()
                    for k, v in scorer.ckpt.tensors.items()
                }
                result["minilm_fp16_extras_only"] = scorer.score(half)
                print(
                    f"minilm: exact factors, extras at fp16: {result['minilm_fp16_extras_only']}", flush=True
                )
            result["rows"] += run_case("minilm", scorer, source, args.ratios, workdir, args.methods)
        else:
            print(f"minilm: skipped ({source} or {args.data / 'test.jsonl'} missing)")
    write_json(args.out, result)


if __name__ == "__main__":
    main()
