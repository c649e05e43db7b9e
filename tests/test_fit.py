"""Fitting: planted solutions recovered exactly, the balanced gauge, the error formula, quantized ALS."""

from __future__ import annotations

import pytest
import torch

from adapters.compress import philox
from adapters.compress.bases import make_basis
from adapters.compress.fit import ColumnMetric, balance, fit_group, subspace_fit
from adapters.compress.stats import InputStats


def keys(n, factor):
    return [philox.derive_key(1, f"m{i}", factor) for i in range(n)]


def second_moment(n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(400, n, dtype=torch.float64, generator=gen) * torch.logspace(
        0.5, -1.5, n, dtype=torch.float64
    )
    return x.T @ x / 400


METRICS = {
    "weight": lambda n: [None, None],
    "full": lambda n: [InputStats(n, 400, full=second_moment(n).float())] * 2,
    "low-rank": lambda n: [InputStats(n, 400, full=second_moment(n).float()).compact(6)] * 2,
}


@pytest.mark.parametrize("family", ["fast", "dense"])
@pytest.mark.parametrize("metric_name", sorted(METRICS))
def test_planted_low_rank_in_subspace_is_recovered_to_machine_precision(family, metric_name):
    r, n_in, n_out, ka, kb = 3, 40, 24, 9, 7
    basis_a = make_basis(family, n_in, [ka, ka], keys(2, "A"), dtype=torch.float64)
    basis_b = make_basis(family, n_out, [kb, kb], keys(2, "B"), dtype=torch.float64)
    gen = torch.Generator().manual_seed(3)
    a = basis_a.expand(torch.randn(2, r, ka, dtype=torch.float64, generator=gen))  # rows in span(QA)
    b = basis_b.expand(torch.randn(2, r, kb, dtype=torch.float64, generator=gen)).transpose(1, 2)
    metric = ColumnMetric.from_stats(METRICS[metric_name](n_in), n_in, damp=0.01)
    xa, _ = subspace_fit(a, metric, basis_a)
    assert torch.allclose(basis_a.expand(xa), a, atol=1e-10)
    fitted = fit_group(a, b, metric, basis_a, basis_b, ["fp16"] * 2, ["fp16"] * 2, rounds=1)
    assert float(fitted.rel_error.max()) < 1e-6  # fp16 coefficients: ~1e-3 relative each
    # Without quantization the product itself is exact (the same solve fit_group starts from).
    a_bal, b_bal, _ = balance(a, b, metric)
    xa0, _ = subspace_fit(a_bal, metric, basis_a)
    xb0, _ = subspace_fit(b_bal.transpose(1, 2), ColumnMetric(n_out, 2), basis_b)
    product = basis_b.expand(xb0).transpose(1, 2) @ basis_a.expand(xa0)
    assert torch.allclose(product, b @ a, atol=1e-10)


@pytest.mark.parametrize("metric_name", sorted(METRICS))
def test_balanced_gauge_keeps_the_product_and_equalizes(metric_name):
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(2, 4, 30, dtype=torch.float64, generator=gen)
    b = torch.randn(2, 20, 4, dtype=torch.float64, generator=gen) * torch.tensor([10.0, 1, 0.1, 0.01])
    metric = ColumnMetric.from_stats(METRICS[metric_name](30), 30, damp=0.0)
    a_bal, b_bal, sigma = balance(a, b, metric)
    assert torch.allclose(b_bal @ a_bal, b @ a, atol=1e-9)
    g_a = a_bal @ metric.apply(a_bal).transpose(1, 2)
    g_b = b_bal.transpose(1, 2) @ b_bal
    tol = 1e-10 * float(sigma.max())
    assert torch.allclose(g_a, torch.diag_embed(sigma), atol=tol)
    assert torch.allclose(g_b, torch.diag_embed(sigma), atol=tol)
    assert bool((sigma[:, :-1] >= sigma[:, 1:]).all())


@pytest.mark.parametrize("family", ["fast", "dense"])
@pytest.mark.parametrize("metric_name", sorted(METRICS))
def test_reported_error_equals_the_error_of_the_expanded_factors(family, metric_name):
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(3, 4, 48, dtype=torch.float64, generator=gen)
    b = torch.randn(3, 40, 4, dtype=torch.float64, generator=gen)
    stats = [*METRICS[metric_name](48), None]
    metric = ColumnMetric.from_stats(stats[:3], 48, damp=0.0)
    basis_a = make_basis(family, 48, [12, 24, 48], keys(3, "A"), dtype=torch.float64)
    basis_b = make_basis(family, 40, [10, 20, 40], keys(3, "B"), dtype=torch.float64)
    fitted = fit_group(a, b, metric, basis_a, basis_b, ["int8", "int4", "int8"], ["int4", "ternary", "int8"])
    a_hat = basis_a.expand(fitted.xa)
    b_hat = basis_b.expand(fitted.xb).transpose(1, 2)
    k = torch.stack([torch.eye(48, dtype=torch.float64) if s is None else s.dense() for s in stats[:3]])
    diff = b @ a - b_hat @ a_hat
    direct = ((diff @ k) * diff).sum((1, 2)) / ((b @ a @ k) * (b @ a)).sum((1, 2))
    assert torch.allclose(fitted.rel_error, direct, rtol=1e-6, atol=1e-10)


def test_alternating_refits_never_hurt():
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(4, 8, 64, dtype=torch.float64, generator=gen)
    b = torch.randn(4, 64, 8, dtype=torch.float64, generator=gen)
    metric = ColumnMetric(64, 4)
    basis_a = make_basis("fast", 64, [64] * 4, keys(4, "A"), dtype=torch.float64)
    basis_b = make_basis("fast", 64, [64] * 4, keys(4, "B"), dtype=torch.float64)
    one = fit_group(a, b, metric, basis_a, basis_b, ["int2"] * 4, ["int2"] * 4, rounds=1)
    many = fit_group(a, b, metric, basis_a, basis_b, ["int2"] * 4, ["int2"] * 4, rounds=6)
    assert bool((many.rel_error <= one.rel_error).all())
    assert float(many.rel_error.mean()) < float(one.rel_error.mean())  # and here they help


def test_activation_metric_beats_weight_metric_on_its_inputs():
    n = 48
    c = second_moment(n)
    gen = torch.Generator().manual_seed(4)
    a = torch.randn(2, 4, n, dtype=torch.float64, generator=gen)
    b = torch.randn(2, 32, 4, dtype=torch.float64, generator=gen)
    basis_a = make_basis("fast", n, [8, 8], keys(2, "A"), dtype=torch.float64)
    basis_b = make_basis("fast", 32, [32, 32], keys(2, "B"), dtype=torch.float64)
    stats = [InputStats(n, 400, full=c.float())] * 2

    def output_error(metric):
        fitted = fit_group(a, b, metric, basis_a, basis_b, ["fp16"] * 2, ["fp16"] * 2, rounds=1)
        diff = b @ a - basis_b.expand(fitted.xb).transpose(1, 2) @ basis_a.expand(fitted.xa)
        return ((diff @ c) * diff).sum((1, 2)) / ((b @ a @ c) * (b @ a)).sum((1, 2))

    activation = output_error(ColumnMetric.from_stats(stats, n, damp=0.0))
    weight = output_error(ColumnMetric(n, 2))
    assert bool((activation < weight).all())
