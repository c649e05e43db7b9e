"""How much of an adapter a reconstruction keeps, per module and overall.

weight error  ||B A - B^ A^||_F / ||B A||_F, the relative error of delta-W;
output error  ||(B A - B^ A^) x|| / ||B A x|| in expectation over the calibration inputs, i.e. the same
              in the metric C = E[x x^T] (only where statistics were given).
Overall figures are energy-weighted (scale^2 * ||delta-W||^2 per module), so a module that barely
changes the model does not dominate; the maximum and mean over modules are reported beside them.
All sums use r x r products, never the dense delta-W.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from .peft_io import LoraCheckpoint, LoraPair
from .stats import InputStats


def _apply(a: torch.Tensor, stats: InputStats | None) -> torch.Tensor:
    """a C for a [r, n] (C = I without statistics)."""
    if stats is None:
        return a
    if stats.full is not None:
        return a @ stats.full.double()
    u, lam = stats.eigvecs.double(), stats.eigvals.double()
    return ((a @ u) * lam) @ u.T + stats.rest * a


def _inner(b1, a1, b2, a2, stats: InputStats | None) -> float:
    """<B1 A1, B2 A2> in the metric C: tr((B2^T B1)(A1 C A2^T))."""
    return float(((b2.T @ b1) * (a1 @ _apply(a2, stats).T).T).sum())


def module_error(
    a: torch.Tensor, b: torch.Tensor, a_hat: torch.Tensor, b_hat: torch.Tensor, stats: InputStats | None
) -> tuple[float, float]:
    """(squared error, squared norm) of B A - B^ A^ in the metric of `stats`."""
    a, b, a_hat, b_hat = (t.double().cpu().reshape(t.shape[0], -1) for t in (a, b, a_hat, b_hat))
    b, b_hat = b.reshape(-1, a.shape[0]), b_hat.reshape(-1, a.shape[0])
    total = _inner(b, a, b, a, stats)
    err = total - 2 * _inner(b, a, b_hat, a_hat, stats) + _inner(b_hat, a_hat, b_hat, a_hat, stats)
    return max(err, 0.0), max(total, 0.0)


def _summary(prefix: str, errs: Sequence[float], totals: Sequence[float], weights: Sequence[float]):
    rel = [math.sqrt(e / t) if t > 0 else 0.0 for e, t in zip(errs, totals)]
    weighted_total = sum(w * t for w, t in zip(weights, totals))
    weighted_err = sum(w * e for w, e in zip(weights, errs))
    return rel, {
        f"{prefix}_rel_error": round(math.sqrt(weighted_err / weighted_total), 6) if weighted_total else 0.0,
        f"{prefix}_rel_error_max": round(max(rel, default=0.0), 6),
        f"{prefix}_rel_error_mean": round(sum(rel) / len(rel), 6) if rel else 0.0,
    }


def measure(
    original: LoraCheckpoint,
    tensors: dict[str, torch.Tensor],
    pairs: Sequence[LoraPair],
    stats: dict[str, InputStats] | None = None,
) -> dict[str, Any]:
    """Compare the factors in `tensors` with those of `original` for `pairs`."""
    stats = stats or {}
    weights = [p.scale**2 for p in pairs]
    w_err, w_tot, o_err, o_tot, o_weights, modules = [], [], [], [], [], []
    for pair in pairs:
        args = (
            original.tensors[pair.a_key],
            original.tensors[pair.b_key],
            tensors[pair.a_key],
            tensors[pair.b_key],
        )
        e, t = module_error(*args, None)
        w_err.append(e)
        w_tot.append(t)
        entry: dict[str, Any] = {"module": pair.module}
        if pair.module in stats:
            e, t = module_error(*args, stats[pair.module])
            o_err.append(e)
            o_tot.append(t)
            o_weights.append(pair.scale**2)
            entry["output"] = round(math.sqrt(e / t), 5) if t > 0 else 0.0
        modules.append(entry)
    rel, result = _summary("weight", w_err, w_tot, weights)
    for entry, value in zip(modules, rel):
        entry["weight"] = round(value, 5)
    if o_err:
        result.update(_summary("output", o_err, o_tot, o_weights)[1])
    result["modules"] = modules
    return result
