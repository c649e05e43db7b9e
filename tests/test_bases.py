"""Basis families: adjointness, orthonormality, subspace statistics, bounded memory."""

from __future__ import annotations

import pytest
import torch

from adapters.compress import philox
from adapters.compress.bases import DenseBasis, FastBasis, fwht, make_basis, power_of_two_blocks, slot_order
from tests.devices import DEVICES


def keys(n: int, factor: str = "A") -> list[tuple[int, int]]:
    return [philox.derive_key(0, f"module{i}", factor) for i in range(n)]


def test_fwht_is_orthonormal_and_symmetric():
    x = torch.randn(3, 64, dtype=torch.float64)
    assert torch.allclose(fwht(fwht(x)), x, atol=1e-12)
    assert torch.allclose(fwht(x).norm(dim=-1), x.norm(dim=-1))
    with pytest.raises(ValueError, match="power-of-two"):
        fwht(torch.zeros(12))


def test_blocks_and_nested_slot_order():
    assert power_of_two_blocks(176128) == [(0, 131072), (131072, 32768), (163840, 8192), (172032, 4096)]
    order = slot_order(11008)
    assert sorted(order.tolist()) == list(range(11008))
    for k in (1, 100, 1000, 5000):  # any prefix takes each block in proportion to its size
        for offset, size in power_of_two_blocks(11008):
            taken = int(((order[:k] >= offset) & (order[:k] < offset + size)).sum())
            assert abs(taken - k * size / 11008) <= 1


def test_a_smaller_k_spans_a_subspace_of_a_larger_one():
    small = FastBasis(96, [10], keys(1), dtype=torch.float64)
    large = FastBasis(96, [50], keys(1), dtype=torch.float64)
    c = torch.zeros(1, 50, dtype=torch.float64)
    c[0, :10] = torch.randn(10, dtype=torch.float64)
    assert torch.allclose(small.expand(c[:, :10]), large.expand(c), atol=1e-12)


@pytest.mark.parametrize("family", ["fast", "dense"])
@pytest.mark.parametrize("n", [96, 128, 3072])
def test_expand_and_project_are_adjoint(family, n):
    basis = make_basis(family, n, [n // 4, n // 2, n], keys(3), dtype=torch.float64)
    c = torch.randn(3, 5, basis.kmax, dtype=torch.float64) * basis.mask[:, None]
    x = torch.randn(3, 5, n, dtype=torch.float64)
    assert torch.allclose((basis.expand(c) * x).sum(-1), (c * basis.project(x)).sum(-1), atol=1e-9)
    # Rows share their module's basis.
    assert torch.allclose(basis.expand(c[:, 2:3])[:, 0], basis.expand(c)[:, 2], atol=1e-12)


@pytest.mark.parametrize("n", [96, 3072])
def test_fast_basis_has_orthonormal_columns(n):
    basis = FastBasis(n, [n // 3, n], keys(2), dtype=torch.float64)
    c = torch.randn(2, basis.kmax, dtype=torch.float64) * basis.mask
    assert torch.allclose(basis.project(basis.expand(c)), c, atol=1e-12)


def test_fast_subspace_keeps_k_over_n_of_energy():
    n, k, trials = 1024, 256, 64
    basis = FastBasis(n, [k] * trials, keys(trials))
    structured = {
        "gaussian": torch.randn(trials, n),
        "constant": torch.ones(trials, n),
        "smooth": torch.sin(torch.arange(n) / 40.0).expand(trials, n),
        "spike": torch.nn.functional.one_hot(torch.tensor([7] * trials), n).float(),
    }
    for name, v in structured.items():
        kept = basis.expand(basis.project(v)).norm(dim=-1) ** 2 / v.norm(dim=-1) ** 2
        assert abs(float(kept.mean()) - k / n) < 0.05, name


def test_dense_basis_matches_the_paper_and_chunks():
    n, ks = 50, [7, 20]
    whole = DenseBasis(n, ks, keys(2), dtype=torch.float64)
    chunked = DenseBasis(n, ks, keys(2), dtype=torch.float64, chunk_elements=300)
    assert chunked._cached is None and whole._cached is not None
    c = torch.randn(2, 20, dtype=torch.float64) * whole.mask
    assert torch.allclose(whole.expand(c), chunked.expand(c), atol=1e-12)
    # Basis matrix i of a module is uniform(-1, 1) / sqrt(k) from row i of its stream.
    first = whole.expand(torch.nn.functional.one_hot(torch.tensor([0, 0]), 20).double())[0]
    expected = philox.uniform(keys(2)[0], 0, n).double() / 7**0.5
    assert torch.allclose(first, expected, atol=1e-7)


def test_bad_arguments():
    with pytest.raises(ValueError, match="lie in"):
        make_basis("fast", 10, [11], keys(1))
    with pytest.raises(ValueError, match="one k and one key"):
        make_basis("fast", 10, [2, 3], keys(1))
    with pytest.raises(ValueError, match="unknown basis family"):
        make_basis("sparse", 10, [2], keys(1))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("family", ["fast", "dense"])
def test_same_basis_on_every_device(device, family):
    c = torch.randn(2, 3, 30, dtype=torch.float64)
    ref = make_basis(family, 200, [30, 30], keys(2), "cpu", torch.float64).expand(c)
    out = make_basis(family, 200, [30, 30], keys(2), device, torch.float64).expand(c.to(device))
    assert torch.allclose(out.cpu(), ref, atol=1e-12)
