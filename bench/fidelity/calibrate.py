"""Calibrate the data-free gate: which weight error keeps top-1 agreement >= 0.99?

Without a base model the gate can only judge the relative error of delta-W (energy-weighted over
modules). This script measures, on each benchmark adapter, how agreement with the uncompressed adapter
falls as that error grows, with two kinds of error: NOLA at fixed whole-file sizes (no gate) and plain
group-wise rounding of A and B (int8 .. int3, the `quant` peer), so the threshold does not rest on one
codec's error shape. Every point is a reconstruction loaded with PEFT on its base model and scored on
held-out predictions no step saw.

Cases: `text-lm` and `quickstart` (bench/fidelity/tiny_lm.py; next-token predictions) and `minilm`
(bench/fidelity/train.py; one prediction per test text), whichever exist under bench/out.

    .venv/bin/python bench/fidelity/calibrate.py [--cases text-lm quickstart minilm]

Prints a Markdown table per case and, per case, the largest error whose agreement stayed >= 0.99;
writes bench/out/calibrate.json.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch
from common import ADAPTER, BASE, OUT, Timer, logits, machine, quiet_transformers, write_json
from peers import quant_peer
from tiny_lm import LM, eval_tokens

from adapters.compress.codec import reconstruct_to_dir
from adapters.compress.errors import CompressError
from adapters.compress.gate import wilson_interval
from adapters.compress.nola import NolaCodec, NolaConfig
from adapters.compress.peft_io import LoraCheckpoint, read_adapter, write_adapter

RATIOS = (1.5, 2, 2.5, 3, 4, 5, 6, 8, 11, 16)
QUANT = ("int8", "int6", "int5", "int4", "int3")


class Case:
    def __init__(self, name: str):
        self.name = name
        if name == "minilm":
            from data import load_split

            self.base_dir, self.adapter_dir = BASE, ADAPTER
            self.texts = [r["text"] for r in load_split("test")]
        else:
            self.base_dir, self.adapter_dir = LM / name / "base-model", LM / name / name_adapter(name)
            self.tokens = eval_tokens(name)
        self.reference = self.outputs(self.adapter_dir)

    @torch.no_grad()
    def outputs(self, adapter_dir: Path) -> torch.Tensor:
        from peft import PeftModel

        if self.name == "minilm":
            from adapters.compress.calibration import load_base_model

            base, tokenizer = load_base_model(self.base_dir, adapter=read_adapter(adapter_dir))
            model = PeftModel.from_pretrained(base, adapter_dir).eval()
            return logits(model, tokenizer, self.texts)
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(self.base_dir)
        model = PeftModel.from_pretrained(base, adapter_dir).eval()
        return model(self.tokens).logits.float().reshape(-1, base.config.vocab_size)

    def score(self, adapter_dir: Path) -> dict:
        out = self.outputs(adapter_dir)
        n = out.shape[0]
        agree = int((out.argmax(-1) == self.reference.argmax(-1)).sum())
        log_p, log_q = self.reference.log_softmax(-1), out.log_softmax(-1)
        kl = float((log_p.exp() * (log_p - log_q)).sum(-1).mean())
        lower, _ = wilson_interval(agree, n)
        return {
            "predictions": n,
            "agreement": round(agree / n, 5),
            "agreement_se": round(math.sqrt(agree / n * (1 - agree / n) / n), 5),
            "bound": round(lower, 5),
            "kl": round(kl, 6),
        }


def name_adapter(name: str) -> str:
    return "tiny-lora" if name == "quickstart" else "adapter"


def points(case: Case, work: Path):
    ckpt = read_adapter(case.adapter_dir)
    source = (case.adapter_dir / "adapter_model.safetensors").stat().st_size
    for ratio in RATIOS:
        artifact = work / f"{case.name}-{ratio}.nola"
        try:
            with Timer() as timer:
                report = NolaCodec(NolaConfig(ratio=ratio, fit="weight")).compress(
                    ckpt, artifact, source_bytes=source
                )
        except CompressError as exc:  # headers and lossless tensors alone exceed the size
            print(f"{ratio:g}x: {exc}")
            continue
        out = reconstruct_to_dir(artifact, work / f"{case.name}-{ratio}")
        yield {
            "method": "nola weight",
            "setting": f"{ratio:g}x file",
            "file_ratio": round(report.ratio, 3),
            "weight_error": report.fidelity["weight_rel_error"],
            "seconds": round(timer.seconds, 2),
            **case.score(out),
        }
    for fmt in QUANT:
        lora_bytes = sum(
            t.numel() * t.element_size() for k, t in ckpt.tensors.items() if k in ckpt.pair_keys()
        )
        budget = {"int8": 1, "int6": 0.76, "int5": 0.64, "int4": 0.51, "int3": 0.39}[fmt] * lora_bytes / 4
        result = quant_peer(ckpt, int(budget) + 1)
        rebuilt = LoraCheckpoint(config=ckpt.config, tensors=result.tensors, pairs=ckpt.pairs)
        out = write_adapter(rebuilt, work / f"{case.name}-{fmt}")
        yield {
            "method": "group rounding",
            "setting": f"{result.settings['format']} g{result.settings['group_size']}",
            "file_ratio": None,
            "weight_error": result.settings["weight_rel_error"],
            "seconds": None,
            **case.score(out),
        }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", nargs="+", default=["text-lm", "quickstart", "minilm"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT / "calibrate.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet_transformers()
    result = {"machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "cases": {}}
    for name in args.cases:
        adapter = ADAPTER if name == "minilm" else LM / name / name_adapter(name)
        if not adapter.exists():
            print(f"skipping {name}: {adapter} does not exist")
            continue
        case = Case(name)
        rows = []
        print(f"\n### {name} ({case.reference.shape[0]} held-out predictions)\n")
        print("| method | setting | file ratio | weight error | agreement ± se | lower 95% bound | KL |")
        print("|---|---|---|---|---|---|---|")
        with tempfile.TemporaryDirectory() as tmp:
            for row in points(case, Path(tmp)):
                rows.append(row)
                ratio = "-" if row["file_ratio"] is None else f"{row['file_ratio']:.2f}"
                print(
                    f"| {row['method']} | {row['setting']} | {ratio} | {row['weight_error']:.4f} | "
                    f"{row['agreement']:.4f} ± {row['agreement_se']:.4f} | {row['bound']:.4f} | "
                    f"{row['kl']:.2e} |",
                    flush=True,
                )
        failing = [r["weight_error"] for r in rows if r["agreement"] < 0.99]
        safe = [
            r["weight_error"]
            for r in rows
            if r["agreement"] >= 0.99 and r["weight_error"] < min(failing, default=9)
        ]
        summary = {
            "largest_error_kept_0.99": max(safe, default=None),
            "smallest_error_below_0.99": min(failing, default=None),
        }
        print(f"\n{name}: {summary}")
        result["cases"][name] = {"rows": rows, **summary}
    write_json(args.out, result)


if __name__ == "__main__":
    main()
