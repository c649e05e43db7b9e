"""What the default push stores for the MiniLM adapter: the ratio the size search reaches at the default
gate, with and without the base model, its time, and whether PEFT reproduces the gated agreement on
unseen text.

  data-free   no base model: the gate judges the weight error (the data-free proxy);
  base model  the pretrained MiniLM-L6 as published (the headless sentence-transformers encoder, as
              `adapters` finds it in a models directory or the Hugging Face cache) and unlabelled
              calibration text from the user (the calibration and train splits' texts, labels unused):
              distilled, gated on the held-out agreement's lower 95% bound.

Each stored artifact is rebuilt, loaded with PEFT on the base model, and scored on the 1,600 test texts
that no step saw: accuracy, top-1 agreement with the uncompressed adapter (with its standard error) and
KL. Writes bench/out/gate.json and prints a Markdown table.

    .venv/bin/python bench/fidelity/gate.py [--only data-free|base-model] [--code auto|rows|transform]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from pathlib import Path

import torch
from common import ADAPTER, OUT, Timer, compare, logits, machine, minilm_dir, quiet_transformers, write_json
from data import load_split

from adapters.compress.calibration import load_base_model, with_adapter
from adapters.compress.codec import reconstruct_to_dir
from adapters.compress.distill import DistillConfig
from adapters.compress.gate import Gate
from adapters.compress.nola import NolaCodec, NolaConfig
from adapters.compress.peft_io import read_adapter


def score(base_dir: Path, adapter_dir: Path, reference: torch.Tensor | None, texts, labels):
    checkpoint = read_adapter(adapter_dir)
    base, tokenizer = load_base_model(base_dir, adapter=checkpoint)
    model = with_adapter(base, adapter_dir)
    out = logits(model, tokenizer, texts)
    if reference is None:
        return out, None
    result = compare(reference, out, labels)
    n = len(texts)
    result["agreement_se"] = math.sqrt(result["agreement"] * (1 - result["agreement"]) / n)
    result["texts"] = n
    return out, result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", choices=["data-free", "base-model"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--code", default="auto", help="NolaConfig.code: auto (the default push), rows or transform"
    )
    parser.add_argument("--out", type=Path, default=OUT / "gate.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet_transformers()
    published = minilm_dir()
    checkpoint = read_adapter(ADAPTER)
    source_bytes = (ADAPTER / "adapter_model.safetensors").stat().st_size
    texts, labels = load_split("test")
    calibration = load_split("calibration")[0] + load_split("train")[0]
    reference, _ = score(published, ADAPTER, None, texts, labels)
    uncompressed = compare(reference, reference, labels)
    rows = []
    cases = {
        "data-free": {},
        "base-model": {"base_model": published, "texts": calibration, "distill": DistillConfig()},
    }
    for name, options in cases.items():
        if args.only and name != args.only:
            continue
        codec = NolaCodec(NolaConfig(code=args.code), gate=Gate(), **options)
        with tempfile.TemporaryDirectory() as tmp:
            artifact = Path(tmp) / "a.nola"
            with Timer() as timer:
                report = codec.compress(checkpoint, artifact, source_bytes=source_bytes)
            if report.fidelity["gate_passed"]:
                reconstruct_to_dir(artifact, Path(tmp) / "rebuilt")
                _, unseen = score(published, Path(tmp) / "rebuilt", reference, texts, labels)
            else:
                unseen = uncompressed  # the lossless source is stored
        seconds = timer.seconds
        f = report.fidelity
        rows.append(
            {
                "case": name,
                "code": args.code,
                "stored": "nola" if f["gate_passed"] else "raw (no size passed)",
                "source_bytes": source_bytes,
                "artifact_bytes": report.artifact_bytes if f["gate_passed"] else source_bytes,
                "ratio": round(report.ratio, 2) if f["gate_passed"] else 1.0,
                "lora_ratio": f.get("lora_ratio"),
                "gate": f["gate"],
                "search": f["search"],
                "weight_rel_error": f.get("weight_rel_error"),
                "held_out": f.get("held_out"),
                "calibration": f.get("calibration"),
                "distill": {k: v for k, v in (f.get("distill") or {}).items() if k != "held_out"},
                "unseen": unseen,
                "seconds": round(seconds, 1),
            }
        )
        print(json.dumps(rows[-1], indent=1, default=str)[:3000])
    document = {
        "machine": machine(),
        "load_average": os.getloadavg(),
        "adapter": str(ADAPTER),
        "base_model": str(published),
        "uncompressed_test_accuracy": uncompressed["accuracy"],
        "rows": rows,
    }
    write_json(args.out, document)
    print(
        "\n| case | stored | file bytes | ratio (file) | ratio (LoRA) | gate basis | n | estimate (bound) "
        "| unseen agreement ± SE | unseen KL | test acc | time (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        g, u = r["gate"], r["unseen"]
        bound = f" ({g['bound']:.4f})" if g.get("bound") is not None else ""
        print(
            f"| {r['case']} | {r['stored']} | {r['artifact_bytes']} | {r['ratio']} | {r['lora_ratio']} "
            f"| {g['basis']} | {g.get('predictions')} | {g.get('estimate')}{bound} "
            f"| {u['agreement']:.4f} ± {u.get('agreement_se', 0):.4f} | {u['kl']:.4f} | {u['accuracy']:.3f} "
            f"| {r['seconds']} |"
        )


if __name__ == "__main__":
    main()
