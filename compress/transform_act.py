"""The activation-aware transform code: the transform code of transform.py in the input metric.

With a module's input second moment C = E[x x^T] the output error of a weight error E is
tr(E C E^T) = ||E L||^2 (C = L L^T), so the gauge is the SVD of delta-W L rather than of delta-W:
delta-W L = U S V^T gives B'' = scale * U S and A'' = V^T L^-1, components ordered by the output
energy they carry, and A's rows unit in the metric C. C is first scaled to mean eigenvalue 1 (one
number per module, which leaves the gauge as it is) so that A's rows have Euclidean norm near 1 and
the reader's step and spread rules (see transform.py) apply unchanged: a reader needs no statistics.

B is rounded as before (its error's metric is the identity: nothing is known of the outputs). A's rows
are rounded with error feedback under the metric P^T C P of the rotated coefficients (feedback.py),
which removes most of the rounding error along the directions the inputs use.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .feedback import inverse_factor
from .peft_io import LoraCheckpoint, LoraPair
from .stats import InputStats
from .transform import ModuleCoefficients, _gauge, _rotate


def normalized_metric(stats: InputStats, damp: float) -> torch.Tensor:
    """C scaled to mean eigenvalue 1, plus damp * I (so it is positive definite)."""
    c = stats.dense()
    n = c.shape[0]
    trace = float(c.diagonal().sum())
    c = c * (n / trace) if trace > 0 else torch.eye(n, dtype=torch.float64)
    return (c + c.T) / 2 + max(damp, 1e-6) * torch.eye(n, dtype=torch.float64)


GAUGE = "whitened"  # whitened | plain | whitened-unit (probe)


def whitened_gauge(pair: LoraPair, a: torch.Tensor, b: torch.Tensor, metric: torch.Tensor):
    """(scale * U S [out, r], V^T L^-1 [r, in]) with delta-W L = U S V^T, C = L L^T."""
    if GAUGE == "plain":
        return _gauge(pair, a, b)
    low = torch.linalg.cholesky(metric)
    b2, a2w = _gauge(pair, a.double() @ low, b)  # the gauge of (scale B)(A L)
    a2 = torch.linalg.solve_triangular(low.T, a2w.T, upper=True).T  # a2w L^-1
    if GAUGE == "whitened-unit":
        t = a2.norm(dim=1)
        t = torch.where(t > 0, t, torch.ones_like(t))
        a2, b2 = a2 / t[:, None], b2 * t
    return b2, a2


def activation_coefficients(
    checkpoint: LoraCheckpoint,
    pairs: Sequence[LoraPair],
    stats: dict[str, InputStats],
    seed: int,
    device: torch.device,
    damp: float = 0.01,
) -> list[ModuleCoefficients]:
    """Every module's rotated coefficients in its whitened gauge, with the inverse factor of its
    rotated metric for error-feedback rounding (modules without statistics: the plain gauge)."""
    gauged, metrics = [], []
    for p in pairs:
        a, b = checkpoint.tensors[p.a_key], checkpoint.tensors[p.b_key]
        s = stats.get(p.module)
        if s is None:
            gauged.append(_gauge(p, a, b))
            metrics.append(None)
            continue
        metric = normalized_metric(s, damp)
        gauged.append(whitened_gauge(p, a, b, metric))
        metrics.append(metric)
    b_rot = _rotate([b.T.contiguous() for b, _ in gauged], pairs, "B", seed, device)
    a_rot = _rotate([a for _, a in gauged], pairs, "A", seed, device)
    factors = _rotated_factors(metrics, pairs, seed, device)
    return [
        ModuleCoefficients(p, b.numpy(), a.numpy(), f) for p, b, a, f in zip(pairs, b_rot, a_rot, factors)
    ]


def _rotated_factors(metrics, pairs, seed, device):
    """Per module, the inverse factor of P^T C P (P its seeded A basis), or None."""
    idx = [i for i, m in enumerate(metrics) if m is not None]
    if not idx:
        return [None] * len(pairs)
    out = [None] * len(pairs)
    for i in idx:  # one module at a time: each holds an [n, n] matrix, not r rows
        once = _rotate([metrics[i]], [pairs[i]], "A", seed, device)[0]  # rows of C rotated: C P
        twice = _rotate([once.T.contiguous()], [pairs[i]], "A", seed, device)[0]  # P^T C P
        f = inverse_factor((twice + twice.T) / 2)
        out[i] = None if f is None else f.numpy()
    return out
