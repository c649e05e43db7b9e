"""Fidelity at equal bytes: NOLA variants and post-hoc peers on the trained MiniLM-L6 LoRA adapter.

For each method at a target ratio (fp32 LoRA factor bytes / stored LoRA bytes; the classifier head is
lossless for every method and counted apart): bytes (LoRA part and whole artifact), the ratio achieved,
energy-weighted weight and output relative errors of delta-W (output error in the metric of the
calibration inputs' second moments), test accuracy, top-1 agreement and KL(original || method) with the
uncompressed adapter on the test split, and wall time. Then a ratio sweep for the best closed-form NOLA
variant and the best peer (by agreement at the main ratio; distillation only when named, it is slow on
a CPU), and optionally a per-module-kind ablation of NOLA variants (only one kind of module taken from
the reconstruction, the rest exact).

Input statistics come from the calibration split, with `collect_stats` on the model with the original
adapter; they are cached in bench/out/stats.safetensors (--stats; --recompute-stats to refresh).

Writes bench/out/fidelity.json (everything, per-module errors included) and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import (
    ADAPTER,
    BASE,
    BENCH,
    DATA,
    OUT,
    Timer,
    compare,
    logits,
    machine,
    quiet_transformers,
    write_json,
)
from data import load_split
from peers import PEERS, RECORD_BYTES, lora_source_bytes

from adapters.compress.calibration import collect_stats, load_base_model, with_adapter
from adapters.compress.codec import reconstruct
from adapters.compress.distill import DistillConfig
from adapters.compress.fidelity import measure
from adapters.compress.nola import NolaCodec, NolaConfig
from adapters.compress.peft_io import LoraCheckpoint, read_adapter
from adapters.compress.stats import load_stats, save_stats

# name -> NolaConfig fields (besides ratio); fields left out take the codec's defaults (recorded)
NOLA_VARIANTS: dict[str, dict[str, str]] = {
    "nola weight fast auto": {"fit": "weight", "basis": "fast", "bits": "auto"},
    "nola weight fast fp16": {"fit": "weight", "basis": "fast", "bits": "fp16"},
    "nola weight fast int8": {"fit": "weight", "basis": "fast", "bits": "int8"},
    "nola weight fast int4": {"fit": "weight", "basis": "fast", "bits": "int4"},
    "nola weight dense auto": {"fit": "weight", "basis": "dense", "bits": "auto"},
    "nola act fast auto": {"fit": "activation", "basis": "fast", "bits": "auto"},
    "nola act fast auto absolute": {
        "fit": "activation",
        "basis": "fast",
        "bits": "auto",
        "weighting": "absolute",
    },
    "nola act fast auto balanced": {
        "fit": "activation",
        "basis": "fast",
        "bits": "auto",
        "weighting": "balanced",
    },
    "nola act fast int8": {"fit": "activation", "basis": "fast", "bits": "int8"},
    "nola act fast int4": {"fit": "activation", "basis": "fast", "bits": "int4"},
    "nola act dense auto": {"fit": "activation", "basis": "dense", "bits": "auto"},
    "nola distill fast auto": {"fit": "distill", "basis": "fast", "bits": "auto"},
}
MODULE_KINDS = {
    "attention.self.query": "query",
    "attention.self.key": "key",
    "attention.self.value": "value",
    "attention.output.dense": "attn-out",
    "intermediate.dense": "ffn-in",
    "output.dense": "ffn-out",
    "pooler.dense": "pooler",
}


def module_kind(module: str) -> str:
    for suffix, kind in MODULE_KINDS.items():
        if module.endswith(suffix):
            return kind
    return "other"


def git_state() -> dict[str, Any]:
    """Which codec was measured: a commit pinned with pin_codec.sh, or HEAD and whether compress/ of
    the working tree differs from it."""
    import adapters.compress

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, cwd=BENCH, check=False
        ).stdout.strip()

    source = Path(adapters.compress.__file__).resolve().parent
    head = git("rev-parse", "--short", "HEAD")
    if source.parent.parent.name.startswith("codec-"):
        sha = source.parent.parent.name.removeprefix("codec-")
        last = git("log", "-1", "--format=%h", sha, "--", "../compress")
        return {"commit": sha, "compress_last_changed": last, "codec_source": str(source), "pinned": True}
    dirty = bool(git("status", "--porcelain", "--", str(source)))
    last = git("log", "-1", "--format=%h", "--", "../compress")
    return {
        "commit": head,
        "compress_last_changed": last,
        "codec_source": str(source),
        "pinned": False,
        "compress_dirty": dirty,
    }


class Bench:
    """The reference model's outputs and everything needed to score a candidate adapter."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.ckpt = read_adapter(args.adapter)
        self.pairs = [p for p in self.ckpt.pairs if p.kind == "linear"]
        self.lora_bytes = lora_source_bytes(self.ckpt)
        self.extra_bytes = self.ckpt.nbytes() - self.lora_bytes
        self.source_file_bytes = (Path(args.adapter) / "adapter_model.safetensors").stat().st_size
        self.texts, self.labels = load_split("test", args.data)
        if args.test_limit:
            self.texts, self.labels = self.texts[: args.test_limit], self.labels[: args.test_limit]
        self.workdir = Path(tempfile.mkdtemp(prefix="fidelity-", dir=OUT))
        base, self.tokenizer = load_base_model(args.base, adapter=self.ckpt)
        reference = with_adapter(base, args.adapter)
        with Timer() as t:
            self.reference = logits(reference, self.tokenizer, self.texts)
        self.eval_seconds = t.seconds
        self.stats = self._stats(reference)

    def _stats(self, model) -> dict:
        path = self.args.stats
        if path.is_file() and not self.args.recompute_stats:
            self.stats_seconds = None
            return load_stats(path)
        calib, _ = load_split("calibration", self.args.data)
        calib = calib[: self.args.calib_limit or None]
        with Timer() as t:
            stats = collect_stats(model, self.tokenizer, calib, [p.module for p in self.pairs])
        self.stats_seconds = round(t.seconds, 1)
        save_stats(path, stats)
        return stats

    def score(self, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Errors against the original factors and behaviour on the test split."""
        fid = measure(self.ckpt, tensors, self.pairs, self.stats)
        candidate = LoraCheckpoint(config=self.ckpt.config, tensors=tensors, pairs=self.ckpt.pairs)
        base, _ = load_base_model(self.args.base, adapter=self.ckpt)
        model = with_adapter(base, candidate, self.workdir / "candidate")
        behaviour = compare(self.reference, logits(model, self.tokenizer, self.texts), self.labels)
        return {
            "weight_rel_error": fid["weight_rel_error"],
            "output_rel_error": fid.get("output_rel_error"),
            **{k: round(v, 5) for k, v in behaviour.items()},
            "modules": fid["modules"],
        }

    def nola(self, name: str, ratio: float) -> dict[str, Any]:
        cfg = NolaConfig(ratio=ratio, **NOLA_VARIANTS[name])
        artifact = self.args.out.parent / "artifacts" / f"{name.replace(' ', '-')}-{ratio:g}x.nola"
        artifact.parent.mkdir(parents=True, exist_ok=True)
        if cfg.fit == "distill":
            texts, _ = load_split("calibration", self.args.data)
            texts = texts[: self.args.calib_limit or None]
            if self.args.distill_texts == "train+calibration":
                # Unlabelled texts only: the teacher labels them. The codec holds a fifth out.
                texts = load_split("train", self.args.data)[0] + texts
            codec = NolaCodec(
                cfg,
                stats=self.stats,
                base_model=self.args.base,
                texts=texts,
                distill=DistillConfig(
                    steps=self.args.distill_steps,
                    lr=self.args.distill_lr,
                    hidden_weight=self.args.distill_hidden_weight,
                    temperature=self.args.distill_temperature,
                ),
            )
        else:
            codec = NolaCodec(cfg, stats=self.stats if cfg.fit == "activation" else None)
        with Timer() as t_compress:
            report = codec.compress(self.ckpt, artifact)
        with Timer() as t_decode:
            tensors = reconstruct(artifact).tensors
        lora = int(report.fidelity["coefficient_bytes"])
        return {
            "method": name,
            "target_ratio": ratio,
            "lora_bytes": lora,
            "artifact_bytes": artifact.stat().st_size,
            "lora_ratio": round(self.lora_bytes / lora, 2),
            "artifact_ratio": round(self.source_file_bytes / artifact.stat().st_size, 2),
            "compress_seconds": round(t_compress.seconds, 2),
            "reconstruct_seconds": round(t_decode.seconds, 2),
            "settings": {
                k: report.params.get(k)
                for k in ("fit", "basis", "bits", "weighting", "bits_per_coefficient", "coefficients")
            },
            "codec_fidelity": {k: v for k, v in report.fidelity.items() if k != "modules"},
            **self.score(tensors),
        }

    def peer(self, name: str, ratio: float) -> dict[str, Any]:
        budget = int(self.lora_bytes / ratio)
        with Timer() as t:
            result = PEERS[name](self.ckpt, budget, self.stats)
        # A whole artifact would hold the stored LoRA part plus the head, losslessly, as fp32.
        artifact = result.lora_bytes + self.extra_bytes + RECORD_BYTES
        return {
            "method": name,
            "target_ratio": ratio,
            "lora_bytes": result.lora_bytes,
            "artifact_bytes": artifact,
            "lora_ratio": round(self.lora_bytes / result.lora_bytes, 2),
            "artifact_ratio": round(self.source_file_bytes / artifact, 2),
            "compress_seconds": round(t.seconds, 2),
            "reconstruct_seconds": None,
            "settings": {k: v for k, v in result.settings.items() if k != "ranks"},
            **self.score(result.tensors),
        }

    def reference_row(self) -> dict[str, Any]:
        return {
            "method": "uncompressed (fp32)",
            "target_ratio": 1,
            "lora_bytes": self.lora_bytes,
            "artifact_bytes": self.source_file_bytes,
            "lora_ratio": 1.0,
            "artifact_ratio": 1.0,
            "compress_seconds": None,
            "reconstruct_seconds": None,
            "weight_rel_error": 0.0,
            "output_rel_error": 0.0,
            **compare(self.reference, self.reference, self.labels),
        }

    def head_only_row(self) -> dict[str, Any]:
        tensors = dict(self.ckpt.tensors)
        for p in self.pairs:
            tensors[p.b_key] = torch.zeros_like(tensors[p.b_key])
        row = self.score(tensors)
        return {
            "method": "base + head only (no LoRA)",
            "target_ratio": None,
            "lora_bytes": 0,
            "artifact_bytes": self.extra_bytes,
            "lora_ratio": None,
            "artifact_ratio": round(self.source_file_bytes / self.extra_bytes, 2),
            "compress_seconds": None,
            "reconstruct_seconds": None,
            **row,
        }

    def ablate(self, name: str, ratio: float) -> list[dict[str, Any]]:
        """Only one kind of module taken from the NOLA reconstruction, every other module exact."""
        artifact = self.args.out.parent / "artifacts" / f"{name.replace(' ', '-')}-{ratio:g}x.nola"
        decoded = reconstruct(artifact).tensors
        rows = []
        for kind in sorted({module_kind(p.module) for p in self.pairs}):
            tensors = dict(self.ckpt.tensors)
            for p in self.pairs:
                if module_kind(p.module) == kind:
                    tensors[p.a_key], tensors[p.b_key] = decoded[p.a_key], decoded[p.b_key]
            row = self.score(tensors)
            row.pop("modules")
            rows.append({"kind": kind, **row})
            print(f"  ablation {kind:9s} agreement {row['agreement']:.4f} kl {row['kl']:.4f}", flush=True)
        return rows


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| method | LoRA bytes | ratio (LoRA) | artifact bytes | ratio (file) | weight err | output err "
        "| test acc | agreement | KL | time (s) |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        seconds = r.get("compress_seconds")
        if seconds is not None and r.get("reconstruct_seconds") is not None:
            seconds = f"{seconds:.1f} + {r['reconstruct_seconds']:.1f}"
        lines.append(
            f"| {r['method']} | {r['lora_bytes']} | {fmt(r['lora_ratio'], 1)} | {r['artifact_bytes']} "
            f"| {fmt(r['artifact_ratio'], 1)} | {fmt(r['weight_rel_error'])} | {fmt(r['output_rel_error'])} "
            f"| {fmt(r['accuracy'])} | {fmt(r['agreement'])} | {fmt(r['kl'], 4)} | {fmt(seconds, 1)} |"
        )
    return "\n".join(lines)


def by_kind(rows: list[dict[str, Any]]) -> str:
    """Mean per-module relative errors by module kind, for the rows given."""
    kinds = list(dict.fromkeys(module_kind(m["module"]) for m in rows[0]["modules"]))
    lines = ["| method | " + " | ".join(kinds) + " |", "|" + "---|" * (len(kinds) + 1)]
    for r in rows:
        cells = []
        for kind in kinds:
            mods = [m for m in r["modules"] if module_kind(m["module"]) == kind]
            w = sum(m["weight"] for m in mods) / len(mods)
            o = sum(m.get("output", float("nan")) for m in mods) / len(mods)
            cells.append(f"{w:.2f} / {o:.2f}")
        lines.append(f"| {r['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--adapter", type=Path, default=ADAPTER)
    parser.add_argument("--base", type=Path, default=BASE)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--ratio", type=float, default=20.0, help="main comparison ratio (default 20)")
    parser.add_argument("--sweep", type=float, nargs="*", default=[5, 10, 20, 40], help="sweep ratios")
    parser.add_argument("--nola", nargs="*", default=list(NOLA_VARIANTS), help="NOLA variants to run")
    parser.add_argument("--peers", nargs="*", default=list(PEERS), help="peers to run")
    # The distill variant's settings default to the codec's own (DistillConfig).
    parser.add_argument("--distill-steps", type=int, default=DistillConfig.steps)
    parser.add_argument("--distill-lr", type=float, default=DistillConfig.lr, help="Adam step size")
    parser.add_argument(
        "--distill-hidden-weight",
        type=float,
        default=DistillConfig.hidden_weight,
        help="hidden-state MSE weight",
    )
    parser.add_argument(
        "--distill-temperature", type=float, default=DistillConfig.temperature, help="KL temperature"
    )
    parser.add_argument(
        "--distill-texts",
        choices=["calibration", "train+calibration"],
        default="calibration",
        help="texts the distill variant learns from (their labels are never used)",
    )
    parser.add_argument(
        "--ablate",
        nargs="*",
        help="per-module-kind ablation of these NOLA variants at the main ratio ('best': the best one)",
    )
    parser.add_argument(
        "--sweep-methods",
        nargs="*",
        help="methods for the sweep (default: the best closed-form NOLA variant and the best peer)",
    )
    parser.add_argument("--test-limit", type=int, default=0, help="score on the first N test texts only")
    parser.add_argument("--calib-limit", type=int, default=0, help="statistics from the first N texts only")
    parser.add_argument("--stats", type=Path, default=OUT / "stats.safetensors", help="statistics cache")
    parser.add_argument("--recompute-stats", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    parser.add_argument("--out", type=Path, default=OUT / "fidelity.json")
    args = parser.parse_args()
    quiet_transformers()
    if args.threads:
        torch.set_num_threads(args.threads)

    started = time.perf_counter()
    bench = Bench(args)
    result: dict[str, Any] = {
        "git": git_state(),
        "machine": machine() | {"load_average_at_start": os.getloadavg()},
        "test_texts": len(bench.texts),
        "lora_source_bytes": bench.lora_bytes,
        "head_bytes": bench.extra_bytes,
        "source_file_bytes": bench.source_file_bytes,
        "stats_seconds": bench.stats_seconds,
        "reference_eval_seconds": round(bench.eval_seconds, 1),
    }
    took = bench.eval_seconds
    print(f"commit {result['git']}, {len(bench.texts)} test texts, reference scored in {took:.0f}s")

    rows = [bench.reference_row(), bench.head_only_row()]
    for name in args.nola:
        rows.append(bench.nola(name, args.ratio))
        print(f"{name}: agreement {rows[-1]['agreement']:.4f} ({rows[-1]['compress_seconds']}s)", flush=True)
    for name in args.peers:
        rows.append(bench.peer(name, args.ratio))
        print(f"{name}: agreement {rows[-1]['agreement']:.4f} ({rows[-1]['compress_seconds']}s)", flush=True)
    result["main"] = rows
    write_json(args.out, result)

    nola_rows = [r for r in rows if r["method"].startswith("nola")]
    peer_rows = [r for r in rows if r["method"] in PEERS]
    best_nola = max(nola_rows, key=lambda r: (r["agreement"], -r["kl"]), default=None)
    # The sweep skips distillation unless named: it costs minutes per ratio on a CPU.
    closed = [r for r in nola_rows if "distill" not in r["method"]]
    groups = (closed, peer_rows)
    best = [max(g, key=lambda r: (r["agreement"], -r["kl"]))["method"] for g in groups if g]
    sweep_methods = args.sweep_methods if args.sweep_methods is not None else best
    done = {r["method"]: r for r in rows}
    sweep = []
    for method in sweep_methods:
        for ratio in args.sweep:
            if ratio == args.ratio and method in done:
                sweep.append(done[method])
                continue
            run = bench.nola if method in NOLA_VARIANTS else bench.peer
            sweep.append(run(method, ratio))
            print(f"sweep {method} {ratio:g}x: agreement {sweep[-1]['agreement']:.4f}", flush=True)
    result["sweep"] = sweep
    write_json(args.out, result)
    ablate = args.ablate if args.ablate is not None else []
    if ablate == ["best"]:
        ablate = [best_nola["method"]] if best_nola else []
    result["ablation"] = [{"method": m, "rows": bench.ablate(m, args.ratio)} for m in ablate]
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    write_json(args.out, result)

    print(f"\n## At {args.ratio:g}x (commit {result['git']['commit']})\n")
    print(table(rows))
    print("\n## Ratio sweep\n")
    print(table(sorted(sweep, key=lambda r: (r["method"], r["target_ratio"]))))
    print("\n## Mean per-module relative error by kind (weight / output)\n")
    print(by_kind([r for r in rows if "modules" in r and r["method"] != "base + head only (no LoRA)"]))
    for ablation in result["ablation"]:
        print(f"\n## Ablation: only one module kind from {ablation['method']}\n")
        print("| kind | weight err | output err | agreement | KL |\n|---|---|---|---|---|")
        for r in ablation["rows"]:
            print(
                f"| {r['kind']} | {fmt(r['weight_rel_error'])} | {fmt(r['output_rel_error'])} "
                f"| {fmt(r['agreement'])} | {fmt(r['kl'], 4)} |"
            )
    print(f"\nwritten {args.out} in {result['total_seconds']:.0f}s")
    print(json.dumps({"machine": result["machine"]}))


if __name__ == "__main__":
    main()
