"""Speed of the NOLA codec on a LLaMA-2-7B-shaped adapter (synthetic values).

r=16 on q/k/v/o/gate/up/down of 32 layers (hidden 4096, intermediate 11008): 224 modules, 40M
parameters, 160 MB in fp32. Activation statistics are synthetic: per distinct input (attention in,
o_proj in, MLP in, down_proj in) a spectrum with a few dominant directions, stored as the top
`--stats-rank` eigenpairs plus an isotropic remainder, shared by modules that read the same input.

Prints: fit time (activation statistics, rate-distortion choice), reconstruction time with the fast
basis, the dense basis's reconstruction time beside it (measured on a few layers and scaled, since
the whole takes far longer), and Philox throughput against torch.rand on the same device.

    .venv/bin/python bench/speed/llama7b.py --device cpu

`--paired N` times the command line's `adapters reconstruct` (artifact -> PEFT directory, a fresh
process each time) against the baseline, a plain safetensors read + write of the source adapter in a
fresh process, N times each, interleaved (baseline, reconstruct, baseline, ...) so a shared machine's
load hits both alike; it prints medians, peak memory (max RSS) and their ratios. `--keep DIR` keeps the
source and the artifact there and `--artifact` reuses one (skipping the fit):

    .venv/bin/python bench/speed/llama7b.py --skip-fit --paired 5 --keep /tmp/7b
    .venv/bin/python bench/speed/llama7b.py --artifact /tmp/7b/adapter.nola --paired 5 --keep /tmp/7b
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from adapters.compress import philox
from adapters.compress.codec import reconstruct
from adapters.compress.nola import NolaCodec, NolaConfig
from adapters.compress.peft_io import SAFETENSORS_FILE, LoraCheckpoint, find_pairs, write_adapter
from adapters.compress.stats import InputStats

HIDDEN, INTER, LAYERS, RANK = 4096, 11008, 32, 16
PROJ = {
    "self_attn.q_proj": (HIDDEN, HIDDEN, "attn"),
    "self_attn.k_proj": (HIDDEN, HIDDEN, "attn"),
    "self_attn.v_proj": (HIDDEN, HIDDEN, "attn"),
    "self_attn.o_proj": (HIDDEN, HIDDEN, "o"),
    "mlp.gate_proj": (HIDDEN, INTER, "mlp"),
    "mlp.up_proj": (HIDDEN, INTER, "mlp"),
    "mlp.down_proj": (INTER, HIDDEN, "down"),
}


def synthetic_adapter(layers: int, seed: int = 0) -> LoraCheckpoint:
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(layers):
        for name, (n_in, n_out, _) in PROJ.items():
            stem = f"base_model.model.model.layers.{layer}.{name}"
            # A decaying spectrum, as trained adapters have.
            decay = torch.logspace(0, -1.5, RANK)[:, None]
            tensors[f"{stem}.lora_A.weight"] = torch.randn(RANK, n_in, generator=gen) * 0.01 * decay
            tensors[f"{stem}.lora_B.weight"] = torch.randn(n_out, RANK, generator=gen) * 0.01
    config = {
        "peft_type": "LORA",
        "r": RANK,
        "lora_alpha": 32,
        "target_modules": [n.split(".")[-1] for n in PROJ],
        "base_model_name_or_path": "meta-llama/Llama-2-7b-hf",
    }
    return LoraCheckpoint(config=config, tensors=tensors, pairs=find_pairs(config, tensors))


def synthetic_stats(layers: int, rank: int, seed: int = 1) -> dict[str, InputStats]:
    gen = torch.Generator().manual_seed(seed)
    shared: dict[tuple[int, str], InputStats] = {}
    out = {}
    for layer in range(layers):
        for name, (n_in, _, source) in PROJ.items():
            key = (layer, source)
            if key not in shared:
                q, _ = torch.linalg.qr(torch.randn(n_in, rank, generator=gen))
                eigvals = 100.0 * torch.logspace(0, -3, rank)  # a few outlier directions dominate
                shared[key] = InputStats(n_in, 4096, eigvecs=q.contiguous(), eigvals=eigvals, rest=0.01)
            out[f"model.layers.{layer}.{name}"] = shared[key]
    return out


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def fit_in_process(ckpt, stats, artifact: Path, work: Path, args, results: dict) -> None:
    """Fit and write the artifact; time the fit, an in-process reconstruction and the dense basis."""
    codec = NolaCodec(NolaConfig(ratio=args.ratio, device=args.device), stats)
    report, fit_s = timed(lambda: codec.compress(ckpt, artifact))
    results["fit_seconds"] = round(fit_s, 2)
    results["fit"] = report.params["fit"]
    results["code"] = report.params.get("code")
    results["artifact_bytes"] = report.artifact_bytes
    results["source_bytes"] = report.source_bytes
    results["ratio"] = round(report.ratio, 2)
    results["weight_rel_error"] = report.fidelity["weight_rel_error"]
    results["output_rel_error"] = report.fidelity.get("output_rel_error")
    results["bits_per_coefficient"] = report.params["bits_per_coefficient"]
    _, cold = timed(lambda: reconstruct(artifact))
    rebuilt, warm = timed(lambda: reconstruct(artifact))
    results["reconstruct_fast_seconds"] = round(warm, 3)
    results["reconstruct_fast_first_seconds"] = round(cold, 3)
    _, write_s = timed(lambda: write_adapter(rebuilt, work / "peft"))
    results["write_peft_seconds"] = round(write_s, 3)
    if not args.dense_layers:
        return
    small = synthetic_adapter(args.dense_layers)
    dense_art = work / "dense.nola"
    # The rate-distortion search is out of reach for dense bases this wide: a fixed k and format.
    dense_config = NolaConfig(basis="dense", device=args.device, bits="int8", k_fraction=0.2)
    NolaCodec(dense_config).compress(small, dense_art)
    _, dense_s = timed(lambda: reconstruct(dense_art))
    measured = {"layers": args.dense_layers, "seconds": round(dense_s, 2)}
    results["reconstruct_dense_seconds_measured"] = measured
    results["reconstruct_dense_seconds_scaled"] = round(dense_s * args.layers / args.dense_layers, 1)


BASELINE = (
    "import sys; from safetensors.torch import load_file, save_file; "
    "save_file(load_file(sys.argv[1]), sys.argv[2])"
)


# Run in each child: its peak RSS (VmHWM of its own address space; ru_maxrss would include the
# parent's, which a spawned child inherits) goes to the file named by PEAK_FILE at exit.
PEAK = (
    "import atexit, os; atexit.register(lambda: open(os.environ['PEAK_FILE'], 'w')"
    ".write(open('/proc/self/status').read()))\n"
)


def run_measured(code: str, args: list[str], work: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of one child process running `code` with `args`."""
    peak_file = work / "peak.txt"
    env = {**os.environ, "PEAK_FILE": str(peak_file)}
    start = time.perf_counter()
    cmd = [sys.executable, "-c", PEAK + code, *args]
    done = subprocess.run(cmd, check=False, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"failed: {code} {' '.join(args)}")
    line = next(x for x in peak_file.read_text().splitlines() if x.startswith("VmHWM:"))
    return wall, int(line.split()[1]) / 1024  # kB


