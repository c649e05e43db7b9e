"""Fitting NOLA coefficients to a trained LoRA module, batched over modules of the same shape.

Notation for one module: delta-W = s * B A with A [r, in], B [out, r]. Each factor's rows live in a
seeded random subspace: A^ = XA QA^T (QA [in, kA], coefficients XA [r, kA]) and B^T = XB QB^T
(QB [out, kB], XB [r, kB]). The loss is the output error on the module's inputs,

    E || (B A - B^ A^) x ||^2 = || (B A - B^ A^) C^(1/2) ||_F^2,      C = E[x x^T] (+ damping),

with C = I for a weight-space fit. Because the output side has no statistics (its metric is I), the
best pair in the two subspaces separates exactly:

    XB0 = QB-projection of B,   XA0 = A C QA (QA^T C QA)^-1,

two closed-form least-squares solves. They are done in the *balanced gauge*: B A is rewritten as
B' A' with A' C A'^T = B'^T B' = diag(sigma), so both factors carry each component's weight equally
and quantization errors on either side cost the same. Quantized coefficients are then improved by
alternating least squares on the bilinear problem: refit B given the quantized A, quantize, refit A
given the quantized B, and so on, each half an exact r x r solve; the best round is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .bases import Basis, FastBasis
from .quant import Quantized, dequantize, quantize
from .stats import InputStats

_EPS = 1e-12


@dataclass
class ColumnMetric:
    """K, the metric on a factor's columns for a group of b modules: I, full [b, n, n], or
    eigvecs [b, n, m] diag(eigvals [b, m]) eigvecs^T + iso [b] * I."""

    n: int
    batch: int
    full: torch.Tensor | None = None
    eigvecs: torch.Tensor | None = None
    eigvals: torch.Tensor | None = None
    iso: torch.Tensor | None = None

    @property
    def identity(self) -> bool:
        return self.full is None and self.eigvecs is None

    @classmethod
    def from_stats(
        cls,
        stats: Sequence[InputStats | None],
        n: int,
        damp: float,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float64,
    ) -> ColumnMetric:
        """Stack per-module statistics (None = identity). `damp` adds damp * mean(diag C) * I."""
        batch = len(stats)
        if all(s is None for s in stats):
            return cls(n, batch)
        for s in stats:
            if s is not None and s.dim != n:
                raise ValueError(f"statistics of dimension {s.dim} given for a module with {n} inputs")
        if any(s is not None and not s.low_rank for s in stats):
            full = torch.stack([torch.eye(n, dtype=torch.float64) if s is None else s.dense() for s in stats])
            traces = full.diagonal(dim1=1, dim2=2).sum(-1)
            full += (damp * traces / n)[:, None, None] * torch.eye(n, dtype=torch.float64)
            return cls(n, batch, full=full.to(device=device, dtype=dtype))
        m = max(s.eigvals.numel() for s in stats if s is not None)
        vecs = torch.zeros(batch, n, m, dtype=torch.float64)
        vals = torch.zeros(batch, m, dtype=torch.float64)
        iso = torch.ones(batch, dtype=torch.float64)
        for i, s in enumerate(stats):
            if s is None:
                continue
            mi = s.eigvals.numel()
            vecs[i, :, :mi] = s.eigvecs.double()
            vals[i, :mi] = s.eigvals.double()
            iso[i] = s.rest + damp * s.trace() / n
        iso = iso.clamp_min(_EPS * (1.0 + vals.max(dim=1).values))
        return cls(
            n,
            batch,
            eigvecs=vecs.to(device, dtype),
            eigvals=vals.to(device, dtype),
            iso=iso.to(device, dtype),
        )

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """x K for x [b, r, n]."""
        if self.full is not None:
            return x @ self.full  # [b, r, n] @ [b, n, n]
        if self.eigvecs is not None:
            coords = (x @ self.eigvecs) * self.eigvals[:, None, :]  # [b, r, m]
            return coords @ self.eigvecs.transpose(1, 2) + x * self.iso[:, None, None]
        return x

    def in_basis(self, basis: Basis) -> BasisMetric:
        return BasisMetric.build(self, basis)


@dataclass
class BasisMetric:
    """M = Q^T K Q for a batched basis, explicit ([b, k, k] and its Cholesky factor) or, for an
    orthonormal basis with K = low rank + iso, in Woodbury form M = iso * I + W^T W (W [b, m, k])."""

    mask: torch.Tensor  # [b, k] bool
    matrix: torch.Tensor | None = None
    cholesky: torch.Tensor | None = None
    w: torch.Tensor | None = None
    iso: torch.Tensor | None = None
    small: torch.Tensor | None = None  # Cholesky of iso * I + W W^T, [b, m, m]

    @classmethod
    def from_rotated(cls, metric: ColumnMetric, mask, select, rotated_vecs) -> BasisMetric | None:
        """For an orthonormal basis given as a selection of a rotation: identity, or Woodbury from the
        rotated eigenvectors (U^T Q = select(rotated U^T)). None when the metric is full."""
        if metric.identity:
            return cls(mask=mask)
        if metric.eigvecs is None:
            return None
        v = select(rotated_vecs).to(metric.eigvecs.dtype)  # U^T Q: [b, m, k]
        w = v * metric.eigvals.clamp_min(0).sqrt()[:, :, None]
        small = metric.iso[:, None, None] * torch.eye(w.shape[1], dtype=w.dtype, device=w.device)
        small = small + w @ w.transpose(1, 2)
        return cls(mask=mask, w=w, iso=metric.iso, small=torch.linalg.cholesky(small))

    @classmethod
    def build(cls, metric: ColumnMetric, basis: Basis) -> BasisMetric:
        mask = basis.mask
        dtype = metric.full.dtype if metric.full is not None else torch.float64
        if isinstance(basis, FastBasis):
            rotated = basis.rotate_t(metric.eigvecs.transpose(1, 2)) if metric.eigvecs is not None else None
            quick = cls.from_rotated(metric, mask, basis.select, rotated)
            if quick is not None:
                return quick
        # Explicit: M = Q^T K Q from the basis vectors Q^T = expand(I) [b, k, n].
        eye = torch.eye(basis.kmax, dtype=dtype, device=mask.device).expand(len(basis.ks), -1, -1)
        q_t = basis.expand(eye).to(dtype)  # rows are basis vectors: [b, k, n]
        matrix = q_t @ metric.apply(q_t).transpose(1, 2)  # [b, k, k]
        matrix = 0.5 * (matrix + matrix.transpose(1, 2))
        pad = ~mask
        matrix = matrix.masked_fill(pad[:, :, None] | pad[:, None, :], 0.0)
        matrix = matrix + torch.diag_embed(pad.to(dtype))
        return cls(mask=mask, matrix=matrix, cholesky=_robust_cholesky(matrix))

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """x M for x [b, r, k]."""
        if self.matrix is not None:
            return x @ self.matrix
        if self.w is not None:
            return x * self.iso[:, None, None] + (x @ self.w.transpose(1, 2)) @ self.w
        return x * self.mask[:, None, :]

    def solve(self, rhs: torch.Tensor) -> torch.Tensor:
        """rhs M^-1 for rhs [b, r, k] (zero in padded slots)."""
        if self.matrix is not None:
            return torch.cholesky_solve(rhs.transpose(1, 2), self.cholesky).transpose(1, 2)
        if self.w is not None:  # M^-1 = (I - W^T (iso I + W W^T)^-1 W) / iso
            inner = torch.cholesky_solve(self.w @ rhs.transpose(1, 2), self.small)  # [b, m, r]
            return (rhs - (self.w.transpose(1, 2) @ inner).transpose(1, 2)) / self.iso[:, None, None]
        return rhs * self.mask[:, None, :]


def _robust_cholesky(matrix: torch.Tensor) -> torch.Tensor:
    scale = matrix.diagonal(dim1=1, dim2=2).abs().mean(-1).clamp_min(_EPS)  # [b]
    eye = torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device)
    jitter = 0.0
    for _ in range(8):
        factor, info = torch.linalg.cholesky_ex(matrix + jitter * scale[:, None, None] * eye)
        if not bool(info.any()):
            return factor
        jitter = 1e-10 if jitter == 0.0 else jitter * 100
    raise ValueError("the fit's normal equations are not positive definite")


def balance(
    a: torch.Tensor, b: torch.Tensor, metric: ColumnMetric
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rewrite B A as B' A' with A' K A'^T = B'^T B' = diag(sigma). a [n, r, in], b [n, out, r].

    With G_A = La La^T and G_B = Lb Lb^T and Lb^T La = U S V^T: A' = S^1/2 V^T La^-1 A, B' = B La V S^-1/2.
    Returns A', B' and sigma [n, r] (descending), the singular values of B A in the K metric.
    """
    r = a.shape[1]
    eye = torch.eye(r, dtype=a.dtype, device=a.device)
    g_a = a @ metric.apply(a).transpose(1, 2)  # A K A^T: [n, r, r]
    g_b = b.transpose(1, 2) @ b  # B^T B: [n, r, r]
    ref = (g_a.diagonal(dim1=1, dim2=2).sum(-1) + g_b.diagonal(dim1=1, dim2=2).sum(-1)).clamp_min(_EPS)
    jitter = 1e-12 * ref[:, None, None] * eye
    la = torch.linalg.cholesky(0.5 * (g_a + g_a.transpose(1, 2)) + jitter)
    lb = torch.linalg.cholesky(0.5 * (g_b + g_b.transpose(1, 2)) + jitter)
    _, s, vh = torch.linalg.svd(lb.transpose(1, 2) @ la)
    s = s.clamp_min(1e-12 * s[:, :1].clamp_min(_EPS))
    root = s.sqrt()
    a_bal = (root[:, :, None] * vh) @ torch.linalg.solve_triangular(la, a, upper=False)
    b_bal = b @ la @ (vh.transpose(1, 2) / root[:, None, :])
    return a_bal, b_bal, s


