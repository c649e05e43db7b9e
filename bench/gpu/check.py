"""GPU check: bases bit-exact CPU == device, and the codec's speed on the 7B-shaped adapter.

1. Bit-exactness: the fast basis's random signs, permutations and both rotations (float32 and
   float64), and the factors decoded from a transform-code artifact, on the CPU and on the device:
   every tensor must be equal bit for bit (torch.equal), or the script exits non-zero.
2. Timings on the device: the weight fit (transform code, `--ratio`), the reconstruction, and a few
   distillation steps on a randomly initialised Llama of 7B width (`--distill-layers` layers; no
   7B weights are needed to time the steps).

Under 8 minutes on one GPU at full size. `--quick` uses small sizes so it runs on a CPU in seconds
(the tests run it that way, with --device cpu, which then checks CPU against itself):

    .venv/bin/python bench/gpu/check.py                      # cuda, full size
    .venv/bin/python bench/gpu/check.py --quick --device cpu # the same code paths, small
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "speed"))
from llama7b import PROJ, synthetic_adapter

from adapters.compress import artifact as artifact_io
from adapters.compress import stfile
from adapters.compress.bases import FastBasis, basis_key
from adapters.compress.codec import reconstruct
from adapters.compress.distill import DistillConfig
from adapters.compress.nola import NolaCodec, NolaConfig
from adapters.compress.peft_io import read_adapter

FULL = {
    "widths": (4096, 11008),
    "layers": 32,
    "distill_hidden": 4096,
    "distill_inter": 11008,
    "distill_ratio": 20,
}
QUICK = {"widths": (64, 100), "layers": 1, "distill_hidden": 32, "distill_inter": 64, "distill_ratio": 2}


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, round(time.perf_counter() - start, 3)


def check_bases(device: torch.device, widths, modules: int = 4) -> dict:
    """Signs, permutations and both rotations of the fast basis, CPU against `device`."""
    out = {}
    for n in widths:
        keys = [basis_key(7, f"layers.{i}.q_proj", "A") for i in range(modules)]
        ks = [max(1, n // (i + 2)) for i in range(modules)]
        for dtype in (torch.float32, torch.float64):
            cpu = FastBasis(n, ks, keys, "cpu", dtype)
            dev = FastBasis(n, ks, keys, device, dtype)
            gen = torch.Generator().manual_seed(n)
            x = torch.randn(modules, 3, n, generator=gen, dtype=dtype)
            c = torch.randn(modules, 3, max(ks), generator=gen, dtype=dtype)
            same = {
                "signs": torch.equal(cpu.d1, dev.d1.cpu()) and torch.equal(cpu.d2, dev.d2.cpu()),
                "digests": cpu.digests() == dev.digests(),
                "rotate_t": torch.equal(cpu.rotate_t(x), dev.rotate_t(x.to(device)).cpu()),
                "expand": torch.equal(cpu.expand(c), dev.expand(c.to(device)).cpu()),
            }
            out[f"n={n} {str(dtype).removeprefix('torch.')}"] = same
    return out


def check_decoded(path: Path, device: torch.device) -> bool:
    """The factors of a transform-code artifact decoded on the CPU and on `device`, bit for bit."""
    tensors, metadata = stfile.load(path)
    on_cpu = artifact_io.decode(tensors, metadata, torch.device("cpu"))
    on_dev = artifact_io.decode(tensors, metadata, device)
    return sorted(on_cpu) == sorted(on_dev) and all(torch.equal(on_cpu[k], on_dev[k].cpu()) for k in on_cpu)


def save_llama(out: Path, hidden: int, inter: int, layers: int) -> Path:
    """A randomly initialised Llama of the given width, with a character tokenizer, saved offline."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    heads = max(1, hidden // 128)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=256,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    vocab = {tok: i for i, tok in enumerate(["<unk>", "<pad>", "<s>", "</s>"])}
    vocab.update({chr(c): len(vocab) + i for i, c in enumerate(range(32, 127))})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    ).save_pretrained(out)
    return out


def time_distill(tmp: Path, device: str, sizes: dict, layers: int, steps: int) -> dict:
    """A few distillation steps of a rank-16 LoRA on every projection of a random Llama."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    base = save_llama(tmp / "base", sizes["distill_hidden"], sizes["distill_inter"], layers)
    model = LlamaForCausalLM.from_pretrained(base)
    lora = LoraConfig(r=16, lora_alpha=32, target_modules=[n.split(".")[-1] for n in PROJ])
    lora.init_lora_weights = False
    peft_model = get_peft_model(model, lora)
    peft_model.save_pretrained(tmp / "adapter")
    del peft_model, model
    ckpt = read_adapter(tmp / "adapter")
    texts = [f"the adapter registry stores version {i} of the task, compressed." for i in range(64)]
    cfg = DistillConfig(steps=steps, eval_every=steps)
    codec = NolaCodec(
        NolaConfig(ratio=sizes["distill_ratio"], fit="distill", device=device), base_model=base, texts=texts
    )
    codec.distill = cfg
    report, seconds = timed(lambda: codec.compress(ckpt, tmp / "distilled.nola"))
    notes = report.fidelity.get("distill") or report.params.get("distill") or {}
    return {"layers": layers, "steps": steps, "seconds_total": seconds, "notes": notes}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes (runs on a CPU in seconds)")
    parser.add_argument("--ratio", type=float, default=20.0)
    parser.add_argument("--distill-layers", type=int, default=2)
    parser.add_argument("--distill-steps", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    device = torch.device(args.device)
    sizes = QUICK if args.quick else FULL
    results: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "quick": args.quick,
    }
    results["bases_bit_exact"] = check_bases(device, sizes["widths"])
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        ckpt = synthetic_adapter(sizes["layers"])
        path = tmp / "adapter.nola"
        codec = NolaCodec(NolaConfig(ratio=args.ratio, fit="weight", device=args.device))
        report, results["fit_seconds"] = timed(lambda: codec.compress(ckpt, path))
        results["fit"] = {"code": report.params.get("code"), "ratio": round(report.ratio, 2)}
        results["decoded_factors_bit_exact"] = check_decoded(path, device)
        _, results["reconstruct_seconds"] = timed(lambda: reconstruct(path))
        results["distill"] = time_distill(tmp, args.device, sizes, args.distill_layers, args.distill_steps)
    exact = all(all(v.values()) for v in results["bases_bit_exact"].values())
    results["bit_exact"] = exact and results["decoded_factors_bit_exact"]
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if not results["bit_exact"]:
        raise SystemExit("CPU and device results differ")


if __name__ == "__main__":
    main()
