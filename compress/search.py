"""The size search: the smallest artifact that passes the fidelity gate.

The gate is the contract, not the ratio. Candidate sizes form a ladder of whole-file ratios (source
file bytes / artifact bytes) from the largest allowed down to 2x, each rung sqrt(2) below the one
above, and 2x itself as the last. Fidelity falls as the artifact shrinks, so the largest passing rung
is found by bisection:
the top rung first (one attempt when it passes), the bottom rung next (two attempts when nothing
passes), then halving the gap between the lowest failing and the highest passing rung. Below 2x the
lossless source costs little more, so the caller stores that instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MIN_RATIO = 2.0
RUNG = math.sqrt(2)
# Geometric bisection steps between the largest passing rung and the failing one above it: two
# steps find the size within 2^(1/8) (9%) of the largest passing one, for two more fits.
REFINE_STEPS = 2


def ladder(max_ratio: float, min_ratio: float = MIN_RATIO) -> list[float]:
    """Whole-file ratios to try, largest first: max_ratio, max_ratio / sqrt(2), ... >= min_ratio."""
    if not max_ratio >= 1:
        raise ValueError(f"the largest ratio must be >= 1, got {max_ratio!r}")
    rungs = [float(max_ratio)]
    while rungs[-1] / RUNG >= min_ratio * (1 - 1e-9):
        rungs.append(rungs[-1] / RUNG)
    if rungs[-1] > min_ratio * 1.05:  # always try the smallest size worth storing
        rungs.append(float(min_ratio))
    return [round(r, 3) for r in rungs]


@dataclass
class Attempt:
    """One candidate size: what was asked, what was made, and the gate's verdict on it."""

    ratio: float  # the whole-file ratio aimed at
    artifact_bytes: (
        int | None
    )  # None: the size cannot be reached (headers and lossless tensors alone exceed it)
    method: str
    verdict: dict[str, Any]
    result: Any = field(default=None, repr=False)  # the codec's output, kept for the chosen attempt
    # How a distilled attempt ran (steps, why it stopped, whether the distilled or the initial
    # coefficients were kept), so a record shows why distillation did or did not help.
    distill: dict[str, Any] | None = None

    @property
    def passed(self) -> bool:
        return bool(self.verdict.get("passed"))

    def summary(self) -> dict[str, Any]:
        out = {
            "ratio": self.ratio,
            "artifact_bytes": self.artifact_bytes,
            "method": self.method,
            "passed": self.passed,
        }
        for key in ("basis", "estimate", "bound", "predictions", "reason"):
            if key in self.verdict:
                out[key] = self.verdict[key]
        if self.distill:
            out["distill"] = self.distill
        return out


def largest_passing(
    rungs: list[float], attempt: Callable[[float], Attempt]
) -> tuple[int | None, list[Attempt]]:
    """Bisect `rungs` (largest ratio first) for the largest ratio whose attempt passes, assuming
    fidelity does not rise as the ratio grows. Returns its index (None when none passes) and every
    attempt made, in order."""
    tried: dict[int, Attempt] = {}

    def passes(index: int) -> bool:
        if index not in tried:
            tried[index] = attempt(rungs[index])
        return tried[index].passed

    if passes(0):
        return 0, list(tried.values())
    last = len(rungs) - 1
    if last == 0 or not passes(last):
        return None, list(tried.values())
    failing, passing = 0, last  # rungs[failing] fails, rungs[passing] passes
    while passing - failing > 1:
        middle = (failing + passing) // 2
        if passes(middle):
            passing = middle
        else:
            failing = middle
    return passing, list(tried.values())


def refine(
    passing: float, failing: float, attempt: Callable[[float], Attempt], steps: int = REFINE_STEPS
) -> tuple[Attempt | None, list[Attempt]]:
    """Bisect (geometrically) between a passing ratio and the failing one above it. Returns the
    largest passing attempt made (None when none passed) and every attempt made, in order."""
    best: Attempt | None = None
    tried: list[Attempt] = []
    for _ in range(steps):
        middle = round(math.sqrt(passing * failing), 3)
        if not passing < middle < failing:
            break
        result = attempt(middle)
        tried.append(result)
        if result.passed:
            best, passing = result, middle
        else:
            failing = middle
    return best, tried
