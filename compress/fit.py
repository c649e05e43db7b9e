"""Fitting NOLA coefficients to a trained LoRA module, batched over modules of the same shape.

Notation for one module: delta-W = s * B A with A [r, in], B [out, r]. Each factor's rows live in a
seeded random subspace: A^ = XA QA^T (QA [in, kA], coefficients XA [r, kA]) and B^T = XB QB^T
(QB [out, kB], XB [r, kB]); row j may use only the first k_j columns of its Q (a smaller subspace
of the same basis), so important rank components can get more coefficients than the rest. The loss
is the output error on the module's inputs,

    E || (B A - B^ A^) x ||^2 = || (B A - B^ A^) C^(1/2) ||_F^2,      C = E[x x^T] (+ damping),

with C = I for a weight-space fit. Because the output side has no statistics (its metric is I), the
best pair in the two subspaces separates exactly:

    XB0 = QB-projection of B,   XA0 = A C QA (QA^T C QA)^-1,

two closed-form least-squares solves. They are done in the *balanced gauge*: B A is rewritten as
B' A' with A' C A'^T = B'^T B' = diag(sigma), so both factors carry each component's weight equally
and quantization errors on either side cost the same; in that gauge the rows decouple, so each row
is solved on its own subspace. Quantized coefficients are then improved by alternating least squares
on the bilinear problem: refit B given the quantized A, quantize, refit A given the quantized B, and
so on, each half an exact least-squares solve under the rows' subspace constraints (Gauss-Seidel over
the r rows); the best round is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .bases import Basis, FastBasis
from .quant import FactorCode
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
    def rotated_full(cls, metric: ColumnMetric, basis: FastBasis) -> BasisMetric:
        """For the fast basis and a full K: T^T K T by two rotations (O(n^2 log n)), its rows and
        columns in slot order, one Cholesky factor. Every smaller k's metric and factor are leading
        blocks of these (the slots of a smaller k are a prefix), so `prefix` costs a slice."""
        once = basis.rotate_t(metric.full)  # rows of K T
        both = basis.rotate_t(once.transpose(1, 2).contiguous()).to(metric.full.dtype)  # T^T K T
        order = basis.positions  # [b, kmax]: slots -> positions
        rows = both.gather(1, order[:, :, None].expand(-1, -1, both.shape[2]))
        matrix = rows.gather(2, order[:, None, :].expand(-1, order.shape[1], -1))
        matrix = 0.5 * (matrix + matrix.transpose(1, 2))
        pad = ~basis.mask
        matrix = matrix.masked_fill(pad[:, :, None] | pad[:, None, :], 0.0) + torch.diag_embed(
            pad.to(matrix.dtype)
        )
        return cls(mask=basis.mask, matrix=matrix, cholesky=_robust_cholesky(matrix))

    @classmethod
    def build(cls, metric: ColumnMetric, basis: Basis) -> BasisMetric:
        mask = basis.mask
        dtype = metric.full.dtype if metric.full is not None else torch.float64
        if isinstance(basis, FastBasis):
            if metric.full is not None:
                return cls.rotated_full(metric, basis)
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

    def prefix(self, k: int) -> BasisMetric:
        """M restricted to the first k slots: the metric of the smaller, nested subspace."""
        mask = self.mask[:, :k]
        if (
            self.matrix is not None
        ):  # the Cholesky factor of a leading block is the leading block of the factor
            return BasisMetric(mask=mask, matrix=self.matrix[:, :k, :k], cholesky=self.cholesky[:, :k, :k])
        if self.w is not None:
            w = self.w[:, :, :k]
            small = self.iso[:, None, None] * torch.eye(w.shape[1], dtype=w.dtype, device=w.device)
            return BasisMetric(
                mask=mask, w=w, iso=self.iso, small=torch.linalg.cholesky(small + w @ w.transpose(1, 2))
            )
        return BasisMetric(mask=mask)

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
    """Per row, w_j x_j M x_j^T for x [b, r, k], weights [b, r] -> [b, r]."""
    return (m.apply(x) * x).sum(-1) * weights


class Prefixes:
    """A metric in a basis and its restrictions to the first k slots, built once per k."""

    def __init__(self, full: BasisMetric):
        self.full = full
        self._cache: dict[int, BasisMetric] = {full.mask.shape[1]: full}

    def __call__(self, k: int) -> BasisMetric:
        if k not in self._cache:
            self._cache[k] = self.full.prefix(k)
        return self._cache[k]


def solve_rows(rhs: torch.Tensor, metric: Prefixes, ks: torch.Tensor) -> torch.Tensor:
    """Row j of rhs [b, r, kmax] solved on its own first k_j slots (ks [b, r]); rows independent."""
    out = torch.zeros_like(rhs)
    for k in sorted(set(ks.flatten().tolist()) - {0}):
        solution = metric(k).solve(rhs[..., :k])
        chosen = (ks == k)[..., None]
        out[..., :k] = torch.where(chosen, solution, out[..., :k])
    return out


def refit_rows(
    n: torch.Tensor,
    rhs: torch.Tensor,
    metric: Prefixes,
    ks: torch.Tensor,
    init: torch.Tensor,
    sweeps: int = 3,
) -> torch.Tensor:
    """argmin over X of tr(N X M X^T) - 2 tr(X^T R), row j of X on its first k_j slots.

    Gauss-Seidel over the rows: with the others fixed, row j solves N_jj x_j M = R_j - sum_i N_ji x_i M
    exactly on its subspace. N [b, r, r] is symmetric positive definite, so each sweep lowers the
    objective; when every row has the same k this converges to the unconstrained solve.
    """
    x = init.clone()
    xm = metric.full.apply(x)  # X M, kept current row by row
    rows = x.shape[1]
    diag = n.diagonal(dim1=1, dim2=2).clamp_min(_EPS)  # [b, r]
    for _ in range(sweeps):
        for j in range(rows):
            others = (n[:, j, :, None] * xm).sum(1) - n[:, j, j, None] * xm[:, j]  # sum_{i != j} N_ji x_i M
            target = ((rhs[:, j] - others) / diag[:, j, None])[:, None, :]  # [b, 1, kmax]
            row = solve_rows(target, metric, ks[:, j : j + 1])
            x[:, j] = row[:, 0]
            xm[:, j] = metric.full.apply(row)[:, 0]
    return x


@dataclass
class GroupFit:
    """Result for a group: stored coefficients per module and the product error in the fit metric."""

    stored_a: list[FactorCode]
    stored_b: list[FactorCode]
    xa: torch.Tensor  # dequantized [b, r, kA]
    xb: torch.Tensor  # dequantized [b, r, kB]
    rel_error: torch.Tensor  # [b], relative squared error in the fit metric
    rounds: int


def _encode(
    x: torch.Tensor, choices: Sequence[Choice], group_size: int
) -> tuple[list[FactorCode], torch.Tensor]:
    """Quantize each module's rows as chosen; returns the stored forms and their values."""
    stored, values = [], torch.zeros_like(x)
    for i, (ks, fmts) in enumerate(choices):
        code = FactorCode.encode(x[i].detach().cpu(), ks, fmts, group_size)
        stored.append(code)
        values[i] = code.values(x.shape[2], x.dtype).to(x.device)
    return stored, values


