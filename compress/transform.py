"""The transform code of NOLA: every coefficient of a complete seeded basis, one quantizer step, ANS.

Per module, delta-W = scale * B A is first put in its SVD gauge, U S V^T (thin SVD through QR of B and
A^T: an r x r problem). Each column of B'' = scale * U S and each row of A'' = V^T is then rotated by
the module's seeded fast basis at full size (k = n): an orthonormal randomized Hadamard transform, so
nothing is truncated and the coefficients are incoherent and close to Gaussian. The coefficients are
the NOLA model's (factor = basis x coefficients); only how they are chosen and coded differs from the
row code (`layout: rows`).

Quantization: one step `step` for the whole adapter, so every coefficient buys the same error drop per
bit (equal slope; weak components round to zero and drop out, strong ones get more bits), in units
where module m's squared error counts 1 / mu_m^2 (mu_m = ||delta-W_m||^gamma, one byte per module:
gamma 0 weighs absolute error, 1 relative error, 0.5 between; see `module_weights`):
- column j of B'' takes integers round(c / (step mu_m)); its weight in delta-W is ||v_j|| = 1;
- row j of A'' (unit norm, weight ||b_j|| = s_j) takes the step step mu_m / s^_j = 1 / sqrt(sum q_j^2),
  with s^_j = step mu_m sqrt(sum q_j^2) the norm of the *decoded* column: a reader computes it exactly
  from the integers.
A component whose B column rounds to zero is dropped (its A row is not stored).

Entropy coding: the integers are coded with an ANS coder (`constriction`) under a Gaussian model
binned to the integers whose spread is known per column: for B a log-scale code per column (0:
dropped), for A the code of sqrt(sum q_j^2 / n_in) from the decoded column. Each code's model is one
table (transform_entropy.py; format 2 used a model per symbol, still read by transform_v2.py). The
stream is `codes` bytes: ANS words holding first the side information (each module's weight code and
its columns' spread codes, as residuals from their predictions under a Laplace model), then the
integers, module by module. The step is found by bisection for the smallest stream within a budget.
The reader (transform_read.py) rebuilds B = B^'' / (scale g), A = g A^'' with g_j = sqrt(s^_j /
|scale|), so the factors keep PEFT's shapes and rank and are balanced; s^_j = step mu_m sqrt(sum
q_j^2) is exact from the integers, so the scaling folds into the coefficients and one float32
rotation per factor rebuilds them.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from .bases import FastBasis, basis_key
from .feedback import feedback_round
from .peft_io import LoraCheckpoint, LoraPair
from .transform_entropy import SPREAD_ZERO, Models, spread_codes

LAYOUT = "transform"
MODEL = "gaussian-table"  # the header's name for the coefficient model (format 2: transform_v2.MODEL)
# (The format-3 reader is transform_read.py.)
# The largest |integer| coded: finer steps than this allows are never needed (16 bits per coefficient
# is more than the fp16 / bf16 a source stores) and the coder's model needs a bounded support.
MAX_BOUND = 1 << 15
# How module errors add up (NolaConfig.weighting) -> the exponent gamma of the module weights.
GAMMAS = {"absolute": 0.0, "balanced": 0.5, "relative": 1.0}
# Scale of the Laplace model of the side information's residuals (in code units).
SIDE_SCALE = 4.0
# Per module, a step multiplier 2 ** ((code - WEIGHT_ZERO) / WEIGHT_STEPS), code 0..255.
WEIGHT_ZERO, WEIGHT_STEPS = 128, 8
# The step search stops once the stream fills this close to its budget (each try codes everything).
CLOSE_ENOUGH = 0.002
# Rotated coefficients held at once (per same-size group) are bounded near this many numbers.
BATCH_ELEMENTS = 1 << 24


def _ans():
    import constriction

    return constriction


@dataclass
class ModuleCoefficients:
    """One module in the transform gauge: rotated coefficients of scale * U S (columns) and V^T (rows)."""

    pair: LoraPair
    b: np.ndarray  # [r, out] float64: column j of B'' rotated, as row j
    a: np.ndarray  # [r, in] float64: row j of A'' rotated
    # Activation-aware: U with (P^T C P)^-1 = U^T U for the input metric C in the rotated basis P; A's
    # rows are then rounded with error feedback (see feedback.py). None: each coefficient rounded alone.
    feedback: np.ndarray | None = None


@dataclass
class TransformCode:
    """An adapter coded at one step: what a reader needs besides the header's module list."""

    step: float
    bound: int  # the largest |integer|, the range of the coder's model
    codes: bytes  # the ANS words: side information (weights, spreads), then the coefficients
    components: int  # rank components kept (B column not all zero)
    spreads: np.ndarray  # per rank component, its B column's spread code (0: dropped)

    @property
    def nbytes(self) -> int:
        return len(self.codes)