def subspace_fit(rows: torch.Tensor, metric: ColumnMetric, basis: Basis) -> tuple[torch.Tensor, BasisMetric]:
    """Best X with X Q^T ~ rows in the K metric: X = rows K Q (Q^T K Q)^-1. rows [b, r, n]."""
    in_basis = metric.in_basis(basis)
    rhs = basis.project(metric.apply(rows)).to(rows.dtype)  # rows K Q: [b, r, k]
    return in_basis.solve(rhs), in_basis


def weighted_quad(x: torch.Tensor, m: BasisMetric, weights: torch.Tensor) -> torch.Tensor:
    """sum_j w_j x_j M x_j^T for x [b, r, k], weights [b, r] -> [b]."""
    return ((m.apply(x) * x).sum(-1) * weights).sum(-1)


def quantize_rows(
    x: torch.Tensor, ks: Sequence[int], fmts: Sequence[str], group_size: int
) -> tuple[list[Quantized], torch.Tensor]:
    """Quantize each module's [r, k_i] coefficients; returns the stored forms and their values."""
    stored, values = [], torch.zeros_like(x)
    for i, (k, fmt) in enumerate(zip(ks, fmts)):
        q = quantize(x[i, :, :k], fmt, group_size)
        stored.append(q)
        values[i, :, :k] = dequantize(q, x.dtype).to(x.device)
    return stored, values


