"""The byte allocation: budget respected; optimal on the near-convex tables real factors give."""

from __future__ import annotations

import itertools
import random

import pytest

from adapters.compress.allocate import Candidate, allocate, k_grid, pareto


def convex_units(seed: int, n_units: int = 6):
    """Error falling geometrically with bytes, at unit-specific rates: what quantized fits give."""
    rng = random.Random(seed)
    units = []
    for _ in range(n_units):
        energy, rate = rng.uniform(1, 10), rng.uniform(0.02, 0.2)
        sizes = sorted(rng.sample(range(1, 80), 5))
        units.append([Candidate(error=energy * 2 ** (-rate * s), nbytes=s, option=s) for s in sizes])
    return units


@pytest.mark.parametrize("seed", range(10))
def test_allocation_matches_exhaustive_search_on_convex_tables(seed):
    units = convex_units(seed)
    budget = random.Random(seed).randint(60, 300)
    chosen = allocate(units, budget)
    assert sum(c.nbytes for c in chosen) <= budget
    feasible = [c for c in itertools.product(*units) if sum(x.nbytes for x in c) <= budget]
    best = min(sum(x.error for x in combo) for combo in feasible)
    assert sum(c.error for c in chosen) <= best * 1.05 + 1e-12


@pytest.mark.parametrize("seed", range(10))
def test_any_table_gets_a_feasible_allocation_that_uses_the_budget(seed):
    rng = random.Random(seed)
    units = [
        [Candidate(error=rng.uniform(0, 10), nbytes=s, option=s) for s in sorted(rng.sample(range(1, 60), 5))]
        for _ in range(5)
    ]
    floor = sum(min(c.nbytes for c in u) for u in units)
    budget = floor + rng.randint(0, 100)
    chosen = allocate(units, budget)
    assert sum(c.nbytes for c in chosen) <= budget
    # No single upgrade that fits the leftover bytes would lower the error (greedy stops only then).
    left = budget - sum(c.nbytes for c in chosen)
    for unit, pick in zip(units, chosen):
        for cand in unit:
            assert not (cand.error < pick.error and cand.nbytes - pick.nbytes <= left)


def test_an_impossible_budget_takes_the_smallest_of_each():
    units = convex_units(0)
    chosen = allocate(units, 1)
    assert [c.nbytes for c in chosen] == [min(x.nbytes for x in u) for u in units]


def test_pareto_keeps_what_nothing_beats():
    cands = [Candidate(5, 10), Candidate(4, 12), Candidate(6, 11), Candidate(1, 30), Candidate(2, 30)]
    assert [(c.error, c.nbytes) for c in pareto(cands)] == [(5, 10), (4, 12), (1, 30)]


def test_k_grid():
    assert k_grid(1) == [1]
    grid = k_grid(4096)
    assert grid[0] == 64 and grid[-1] == 4096 and grid == sorted(set(grid))
