"""Post-hoc LoRA compression peers, at a byte budget for the LoRA factors.

Every peer returns a full PEFT tensor dict (same keys and shapes as the source, so the result loads as
an ordinary LoRA adapter), the bytes its stored form would take, and the settings it chose. Tensors that
are not LoRA factors (here the classifier head from `modules_to_save`) are kept exactly and counted
apart, as NOLA counts them. Peers use no data: each picks its free setting (bits, rank, density, group
size) by the least energy-weighted weight-space error of delta-W, sum_m ||dW_m - dW^_m||^2 /
sum_m ||dW_m||^2 with dW = scale * B A, among the settings that fit the budget.

  svd        truncated SVD of each module's delta-W, U sqrt(S) and sqrt(S) V^T stored with group-
             quantized entries (one bit width for all modules); ranks allocated across modules greedily
             by singular value energy per byte.
  svd-act    the same with the SVD taken in the metric of the module's input second moments
             C = E[x x^T] (calibration statistics): the truncated SVD of dW C^(1/2), i.e. the best rank-k
             approximation of the module's outputs; bits chosen by output error. The one peer that
             uses data, for comparison with NOLA's activation-aware fit.
  compeft    ComPEFT-style on the LoRA *factors* A and B (not on the dense delta-W, which would leave
             the adapter's low-rank form): keep the top-d fraction of entries by magnitude in each
             factor, store their signs and one scale per factor (the L2-optimal mean |x| of the kept
             entries). Size counted as an ideal entropy coder of the ternary mask would take:
             (H(d) + d) bits per entry, plus a 4-byte scale per factor; one d for the whole adapter.
  quant      group-quantized A and B^T directly (groups run along in_features for A and out_features
             for B), one format and group size for the whole adapter; formats int8 ... int2,
             ternary (1.6 bits, 5 codes per byte) and sign (1 bit), fp16 scales per group.

  transform  the plain transform code (no rotation, no per-component steps): the SVD of each module's
             delta-W, factors U sqrt(S) and sqrt(S) V^T, ONE uniform quantizer step shared by every
             module and factor (weak components round to zero), the integers of each factor of each
             module coded at their empirical entropy (an ideal static code) plus 2 bytes per distinct
             integer for its table; the step is bisected to the budget.

Every stored form also pays 4 bytes per module for its record (rank / format / exponent).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from adapters.compress.peft_io import LoraCheckpoint, LoraPair

RECORD_BYTES = 4  # per module: the rank / format / exponent a reader needs
# name -> (largest code, bits per code); codes are the integers -m..m, except int2 (+-0.5, +-1.5, no
# zero) and sign (+-1 times the group's mean |x|)
LEVELS: dict[str, tuple[float, float]] = {
    "int8": (127, 8),
    "int6": (31, 6),
    "int5": (15, 5),
    "int4": (7, 4),
    "int3": (3, 3),
    "int2": (1.5, 2),
    "ternary": (1, 1.6),
    "sign": (1, 1),
}
_CLIP = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.42, 0.35, 0.28, 0.22)


@dataclass
class PeerResult:
    method: str
    tensors: dict[str, torch.Tensor]
    lora_bytes: int  # bytes of the stored LoRA part
    settings: dict[str, Any] = field(default_factory=dict)


def quantized_bytes(rows: int, n: int, fmt: str, group_size: int) -> int:
    """Codes plus fp16 group scales for a [rows, n] matrix grouped along n."""
    groups = math.ceil(n / group_size)
    return math.ceil(rows * n * LEVELS[fmt][1] / 8) + 2 * rows * groups


def group_quantize(x: torch.Tensor, fmt: str, group_size: int) -> torch.Tensor:
    """Dequantized values of x [rows, n] after symmetric group quantization (MSE-searched clipping)."""
    rows, n = x.shape
    x = x.double()
    pad = -n % group_size
    g = torch.nn.functional.pad(x, (0, pad)).reshape(rows, -1, group_size)  # [rows, groups, size]
    top = LEVELS[fmt][0]
    peak = g.abs().amax(-1, keepdim=True)  # [rows, groups, 1]
    # fp16 scales relative to one power of two per tensor (in the module record), so none underflows
    unit = 2.0 ** math.floor(math.log2(max(float(peak.max()), 1e-30)))
    if fmt == "sign":  # the L2-optimal scale of sign(x) is mean |x|
        width = torch.full_like(peak, group_size)
        if pad:
            width[:, -1] = group_size - pad
        out = torch.sign(g) * (g.abs().sum(-1, keepdim=True) / width / unit).half().double() * unit
        return out.reshape(rows, -1)[:, :n].to(x.dtype)
    best, best_err = None, None
    for frac in _CLIP:
        scale = (peak * frac / top / unit).half().double() * unit  # as stored
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        if fmt == "int2":  # mid-rise: nearest of +-0.5, +-1.5
            q = (torch.floor(g / safe) + 0.5).clamp(-top, top) * scale
        else:
            q = torch.round(g / safe).clamp(-top, top) * scale
        err = ((q - g) ** 2).sum(-1, keepdim=True)
        if best is None:
            best, best_err = q, err
        else:
            better = err < best_err
            best = torch.where(better, q, best)
            best_err = torch.minimum(err, best_err)
    return best.reshape(rows, -1)[:, :n]


def _delta_norms(ckpt: LoraCheckpoint, pair: LoraPair) -> float:
    a, b = ckpt.tensors[pair.a_key].double(), ckpt.tensors[pair.b_key].double()
    return pair.scale**2 * float(((b.T @ b) * (a @ a.T)).sum())


def weight_error(
    ckpt: LoraCheckpoint, tensors: dict[str, torch.Tensor], metrics: dict[str, torch.Tensor] | None = None
) -> float:
    """Energy-weighted relative error of delta-W over all LoRA modules (in the metric C of each
    module's inputs when `metrics` maps modules to C [in, in]: the output error)."""
    err = total = 0.0
    for p in ckpt.pairs:
        a, b = ckpt.tensors[p.a_key].double(), ckpt.tensors[p.b_key].double()
        ah, bh = tensors[p.a_key].double(), tensors[p.b_key].double()
        big = torch.cat([b, -bh], 1)  # [out, 2r]
        small = torch.cat([a, ah], 0)  # [2r, in]
        c = metrics[p.module] if metrics else None
        gram = small @ (small.T if c is None else c @ small.T)  # [2r, 2r]
        err += p.scale**2 * float(((big.T @ big) * gram).sum())
        gram = a @ (a.T if c is None else c @ a.T)
        total += p.scale**2 * float(((b.T @ b) * gram).sum())
    return math.sqrt(max(err, 0.0) / total)


def _with(ckpt: LoraCheckpoint, factors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = dict(ckpt.tensors)
    for key, value in factors.items():
        out[key] = value.to(ckpt.tensors[key].dtype).contiguous()
    return out


def lora_source_bytes(ckpt: LoraCheckpoint) -> int:
    return sum(
        ckpt.tensors[k].numel() * ckpt.tensors[k].element_size()
        for p in ckpt.pairs
        for k in (p.a_key, p.b_key)
    )


# --- (a) truncated SVD with low-bit factors --------------------------------------------------------------


def _svd(
    ckpt: LoraCheckpoint, pair: LoraPair, chol: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """delta-W L = U diag(S) V^T from the factors (L = I, or C = L L^T): U [out, r], S [r], and
    V^T L^-1 transposed [in, r], so that delta-W ~ U diag(S) (V^T L^-1) for any truncation."""
    a, b = ckpt.tensors[pair.a_key].double(), ckpt.tensors[pair.b_key].double()
    al = a if chol is None else a @ chol  # [r, in]
    qb, rb = torch.linalg.qr(b)  # [out, r], [r, r]
    qa, ra = torch.linalg.qr(al.T)  # [in, r], [r, r]
    u, s, vh = torch.linalg.svd(pair.scale * rb @ ra.T)
    v = qa @ vh.T  # [in, r]
    if chol is not None:
        v = torch.linalg.solve_triangular(chol.T, v, upper=True)  # L^-T V: [in, r]
    return qb @ u, s, v


def metrics_from_stats(ckpt: LoraCheckpoint, stats: dict, damp: float = 0.01) -> dict[str, torch.Tensor]:
    """C + damp * mean(diag C) * I per module, from `adapters.compress.stats.InputStats`."""
    out = {}
    for p in ckpt.pairs:
        c = stats[p.module].dense()
        out[p.module] = c + damp * float(c.diagonal().mean()) * torch.eye(c.shape[0], dtype=c.dtype)
    return out


def svd_peer(
    ckpt: LoraCheckpoint, budget: int, group_size: int = 64, stats: dict | None = None
) -> PeerResult:
    """Best over bit widths of: greedy rank allocation by s^2 per byte, then quantized factors."""
    metrics = metrics_from_stats(ckpt, stats) if stats else None
    chols = {m: torch.linalg.cholesky(c) for m, c in metrics.items()} if metrics else {}
    decomp = {p.module: _svd(ckpt, p, chols.get(p.module)) for p in ckpt.pairs}
    best: PeerResult | None = None
    for fmt in ("int8", "int6", "int5", "int4", "int3", "int2"):
        cost = {
            p.module: quantized_bytes(1, p.in_features, fmt, group_size)
            + quantized_bytes(1, p.out_features, fmt, group_size)
            for p in ckpt.pairs
        }
        left = budget - RECORD_BYTES * len(ckpt.pairs)
        # Components in order of energy per byte; take each while it fits (ranks grow in order).
        comps = sorted(
            (
                (float(decomp[p.module][1][j] ** 2) / cost[p.module], j, p.module)
                for p in ckpt.pairs
                for j in range(p.rank)
            ),
            reverse=True,
        )
        ranks = dict.fromkeys(decomp, 0)
        for _, j, module in comps:
            if j == ranks[module] and cost[module] <= left:
                ranks[module] += 1
                left -= cost[module]
        factors, used = {}, budget - left
        for p in ckpt.pairs:
            u, s, v = decomp[p.module]
            k = ranks[p.module]
            root = s[:k].sqrt()
            a_hat = torch.zeros(p.rank, p.in_features, dtype=torch.float64)
            b_hat = torch.zeros(p.out_features, p.rank, dtype=torch.float64)
            if k:
                a_hat[:k] = group_quantize((v[:, :k] * root).T, fmt, group_size)  # [k, in]
                b_hat[:, :k] = group_quantize((u[:, :k] * root).T, fmt, group_size).T  # [out, k]
            factors[p.a_key], factors[p.b_key] = a_hat, b_hat / p.scale
        tensors = _with(ckpt, factors)
        err = weight_error(ckpt, tensors, metrics)
        settings = {
            "format": fmt,
            "group_size": group_size,
            "mean_rank": round(sum(ranks.values()) / len(ranks), 2),
            "ranks": ranks,
            "output_rel_error" if metrics else "weight_rel_error": round(err, 5),
        }
        if best is None or err < best.settings["output_rel_error" if metrics else "weight_rel_error"]:
            best = PeerResult("svd-act" if metrics else "svd", tensors, used, settings)
    assert best is not None
    return best


# --- (b) ComPEFT-style sparse ternary on A and B ---------------------------------------------------------


def entropy_bits(d: float) -> float:
    """Bits per entry of an ideal code for a ternary mask with density d: H(d) + d (sign)."""
    if d <= 0 or d >= 1:
        return 1.0 if d >= 1 else 0.0
    return -(d * math.log2(d) + (1 - d) * math.log2(1 - d)) + d


def svd_act_peer(ckpt: LoraCheckpoint, budget: int, stats: dict | None = None) -> PeerResult:
    if not stats:
        raise ValueError("svd-act needs input statistics")
    return svd_peer(ckpt, budget, stats=stats)


def compeft_peer(ckpt: LoraCheckpoint, budget: int, stats: dict | None = None) -> PeerResult:
    entries = sum(ckpt.tensors[k].numel() for p in ckpt.pairs for k in (p.a_key, p.b_key))
    overhead = RECORD_BYTES * len(ckpt.pairs) + 2 * 4 * len(ckpt.pairs)  # records + one fp32 scale per factor
    best: PeerResult | None = None
    for d in (0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0):
        used = math.ceil(entries * entropy_bits(d) / 8) + overhead
        if used > budget:
            continue
        factors = {}
        for p in ckpt.pairs:
            for key in (p.a_key, p.b_key):
                x = ckpt.tensors[key].double()
                keep = max(1, round(d * x.numel()))
                threshold = x.abs().flatten().kthvalue(x.numel() - keep + 1).values
                mask = x.abs() >= threshold
                scale = float(x.abs()[mask].mean())  # stored as fp32 (counted as 4 bytes)
                factors[key] = torch.sign(x) * mask * scale
        tensors = _with(ckpt, factors)
        err = weight_error(ckpt, tensors)
        settings = {
            "density": d,
            "bits_per_entry": round(entropy_bits(d), 4),
            "weight_rel_error": round(err, 5),
        }
        if best is None or err < best.settings["weight_rel_error"]:
            best = PeerResult("compeft", tensors, used, settings)
    if best is None:
        raise ValueError(f"no ComPEFT density fits {budget} bytes")
    return best


# --- (c) group-quantized A and B -------------------------------------------------------------------------


def quant_peer(ckpt: LoraCheckpoint, budget: int, stats: dict | None = None) -> PeerResult:
    best: PeerResult | None = None
    for fmt in ("int8", "int6", "int5", "int4", "int3", "int2", "ternary", "sign"):
        for group_size in (32, 64, 128, 256):
            used = RECORD_BYTES * len(ckpt.pairs) + sum(
                quantized_bytes(p.rank, p.in_features, fmt, group_size)
                + quantized_bytes(p.rank, p.out_features, fmt, group_size)
                for p in ckpt.pairs
            )
            if used > budget:
                continue
            factors = {}
            for p in ckpt.pairs:
                factors[p.a_key] = group_quantize(ckpt.tensors[p.a_key], fmt, group_size)
                factors[p.b_key] = group_quantize(ckpt.tensors[p.b_key].T, fmt, group_size).T
            tensors = _with(ckpt, factors)
            err = weight_error(ckpt, tensors)
            settings = {"format": fmt, "group_size": group_size, "weight_rel_error": round(err, 5)}
            if best is None or err < best.settings["weight_rel_error"]:
                best = PeerResult("quant", tensors, used, settings)
    if best is None:
        raise ValueError(f"no quantization format fits {budget} bytes")
    return best


# --- (e) the plain transform code -----------------------------------------------------------------------


def entropy_coded_bytes(q: torch.Tensor) -> int:
    """Bytes of an ideal static code of the integers q at their empirical distribution, with a table
    of 2 bytes per distinct value (nothing when every integer is 0)."""
    if not bool(q.any()):
        return 0
    values, counts = torch.unique(q, return_counts=True)
    p = counts.double() / q.numel()
    bits = float(-(counts.double() * p.log2()).sum())
    return math.ceil(bits / 8) + 2 * len(values)


def transform_peer(ckpt: LoraCheckpoint, budget: int, stats: dict | None = None) -> PeerResult:
    """The plain transform code at the smallest shared step whose bytes fit `budget`."""
    factors = []
    for p in ckpt.pairs:
        u, s, v = _svd(ckpt, p)  # delta-W (scale included) = U diag(S) V^T
        root = s.sqrt()
        factors.append((p, (u * root).T.contiguous(), (v * root).T.contiguous()))  # [r, out], [r, in]

    def code(step: float) -> tuple[int, dict[str, torch.Tensor]]:
        used, out = RECORD_BYTES * len(factors), {}
        for p, b, a in factors:
            qb, qa = torch.round(b / step), torch.round(a / step)
            used += entropy_coded_bytes(qb) + entropy_coded_bytes(qa)
            out[p.a_key] = qa * step
            out[p.b_key] = (qb * step).T / p.scale
        return used, out

    peak = max(float(t.abs().max()) for _, b, a in factors for t in (a, b))
    lo, hi = math.log2(peak) - 30, math.log2(peak) + 2
    best = code(2.0**hi)
    for _ in range(40):
        mid = (lo + hi) / 2
        trial = code(2.0**mid)
        if trial[0] <= budget:
            best, hi = trial, mid
        else:
            lo = mid
        if hi - lo < 1e-3:
            break
    used, out = best
    tensors = _with(ckpt, out)
    settings = {"step": 2.0**hi, "weight_rel_error": round(weight_error(ckpt, tensors), 5)}
    return PeerResult("transform", tensors, used, settings)


# Every peer: (checkpoint, byte budget, input statistics or None) -> result; only svd-act uses statistics.
PEERS: dict[str, Callable[[LoraCheckpoint, int, dict | None], PeerResult]] = {
    "svd": lambda ckpt, budget, stats=None: svd_peer(ckpt, budget),
    "svd-act": svd_act_peer,
    "compeft": compeft_peer,
    "quant": quant_peer,
    "transform": transform_peer,
}


def main() -> None:
    from pathlib import Path

    from common import ADAPTER, OUT

    from adapters.compress.peft_io import read_adapter
    from adapters.compress.stats import load_stats

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--adapter", default=str(ADAPTER), help="PEFT adapter dir (default: %(default)s)")
    parser.add_argument("--ratio", type=float, nargs="+", default=[5, 10, 20, 40])
    parser.add_argument("--stats", default=str(OUT / "stats.safetensors"), help="input statistics (run.py)")
    args = parser.parse_args()
    ckpt = read_adapter(args.adapter)
    stats = load_stats(args.stats) if Path(args.stats).is_file() else None
    source = lora_source_bytes(ckpt)
    print(f"{len(ckpt.pairs)} LoRA modules, {source} bytes of fp32 factors")
    for ratio in args.ratio:
        budget = int(source / ratio)
        for name, peer in PEERS.items():
            try:
                res = peer(ckpt, budget, stats)
            except ValueError as exc:
                print(f"{ratio:>4}x {name:8s} {exc}")
                continue
            shown = {k: v for k, v in res.settings.items() if k != "ranks"}
            print(f"{ratio:>4}x {name:8s} {res.lora_bytes:7d} B ({source / res.lora_bytes:5.1f}x) {shown}")


if __name__ == "__main__":
    main()