@dataclass
class GroupFit:
    """Result for a group: stored coefficients per module and the product error in the fit metric."""

    stored_a: list[Quantized]
    stored_b: list[Quantized]
    xa: torch.Tensor  # dequantized [b, r, kA]
    xb: torch.Tensor  # dequantized [b, r, kB]
    rel_error: torch.Tensor  # [b], relative squared error in the fit metric
    rounds: int


def product_error(
    xa: torch.Tensor,
    xb: torch.Tensor,
    xa0: torch.Tensor,
    xb0: torch.Tensor,
    ma: BasisMetric,
    mb: BasisMetric,
    total: torch.Tensor,
) -> torch.Tensor:
    """|| B'A' - B^ A^ ||^2 in the fit metric, relative to || B'A' ||^2 = total, using only r x r products.

    Cross terms use the normal equations: A' K QA = XA0 MA and QB^T B' = MB XB0^T.
    """
    na = ma.apply(xa)  # [b, r, kA]
    nb = mb.apply(xb)
    cross = ((nb @ xb0.transpose(1, 2)) * (xa0 @ na.transpose(1, 2)).transpose(1, 2)).sum((1, 2))
    quad = ((nb @ xb.transpose(1, 2)) * (xa @ na.transpose(1, 2)).transpose(1, 2)).sum((1, 2))
    return ((total - 2 * cross + quad) / total.clamp_min(_EPS)).clamp_min(0.0)


