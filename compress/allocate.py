"""Rate-distortion choice of (k, format) for every factor of every module under one byte budget.

Each rank component of each module (row j of A with column j of B, in the balanced gauge) is a unit
with a table of candidates: a subspace size k and coefficient format for each side, the error the
module would have from this component's approximation, and the bytes its coefficients take; or
dropping the component (0 bytes, its whole energy lost). In the balanced gauge components are
orthogonal and the errors of the two sides add up to first order, so the choice separates: minimise
sum(err) + lambda * sum(bytes) unit by unit, bisect lambda to meet the budget, then spend what is
left greedily on the upgrades with the best error drop per byte.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

GRID_FRACTIONS = (1 / 64, 1 / 32, 1 / 16, 1 / 8, 3 / 16, 1 / 4, 5 / 16, 3 / 8, 1 / 2, 5 / 8, 3 / 4, 7 / 8, 1)


def k_grid(n: int, fractions: Sequence[float] = GRID_FRACTIONS) -> list[int]:
    """Candidate subspace sizes for a factor whose rows have n entries."""
    return sorted({min(n, max(1, round(n * f))) for f in fractions})


@dataclass(frozen=True)
class Candidate:
    error: float
    nbytes: int
    option: Any = None  # what the unit stores if chosen


def pareto(candidates: Sequence[Candidate]) -> list[Candidate]:
    """The candidates no other beats on both bytes and error, by increasing bytes."""
    front, best = [], math.inf
    for cand in sorted(candidates, key=lambda c: (c.nbytes, c.error)):
        if cand.error < best:
            front.append(cand)
            best = cand.error
    return front


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


def _best_upgrade(cands: Sequence[Candidate], current: int, left: int) -> tuple[float, int] | None:
    """(error drop per extra byte, index) of the best upgrade of one unit that fits in `left` bytes."""
    cur = cands[current]
    best = None
    for i, cand in enumerate(cands):
        extra, gain = cand.nbytes - cur.nbytes, cur.error - cand.error
        if gain > 0 and extra <= left:
            rate = gain / max(extra, 1)
            if best is None or rate > best[0]:
                best = (rate, i)
    return best


def _fill(units: list[list[Candidate]], picks: list[int], left: int) -> list[Candidate]:
    """Greedy: take the upgrade with the largest error drop per extra byte while one fits.

    A heap holds each unit's best upgrade; entries go stale when the budget shrinks below them and
    are recomputed when popped, so each step costs one unit's candidates, not all of them.
    """
    heap: list[tuple[float, int, int]] = []
    for u, cands in enumerate(units):
        best = _best_upgrade(cands, picks[u], left)
        if best:
            heapq.heappush(heap, (-best[0], u, best[1]))
    while heap:
        _, u, i = heapq.heappop(heap)
        extra = units[u][i].nbytes - units[u][picks[u]].nbytes
        if extra > left or units[u][i].error >= units[u][picks[u]].error:
            best = _best_upgrade(units[u], picks[u], left)  # stale: the budget or the pick moved
            if best:
                heapq.heappush(heap, (-best[0], u, best[1]))
            continue
        picks[u] = i
        left -= extra
        best = _best_upgrade(units[u], picks[u], left)
        if best:
            heapq.heappush(heap, (-best[0], u, best[1]))
    return [units[u][i] for u, i in enumerate(picks)]
