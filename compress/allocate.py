"""Rate-distortion choice of (k, format) for every factor of every module under one byte budget.

Each factor is a unit with a table of candidates: for k on a grid and each allowed coefficient format,
the error the module would have if only this factor were approximated (the other kept exact), and the
bytes the coefficients take. In the balanced gauge these errors add up to first order, so the choice
separates: minimise sum(err) + lambda * sum(bytes) unit by unit, bisect lambda to meet the budget,
then spend what is left greedily on the upgrades with the best error drop per byte. Errors are
absolute (scale^2 times the output energy lost), so modules that matter more get more bytes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

GRID_FRACTIONS = (1 / 64, 1 / 32, 1 / 16, 1 / 8, 3 / 16, 1 / 4, 5 / 16, 3 / 8, 1 / 2, 5 / 8, 3 / 4, 7 / 8, 1)


def k_grid(n: int, fractions: Sequence[float] = GRID_FRACTIONS) -> list[int]:
    """Candidate subspace sizes for a factor whose rows have n entries."""
    return sorted({min(n, max(1, round(n * f))) for f in fractions})


@dataclass(frozen=True)
class Candidate:
    k: int
    fmt: str
    error: float
    nbytes: int


@dataclass
class Choice:
    index: int  # which candidate of the unit
    candidate: Candidate


def _pick(cands: Sequence[Candidate], lam: float) -> int:
    return min(range(len(cands)), key=lambda i: (cands[i].error + lam * cands[i].nbytes, cands[i].nbytes))


def allocate(units: Sequence[Sequence[Candidate]], budget: int) -> list[Candidate]:
    """One candidate per unit, total bytes <= budget when possible (else the smallest of each)."""
    if not units:
        return []
    smallest = [min(range(len(c)), key=lambda i: (c[i].nbytes, c[i].error)) for c in units]
    floor = sum(units[u][i].nbytes for u, i in enumerate(smallest))
    if floor >= budget:
        return [units[u][i] for u, i in enumerate(smallest)]

    def spend(lam: float) -> tuple[list[int], int]:
        picks = [_pick(c, lam) for c in units]
        return picks, sum(units[u][i].nbytes for u, i in enumerate(picks))

    scale = max((c.error for cands in units for c in cands), default=0.0) or 1.0
    lo, hi = 0.0, scale  # lambda per byte: at hi every unit takes (nearly) its smallest candidate
    picks, used = spend(lo)
    if used > budget:
        while spend(hi)[1] > budget:
            hi *= 4
        for _ in range(60):
            mid = math.sqrt(lo * hi) if lo > 0 else hi / 1e6
            if spend(mid)[1] > budget:
                lo = mid
            else:
                hi = mid
            if hi / max(lo, 1e-300) < 1 + 1e-6:
                break
        picks, used = spend(hi)
    return _fill([list(c) for c in units], picks, budget - used)


def _fill(units: list[list[Candidate]], picks: list[int], left: int) -> list[Candidate]:
    """Greedy: take the upgrade with the largest error drop per extra byte while it fits."""
    while True:
        best = None
        for u, cands in enumerate(units):
            cur = cands[picks[u]]
            for i, cand in enumerate(cands):
                extra = cand.nbytes - cur.nbytes
                gain = cur.error - cand.error
                if gain <= 0 or extra > left:
                    continue
                rate = gain / max(extra, 1)
                if best is None or rate > best[0]:
                    best = (rate, u, i, extra)
        if best is None:
            return [units[u][i] for u, i in enumerate(picks)]
        _, u, i, extra = best
        picks[u] = i
        left -= extra