def _gauge(pair: LoraPair, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale * U S [out, r], V^T [r, in]) with delta-W = U S V^T, zero-padded to the rank."""
    a, b = a.double(), b.double()
    rank = a.shape[0]
    qb, rb = torch.linalg.qr(b)  # [out, m], [m, r]
    qa, ra = torch.linalg.qr(a.T)  # [in, m'], [m', r]
    u, s, vh = torch.linalg.svd(rb @ ra.T)
    b2 = torch.zeros(b.shape[0], rank, dtype=torch.float64)
    a2 = torch.zeros(rank, a.shape[1], dtype=torch.float64)
    m = s.shape[0]
    b2[:, :m] = pair.scale * (qb @ u) * s
    a2[:m] = vh @ qa.T
    return b2, a2


def _rotations(
    n: int, pairs: Sequence[LoraPair], side: str, seed: int, device: torch.device, dtype=torch.float64
):
    """Full-size fast bases for `pairs` on one side, in chunks: (start, stop, basis)."""
    rank = max(p.rank for p in pairs)
    size = max(1, BATCH_ELEMENTS // (n * rank))
    for start in range(0, len(pairs), size):
        chunk = pairs[start : start + size]
        keys = [basis_key(seed, p.module, side) for p in chunk]
        yield start, start + len(chunk), FastBasis(n, [n] * len(chunk), keys, device, dtype)


def _by_size(pairs: Sequence[LoraPair], side: str) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(pairs):
        groups[p.in_features if side == "A" else p.out_features].append(i)
    return groups


@contextmanager
def one_torch_thread():
    """Torch ops on one thread each, for work spread over threads of our own (modules, or reading
    and rotating): small ops under a team of OpenMP threads waste most of their time waiting on each
    other once the cores are shared (measured: a whole decode 13x slower under load), and each
    module's result no longer depends on the thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _stack(rows: Sequence[torch.Tensor]) -> torch.Tensor:
    """[b, r_max, n]: modules of different rank padded with zero rows."""
    rank = max(r.shape[0] for r in rows)
    return torch.stack([torch.nn.functional.pad(r, (0, 0, 0, rank - r.shape[0])) for r in rows])


def _rotate(rows: list[torch.Tensor], pairs, side, seed, device) -> list[torch.Tensor]:
    """Rotate each module's rows [r, n] (P^T x with the full basis), batched by n."""
    out: list[torch.Tensor | None] = [None] * len(pairs)
    for n, members in sorted(_by_size(pairs, side).items()):
        sub = [pairs[i] for i in members]
        for start, stop, basis in _rotations(n, sub, side, seed, device):
            idx = members[start:stop]
            x = _stack([rows[i] for i in idx]).to(device)  # [b, r, n]
            for i, y in zip(idx, basis.project(x)):
                out[i] = y[: rows[i].shape[0]].cpu()
    return out  # type: ignore[return-value]


def coefficients(
    checkpoint: LoraCheckpoint, pairs: Sequence[LoraPair], seed: int, device: torch.device
) -> list[ModuleCoefficients]:
    """Every module's rotated coefficients in the SVD gauge (what does not depend on the budget)."""
    workers = torch.get_num_threads()
    with one_torch_thread(), ThreadPoolExecutor(workers) as pool:  # modules in parallel, see below
        gauged = list(
            pool.map(lambda p: _gauge(p, checkpoint.tensors[p.a_key], checkpoint.tensors[p.b_key]), pairs)
        )
    b_rot = _rotate([b.T.contiguous() for b, _ in gauged], pairs, "B", seed, device)
    a_rot = _rotate([a for _, a in gauged], pairs, "A", seed, device)
    return [ModuleCoefficients(p, b.numpy(), a.numpy()) for p, b, a in zip(pairs, b_rot, a_rot)]


def _round(x: np.ndarray, rounding: float) -> np.ndarray:
    """sign(x) floor(|x| + rounding): 0.5 rounds to nearest, less widens the dead zone at zero."""
    return (np.sign(x) * np.floor(np.abs(x) + rounding)).astype(np.int64)


def _a_steps(sums: np.ndarray) -> np.ndarray:
    """The quantizer step of each kept A row: step / s^_j with s^_j = step * sqrt(sum q_j^2), which is
    1 / sqrt(sum q_j^2): exact integer sums and a correctly rounded root, the same on every reader."""
    return 1.0 / np.sqrt(sums.astype(np.float64))


