"""The format-3 reader of the transform code (transform.py): integers read column by column under the
tabulated models (transform_entropy.py), scaled as the factors need (the balance g folded into the
coefficients), rotated back by the seeded bases in float32, and stored in each factor's dtype.

Modules are rebuilt a window at a time as the stream is read: the ANS decoder holds the GIL, the
rotations run in torch without it, so one window is rotated in a second thread while the next is
read. Each row's arithmetic is its own, so any windowing gives the same bits.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext

import numpy as np
import torch

from .peft_io import LoraPair
from .transform import (
    MAX_BOUND,
    _a_steps,
    _ans,
    _by_size,
    _multiplier,
    _rotations,
    _side_model,
    _side_values,
    _stack,
    one_torch_thread,
)
from .transform_entropy import Models, spread_codes

# Consecutive modules holding about this many numbers make a window.
DECODE_ELEMENTS = 1 << 21


def decode(
    pairs: Sequence[LoraPair],
    scales: Sequence[float],
    step: float,
    bound: int,
    codes: bytes,
    seed: int,
    device: torch.device,
    dtypes: Sequence[tuple[torch.dtype, torch.dtype]] | None = None,
    sink: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], str]:
    """Every module's (A [r, in], B [out, r]) in its (A, B) dtypes (default float32), and the digest of
    all the bases used. Modules are rebuilt a few at a time as the stream is read, so the working
    copies stay small. With a `sink`, each module goes to sink(index, A, B) as soon as its window is
    rebuilt (on the rotating thread, one window after another, modules in order) and is not kept: the
    list returned then holds None. ValueError when the stream does not match the modules."""
    if not codes or len(codes) % 4 or not step > 0 or not 1 <= bound <= MAX_BOUND:
        raise ValueError("the coefficient stream does not match the module list")
    dtypes = dtypes or [(torch.float32, torch.float32)] * len(pairs)
    coder = _ans().stream.stack.AnsCoder(np.frombuffer(codes, dtype="<u4").astype(np.uint32))
    models = Models(bound)
    ranks = [p.rank for p in pairs]
    side = coder.decode(_side_model(), len(pairs) + sum(ranks)).astype(np.int64)
    weights, spreads = _side_values(side, ranks)
    out: list = [None] * len(pairs)
    digests: list[str] = []
    window: list[tuple[int, np.ndarray, np.ndarray]] = []
    held, at = 0, 0
    # The ANS decoder holds the GIL, the rotations mostly run in torch without it: one window is
    # rotated in a second thread while the next is read (each window's result is independent of it).
    threads = one_torch_thread() if torch.device(device).type == "cpu" else nullcontext()
    with threads, ThreadPoolExecutor(1) as pool:
        pending = []
        for i, (p, w) in enumerate(zip(pairs, weights)):
            b_step = step * _multiplier(w)
            a, b = _read_module(coder, models, p, spreads[at : at + p.rank], b_step, scales[i])
            at += p.rank
            window.append((i, a, b))
            held += a.size + b.size
            if held >= DECODE_ELEMENTS or i == len(pairs) - 1:
                if len(pending) > 1:  # at most two windows in flight: bounded memory
                    pending.pop(0).result()
                pending.append(pool.submit(_rebuild, window, pairs, dtypes, seed, device, out, digests, sink))
                window, held = [], 0
        for job in pending:
            job.result()
    if not coder.is_empty():
        raise ValueError("the coefficient stream is longer than its modules need")
    return out, hashlib.sha256("".join(sorted(digests)).encode()).hexdigest()[:16]


def _read_module(coder, models: Models, p: LoraPair, codes: np.ndarray, b_step: float, scale: float):
    """One module's rotated rows of A [r, in] and B^T [r, out] as float32, each scaled as the factor
    needs (B'' / (scale g), g A''; see the module docstring), read from the stream."""
    a = np.zeros((p.rank, p.in_features), dtype=np.float32)
    b = np.zeros((p.rank, p.out_features), dtype=np.float32)
    kept = np.flatnonzero(codes)
    if not kept.size:
        return a, b
    bound = models.bound
    qb = np.stack([coder.decode(models[c], p.out_features) for c in codes[kept].tolist()]).astype(np.int64)
    qb -= bound
    sums = (qb * qb).sum(1)
    if not sums.all() or scale == 0:
        raise ValueError("a kept component decodes to zero")
    a_codes = spread_codes(sums, p.in_features).tolist()
    qa = np.stack([coder.decode(models[c], p.in_features) for c in a_codes]).astype(np.int64) - bound
    g = np.sqrt(b_step * np.sqrt(sums) / abs(scale))  # from s^_j = b_step sqrt(sum q_j^2), exactly
    b[kept] = qb * (b_step / (scale * g))[:, None]
    a[kept] = qa * (_a_steps(sums) * g)[:, None]
    return a, b


def _rebuild(window, pairs, dtypes, seed, device, out: list, digests: list[str], sink=None) -> None:
    """Rotate a window's rows back by their bases (float32: the seeded bases are exact signs and
    permutations, the rest fixed IEEE operations) and store each factor in its dtype (or hand it to
    `sink`)."""
    for side in ("B", "A"):
        rows = {i: (b if side == "B" else a) for i, a, b in window}
        sub_pairs = [pairs[i] for i in rows]
        index = list(rows)
        for n, members in sorted(_by_size(sub_pairs, side).items()):
            group = [sub_pairs[j] for j in members]
            for start, stop, basis in _rotations(n, group, side, seed, device, torch.float32):
                idx = [index[j] for j in members[start:stop]]
                digests += [f"{side}{pairs[i].module}:{d}" for i, d in zip(idx, basis.digests())]
                x = _stack([torch.from_numpy(rows[i]) for i in idx]).to(device)
                for i, full in zip(idx, basis.expand(x)):
                    y = full[: pairs[i].rank]
                    if side == "B":
                        out[i] = (None, y.T.to(dtypes[i][1]).contiguous().cpu())
                    else:
                        out[i] = (y.to(dtypes[i][0]).cpu(), out[i][1])
    if sink is not None:
        for i, _, _ in window:
            a, b = out[i]
            out[i] = None
            sink(i, a, b)
