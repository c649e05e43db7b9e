"""Rounding with error feedback (GPTQ's order-by-order rounding) under a quadratic metric.

Rows x [r, n] are rounded to integers q so that (x - q) M (x - q)^T stays small, where M is positive
definite. Coordinates are rounded in order; each rounding error is pushed onto the coordinates not yet
rounded along the rows of the upper Cholesky factor U of M^-1 (M^-1 = U^T U), which is exactly the
correction that minimises the metric error over the remaining coordinates (Frantar et al., GPTQ,
2022). With M = I it is plain rounding. Many matrices of one size are rounded in one batch, so the
loop over coordinates runs once per size, not once per module.
"""

from __future__ import annotations

import numpy as np
import torch


def inverse_factor(metric: torch.Tensor) -> torch.Tensor:
    """U with M^-1 = U^T U (upper triangular), for M [..., n, n] symmetric positive definite."""
    m = metric.double()
    eye = torch.eye(m.shape[-1], dtype=torch.float64)
    low = torch.linalg.cholesky(m)
    inv = torch.cholesky_inverse(low)
    inv = (inv + inv.transpose(-1, -2)) / 2 + 1e-12 * eye * inv.diagonal(dim1=-2, dim2=-1).mean(-1)[
        ..., None, None
    ]
    return torch.linalg.cholesky(inv, upper=True)


def feedback_round(x: np.ndarray, factor: np.ndarray, rounding: float = 0.5) -> np.ndarray:
    """Integers for x [b, r, n] under metrics with inverse factors `factor` [b, n, n] (see module doc).
    `rounding` as in plain rounding: sign(v) floor(|v| + rounding), 0.5 to nearest."""
    w = np.array(x, dtype=np.float64, copy=True)
    q = np.zeros(w.shape, dtype=np.int64)
    n = w.shape[-1]
    diag = np.diagonal(factor, axis1=-2, axis2=-1)  # [b, n]
    for i in range(n):
        col = w[:, :, i]
        qi = np.sign(col) * np.floor(np.abs(col) + rounding)
        q[:, :, i] = qi
        if i + 1 < n:
            err = (col - qi) / diag[:, i, None]  # [b, r]
            w[:, :, i + 1 :] -= err[:, :, None] * factor[:, None, i, i + 1 :]
    return q


def metric_error(x: np.ndarray, q: np.ndarray, metric: np.ndarray) -> float:
    """(x - q) M (x - q)^T summed over rows (for tests and benches)."""
    e = np.asarray(x, dtype=np.float64) - q  # [b, r, n]
    return float(np.einsum("bri,bij,brj->", e, np.broadcast_to(metric, (e.shape[0], *metric.shape[-2:])), e))