def product_error(xa, xb, ra, pb, ma: BasisMetric, mb: BasisMetric, total: torch.Tensor) -> torch.Tensor:
    """|| B'A' - B^ A^ ||^2 in the fit metric, relative to || B'A' ||^2 = total, from r x r products:
    <B'A', B^A^> = tr((XB PB^T)(RA XA^T)) with RA = A' K QA and PB = B'^T QB (full projections)."""
    cross = ((xb @ pb.transpose(1, 2)) * (ra @ xa.transpose(1, 2)).transpose(1, 2)).sum((1, 2))
    quad = ((mb.apply(xb) @ xb.transpose(1, 2)) * (ma.apply(xa) @ xa.transpose(1, 2)).transpose(1, 2)).sum(
        (1, 2)
    )
    return ((total - 2 * cross + quad) / total.clamp_min(_EPS)).clamp_min(0.0)


Choice = tuple[Sequence[int], Sequence[str]]  # per row: k_j and format


def fit_group(
    a: torch.Tensor,
    b: torch.Tensor,
    metric: ColumnMetric,
    basis_a: Basis,
    basis_b: Basis,
    choices_a: Sequence[Choice],
    choices_b: Sequence[Choice],
    group_size: int = 64,
    rounds: int = 4,
) -> GroupFit:
    """Fit and quantize the coefficients of a group of modules. a [n, r, in], b [n, out, r] (fp64).

    choices_*: per module, each row's k (within the basis's k for that module; 0 drops the row) and
    coefficient format.
    """
    a_bal, b_bal, sigma = balance(a, b, metric)
    total = (sigma**2).sum(-1)
    identity = ColumnMetric(basis_b.n, len(basis_b.ks))
    ra = basis_a.project(metric.apply(a_bal)).to(a.dtype)  # A' K QA: [n, r, kA]
    pb = basis_b.project(b_bal.transpose(1, 2)).to(a.dtype)  # B'^T QB: [n, r, kB]
    ma, mb = Prefixes(metric.in_basis(basis_a)), Prefixes(identity.in_basis(basis_b))
    ks_a = torch.tensor([list(ks) for ks, _ in choices_a], device=a.device)
    ks_b = torch.tensor([list(ks) for ks, _ in choices_b], device=a.device)
    # In the balanced gauge the rows decouple: each row's best coefficients on its own subspace.
    xa0, xb0 = solve_rows(ra, ma, ks_a), solve_rows(pb, mb, ks_b)

    # Round 0 quantizes that optimum; each later round refits one side given the other quantized
    # (least squares under the row constraints) and quantizes the result. Per module, the round with
    # the least error wins.
    stored_a, xa = _encode(xa0, choices_a, group_size)
    stored_b, xb = _encode(xb0, choices_b, group_size)
    best_err = product_error(xa, xb, ra, pb, ma.full, mb.full, total)
    best_a, best_b, best_xa, best_xb = list(stored_a), list(stored_b), xa.clone(), xb.clone()
    eye = torch.eye(a.shape[1], dtype=a.dtype, device=a.device)
    ridge = 1e-12 * total[:, None, None] * eye
    for round_ in range(1, rounds):
        if round_ % 2:  # B given quantized A: N = XA MA XA^T, R = XA RA^T PB
            n = ma.full.apply(xa) @ xa.transpose(1, 2) + ridge
            rhs = xa @ ra.transpose(1, 2) @ pb
            stored_b, xb = _encode(refit_rows(n, rhs, mb, ks_b, xb), choices_b, group_size)
        else:  # A given quantized B: N = XB MB XB^T, R = XB PB^T RA
            n = mb.full.apply(xb) @ xb.transpose(1, 2) + ridge
            rhs = xb @ pb.transpose(1, 2) @ ra
            stored_a, xa = _encode(refit_rows(n, rhs, ma, ks_a, xa), choices_a, group_size)
        err = product_error(xa, xb, ra, pb, ma.full, mb.full, total)
        for i in torch.nonzero(err < best_err).flatten().tolist():
            best_a[i], best_b[i], best_xa[i], best_xb[i] = stored_a[i], stored_b[i], xa[i], xb[i]
        best_err = torch.minimum(err, best_err)
    return GroupFit(best_a, best_b, best_xa, best_xb, best_err, rounds)