def module_weights(modules: Sequence[ModuleCoefficients], gamma: float) -> np.ndarray:
    """Per module, the byte of its step multiplier ||delta-W||^gamma (relative to their geometric
    mean): gamma 0 spends bits where the absolute error drops most, 1 evens the modules' relative
    errors, 0.5 lies between."""
    norms = [float(np.sqrt((m.b * m.b).sum())) for m in modules]
    logs = [math.log2(v) for v in norms if v > 0]
    centre = sum(logs) / len(logs) if logs else 0.0
    codes = [
        min(255, max(0, round(WEIGHT_STEPS * gamma * (math.log2(v) - centre)) + WEIGHT_ZERO)) if v > 0 else 0
        for v in norms
    ]
    return np.array(codes, dtype=np.uint8)


def _multiplier(code: int) -> float:
    return 2.0 ** ((int(code) - WEIGHT_ZERO) / WEIGHT_STEPS)


@dataclass
class ModuleIntegers:
    """One module's integers at a step: its columns' spread codes, and for the kept components the
    integers of B'' [kept, out] and A'' [kept, in]."""

    spreads: list[int]
    kept: list[int]
    qb: np.ndarray
    qa: np.ndarray


def module_integers(
    modules: Sequence[ModuleCoefficients],
    step: float,
    rounding: float = 0.5,
    weights: np.ndarray | None = None,
) -> list[ModuleIntegers]:
    """Every module's integers at `step` (A's rows with error feedback where a module has a metric)."""
    weights = weights if weights is not None else np.full(len(modules), WEIGHT_ZERO, dtype=np.uint8)
    out: list[ModuleIntegers] = []
    pending: dict[int, list[tuple]] = defaultdict(list)  # n_in -> (module, scaled A rows, factor)
    for m, w in zip(modules, weights):
        qb = _round(m.b / (step * _multiplier(w)), rounding)  # [r, out]
        codes = spread_codes((qb * qb).sum(1), qb.shape[1]).tolist()
        kept = [j for j, c in enumerate(codes) if c]
        n_in = m.a.shape[1]
        item = ModuleIntegers(codes, kept, qb[kept], np.zeros((len(kept), n_in), dtype=np.int64))
        out.append(item)
        if not kept:
            continue
        sums = (item.qb * item.qb).sum(1)
        scaled = m.a[kept] / _a_steps(sums)[:, None]
        if m.feedback is None:
            item.qa = _round(scaled, rounding)
        else:  # rounded below, with the other modules of its size
            pending[n_in].append((item, scaled, m.feedback))
    for jobs in pending.values():
        rank = max(j[1].shape[0] for j in jobs)
        x = np.stack([np.pad(j[1], ((0, rank - j[1].shape[0]), (0, 0))) for j in jobs])
        q = feedback_round(x, np.stack([j[2] for j in jobs]), rounding)
        for (item, scaled, _), qi in zip(jobs, q):
            item.qa = qi[: scaled.shape[0]]
    return out


def encode(
    modules: Sequence[ModuleCoefficients],
    step: float,
    rounding: float = 0.5,
    weights: np.ndarray | None = None,
) -> TransformCode | None:
    """The code at `step`, or None when the step is too fine for the coder (see MAX_BOUND)."""
    weights = weights if weights is not None else np.full(len(modules), WEIGHT_ZERO, dtype=np.uint8)
    items = module_integers(modules, step, rounding, weights)
    spreads = np.array([c for item in items for c in item.spreads], dtype=np.uint8)
    bound = max([1] + [int(np.abs(q).max()) for item in items if item.kept for q in (item.qb, item.qa)])
    if bound > MAX_BOUND:
        return None
    coder = _ans().stream.stack.AnsCoder()
    models = Models(bound)
    # A stack: what is coded last is read first, so everything goes in back to front.
    for item in reversed(items):
        if not item.kept:
            continue
        a_codes = spread_codes((item.qb * item.qb).sum(1), item.qa.shape[1])
        for row, code in zip(item.qa[::-1], a_codes[::-1].tolist()):
            coder.encode_reverse((row + bound).astype(np.int32), models[code])
        for row, j in zip(item.qb[::-1], item.kept[::-1]):
            coder.encode_reverse((row + bound).astype(np.int32), models[item.spreads[j]])
    side = _side_residuals(weights, spreads, [m.pair.rank for m in modules])
    coder.encode_reverse(side.astype(np.int32), _side_model())
    words = coder.get_compressed().astype("<u4").tobytes()
    return TransformCode(step, bound, words, int((spreads > 0).sum()), spreads)


def _side_model():
    """The model of the side information's residuals (see `_side_residuals`)."""
    return _ans().stream.model.QuantizedLaplace(-255, 255, 0.0, SIDE_SCALE)