def paired(source_dir: Path, artifact: Path, rounds: int, work: Path) -> dict:
    """`adapters reconstruct` against a plain safetensors read + write, interleaved."""
    cli = "import sys; sys.argv[0] = 'adapters'; from adapters.cli import main; main()"
    src = str(source_dir / SAFETENSORS_FILE)
    times: dict[str, list[tuple[float, float]]] = {"baseline": [], "reconstruct": []}
    loads = [os.getloadavg()[0]]
    for _ in range(rounds):
        times["baseline"].append(run_measured(BASELINE, [src, str(work / "copy.st")], work))
        rebuild = ["reconstruct", str(artifact), "-o", str(work / "rebuilt"), "--force"]
        times["reconstruct"].append(run_measured(cli, rebuild, work))
        loads.append(os.getloadavg()[0])
    shutil.rmtree(work / "rebuilt", ignore_errors=True)
    result = {}
    for name, runs in times.items():
        result[name] = {
            "seconds_median": round(statistics.median(w for w, _ in runs), 3),
            "seconds": [round(w, 3) for w, _ in runs],
            "peak_mib_median": round(statistics.median(m for _, m in runs), 1),
        }
    base, rec = result["baseline"], result["reconstruct"]
    result["time_ratio"] = round(rec["seconds_median"] / base["seconds_median"], 2)
    # Per round too: the pairs share the load of their moment.
    result["time_ratio_per_round"] = [
        round(r[0] / b[0], 2) for b, r in zip(times["baseline"], times["reconstruct"])
    ]
    result["peak_ratio"] = round(rec["peak_mib_median"] / base["peak_mib_median"], 2)
    result["load_average_1min"] = [round(x, 1) for x in loads]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--layers", type=int, default=LAYERS)
    parser.add_argument("--ratio", type=float, default=20.0)
    parser.add_argument("--stats-rank", type=int, default=128)
    parser.add_argument("--dense-layers", type=int, default=1, help="layers to time the dense basis on")
    parser.add_argument("--skip-fit", action="store_true", help="weight fit only (no statistics)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--paired", type=int, default=0, help="rounds of reconstruct vs the baseline")
    parser.add_argument("--keep", type=Path, help="keep the source and the artifact in this directory")
    parser.add_argument("--artifact", type=Path, help="reuse this artifact (no fit, no dense timing)")
    args = parser.parse_args()
    device = torch.device(args.device)
    results: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "layers": args.layers,
    }
    results["load_average_1min_start"] = round(os.getloadavg()[0], 1)
    ckpt = synthetic_adapter(args.layers)
    results["lora_params"] = sum(t.numel() for t in ckpt.tensors.values())
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        source_dir = write_adapter(ckpt, work / "source")
        artifact = args.artifact or work / "adapter.nola"
        if args.artifact is None:
            stats = None if args.skip_fit else synthetic_stats(args.layers, args.stats_rank)
            fit_in_process(ckpt, stats, artifact, work, args, results)
        if args.paired:
            del ckpt
            results["paired"] = paired(source_dir, artifact, args.paired, work)
    results["load_average_1min_end"] = round(os.getloadavg()[0], 1)

    if args.paired or args.artifact:  # the Philox timing belongs to the full run only
        print(json.dumps(results, indent=2))
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
        return
    n = 1 << 24
    _, philox_s = timed(lambda: philox.uniform((1, 2), 0, n, device=device).sum().item())
    _, rand_s = timed(lambda: torch.rand(n, device=device).sum().item())
    results["philox_vs_torch_rand"] = {
        "numbers": n,
        "philox_s": round(philox_s, 4),
        "torch_rand_s": round(rand_s, 4),
        "slowdown": round(philox_s / rand_s, 1),
    }
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
