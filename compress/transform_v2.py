"""The format-2 reader of the transform code: integers under a quantized-Gaussian model per symbol,
factors rebuilt in float64 (transform.py's format-3 reader replaced it; kept so old artifacts read
back to the very same tensors)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch

from .peft_io import LoraPair
from .transform import MAX_BOUND, _a_steps, _ans, _expand, _multiplier, _side_model, _side_values

MODEL = "quantized-gaussian"  # the header's name for this coefficient model
STD_ZERO, STD_STEPS = 64, 16


def _spread(code: int) -> float:
    return 2.0 ** ((code - STD_ZERO) / STD_STEPS)


def decode(
    pairs: Sequence[LoraPair],
    scales: Sequence[float],
    step: float,
    bound: int,
    codes: bytes,
    seed: int,
    device: torch.device,
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], str]:
    """Every module's (A [r, in], B [out, r]) in float64, and the digest of all the bases used.
    ValueError when the stream does not match the modules."""
    if not codes or len(codes) % 4 or not step > 0 or not 1 <= bound <= MAX_BOUND:
        raise ValueError("the coefficient stream does not match the module list")
    words = np.frombuffer(codes, dtype="<u4").astype(np.uint32)
    cs = _ans()
    model = cs.stream.model.QuantizedGaussian(-bound, bound)
    coder = cs.stream.stack.AnsCoder(words)
    ranks = [p.rank for p in pairs]
    side = coder.decode(_side_model(), len(pairs) + sum(ranks)).astype(np.int64)
    weights, spreads = _side_values(side, ranks)
    b_rows, a_rows, at = [], [], 0
    for p, w in zip(pairs, weights):
        codes_p = spreads[at : at + p.rank].tolist()
        at += p.rank
        kept = [j for j, c in enumerate(codes_p) if c]
        qb = np.zeros((p.rank, p.out_features))
        qa = np.zeros((p.rank, p.in_features))
        if kept:
            std_b = np.repeat([_spread(codes_p[j]) for j in kept], p.out_features)
            ints_b = coder.decode(model, np.zeros_like(std_b), std_b).astype(np.int64)
            ints_b = ints_b.reshape(len(kept), p.out_features)
            sums = (ints_b * ints_b).sum(1)
            if not sums.all():
                raise ValueError("a kept component decodes to zero")
            std_a = np.repeat(np.sqrt(sums / p.in_features), p.in_features)
            ints_a = coder.decode(model, np.zeros_like(std_a), std_a).astype(np.int64)
            qb[kept] = ints_b * (step * _multiplier(w))
            qa[kept] = ints_a.reshape(len(kept), p.in_features) * _a_steps(sums)[:, None]
        b_rows.append(torch.from_numpy(qb))
        a_rows.append(torch.from_numpy(qa))
    if not coder.is_empty():
        raise ValueError("the coefficient stream is longer than its modules need")
    digests: list[str] = []
    b_full = _expand(b_rows, pairs, "B", seed, device, digests)
    a_full = _expand(a_rows, pairs, "A", seed, device, digests)
    out = []
    for s, a, b in zip(scales, a_full, b_full):
        norms = b.norm(dim=1)  # s^_j: the decoded column norms (rows of b here)
        g = (norms / s).sqrt()
        safe = torch.where(g > 0, g, torch.ones_like(g))
        out.append(((a * g[:, None]), (b / (s * safe)[:, None]).T.contiguous()))
    return out, hashlib.sha256("".join(sorted(digests)).encode()).hexdigest()[:16]