def fit_group(
    a: torch.Tensor,
    b: torch.Tensor,
    metric: ColumnMetric,
    basis_a: Basis,
    basis_b: Basis,
    fmts_a: Sequence[str],
    fmts_b: Sequence[str],
    group_size: int = 64,
    rounds: int = 4,
) -> GroupFit:
    """Fit and quantize the coefficients of a group of modules. a [n, r, in], b [n, out, r] (fp64)."""
    a_bal, b_bal, sigma = balance(a, b, metric)
    total = (sigma**2).sum(-1)
    xa0, ma = subspace_fit(a_bal, metric, basis_a)
    identity = ColumnMetric(basis_b.n, len(basis_b.ks))
    xb0, mb = subspace_fit(b_bal.transpose(1, 2), identity, basis_b)

    # Round 0 quantizes the closed-form optimum; each later round refits one side given the other
    # quantized (an exact r x r least-squares solve) and quantizes the result. Per module, the round
    # with the least error wins.
    stored_a, xa = quantize_rows(xa0, basis_a.ks, fmts_a, group_size)
    stored_b, xb = quantize_rows(xb0, basis_b.ks, fmts_b, group_size)
    best_err = product_error(xa, xb, xa0, xb0, ma, mb, total)
    best_a, best_b, best_xa, best_xb = list(stored_a), list(stored_b), xa.clone(), xb.clone()
    eye = torch.eye(a.shape[1], dtype=a.dtype, device=a.device)
    ridge = 1e-12 * total[:, None, None] * eye
    for round_ in range(1, rounds):
        if round_ % 2:  # B given quantized A: XB = (XA MA XA^T)^-1 (XA MA XA0^T) XB0
            na = ma.apply(xa)
            w = torch.linalg.solve(na @ xa.transpose(1, 2) + ridge, na @ xa0.transpose(1, 2))
            stored_b, xb = quantize_rows(w @ xb0, basis_b.ks, fmts_b, group_size)
        else:  # A given quantized B: XA = (XB MB XB^T)^-1 (XB MB XB0^T) XA0
            nb = mb.apply(xb)
            z = torch.linalg.solve(nb @ xb.transpose(1, 2) + ridge, nb @ xb0.transpose(1, 2))
            stored_a, xa = quantize_rows(z @ xa0, basis_a.ks, fmts_a, group_size)
        err = product_error(xa, xb, xa0, xb0, ma, mb, total)
        for i in torch.nonzero(err < best_err).flatten().tolist():
            best_a[i], best_b[i], best_xa[i], best_xb[i] = stored_a[i], stored_b[i], xa[i], xb[i]
        best_err = torch.minimum(err, best_err)
    return GroupFit(best_a, best_b, best_xa, best_xb, best_err, rounds)