def _side_residuals(weights: np.ndarray, spreads: np.ndarray, ranks: Sequence[int]) -> np.ndarray:
    """Weight and spread bytes as differences from their predictions: a module's weight from the one
    before, a column's spread from the column before in its module (the first from the first of the
    module before), since singular values, and so spreads, fall smoothly within a module."""
    out, at = [], 0
    last_weight, last_first = WEIGHT_ZERO, SPREAD_ZERO
    for w, rank in zip(weights.tolist(), ranks):
        out.append(w - last_weight)
        last_weight = w
        prev = last_first
        for j in range(rank):
            c = int(spreads[at + j])
            out.append(c - prev)
            prev = c
            if j == 0:
                last_first = c
        at += rank
    return np.array(out, dtype=np.int64)


def _side_values(residuals: np.ndarray, ranks: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of `_side_residuals`: (weights, spreads); ValueError outside 0..255."""
    weights, spreads, at = [], [], 0
    last_weight, last_first = WEIGHT_ZERO, SPREAD_ZERO
    values = residuals.tolist()
    for rank in ranks:
        last_weight += values[at]
        weights.append(last_weight)
        prev = last_first
        for j in range(rank):
            prev += values[at + 1 + j]
            spreads.append(prev)
            if j == 0:
                last_first = prev
        at += 1 + rank
    if any(not 0 <= v <= 255 for v in weights + spreads):
        raise ValueError("the side information decodes out of range")
    return np.array(weights, dtype=np.uint8), np.array(spreads, dtype=np.uint8)


def fit_step(
    modules: Sequence[ModuleCoefficients],
    budget: int,
    rounding: float = 0.5,
    gamma: float = 0.5,
    iterations: int = 40,
    weights: np.ndarray | None = None,
) -> TransformCode:
    """The code with the smallest step whose bytes fit `budget` (everything dropped if none does).
    `weights`: the modules' step multipliers (default `module_weights(modules, gamma)`)."""
    weights = module_weights(modules, gamma) if weights is None else weights
    peak = max(
        (float(np.abs(m.b).max()) / _multiplier(w) for m, w in zip(modules, weights) if m.b.size), default=0.0
    )
    coarse = encode(modules, max(peak, 1e-30) * 4, rounding, weights)  # every column rounds to zero
    assert coarse is not None
    if coarse.nbytes > budget or peak == 0:
        return coarse
    hi, lo = math.log2(peak * 4), math.log2(peak) - 40
    best = coarse
    for _ in range(iterations):
        mid = (lo + hi) / 2
        code = encode(modules, 2.0**mid, rounding, weights)
        if code is not None and code.nbytes <= budget:
            best, hi = code, mid
        else:
            lo = mid
        if hi - lo < 1e-3 or best.nbytes >= budget * (1 - CLOSE_ENOUGH):
            break
    return best


def kept_coefficients(pairs: Sequence[LoraPair], code: TransformCode) -> int:
    """Coefficients the stream stores: in + out for every kept rank component."""
    total, at = 0, 0
    for p in pairs:
        total += int((code.spreads[at : at + p.rank] > 0).sum()) * (p.in_features + p.out_features)
        at += p.rank
    return total


_LAST_DIGEST: list[tuple[tuple, str]] = []  # the last adapter's: a size search asks again and again


def bases_digest(pairs: Sequence[LoraPair], seed: int, device: torch.device) -> str:
    """One digest of every module's two full-size bases (what `decode` checks against)."""
    key = (tuple((p.module, p.in_features, p.out_features) for p in pairs), seed, str(device))
    if _LAST_DIGEST and _LAST_DIGEST[0][0] == key:
        return _LAST_DIGEST[0][1]
    digest = _bases_digest(pairs, seed, device)
    _LAST_DIGEST[:] = [(key, digest)]
    return digest


def _bases_digest(pairs: Sequence[LoraPair], seed: int, device: torch.device) -> str:
    digests: list[str] = []
    for side in ("B", "A"):
        for n, members in sorted(_by_size(pairs, side).items()):
            sub = [pairs[i] for i in members]
            for start, stop, basis in _rotations(n, sub, side, seed, device):
                idx = members[start:stop]
                digests += [f"{side}{pairs[i].module}:{d}" for i, d in zip(idx, basis.digests())]
    return hashlib.sha256("".join(sorted(digests)).encode()).hexdigest()[:16]


def _expand(rows, pairs, side, seed, device, digests: list[str]) -> list[torch.Tensor]:
    out: list[torch.Tensor | None] = [None] * len(pairs)
    for n, members in sorted(_by_size(pairs, side).items()):
        sub = [pairs[i] for i in members]
        for start, stop, basis in _rotations(n, sub, side, seed, device):
            idx = members[start:stop]
            digests += [f"{side}{pairs[i].module}:{d}" for i, d in zip(idx, basis.digests())]
            x = _stack([rows[i] for i in idx]).to(device)
            for i, y in zip(idx, basis.expand(x)):
                out[i] = y[: rows[i].shape[0]].cpu()
    return out  # type: ignore[return-value]
