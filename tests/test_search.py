"""The size search: the ladder, the bisection, and the smallest passing artifact of a real fit."""

from __future__ import annotations

import pytest

from adapters.compress.gate import Gate
from adapters.compress.nola import NolaCodec, NolaConfig
from adapters.compress.peft_io import read_adapter
from adapters.compress.search import Attempt, ladder, largest_passing, refine
from tests.factories import make_adapter

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def test_the_ladder_falls_by_sqrt2_from_the_largest_ratio_to_2x():
    assert ladder(32) == [32.0, 22.627, 16.0, 11.314, 8.0, 5.657, 4.0, 2.828, 2.0]
    assert ladder(3) == [3.0, 2.121, 2.0]
    assert ladder(40)[-2:] == [2.5, 2.0]  # 2x is always the last rung
    assert ladder(1.5) == [1.5]
    with pytest.raises(ValueError):
        ladder(0.5)


@pytest.mark.parametrize("threshold", [4.1, 4.9, 5.6])
def test_refine_bisects_between_the_passing_rung_and_the_failing_one(threshold):
    calls: list[float] = []

    def attempt(ratio: float) -> Attempt:
        calls.append(ratio)
        return Attempt(ratio, 100, "test", {"passed": ratio <= threshold})

    best, tried = refine(4.0, 5.657, attempt)
    assert [a.ratio for a in tried] == calls and len(calls) == 2
    assert calls[0] == pytest.approx((4.0 * 5.657) ** 0.5, abs=1e-3)
    passing = [r for r in calls if r <= threshold]
    assert (best.ratio if best else None) == (max(passing) if passing else None)
    # The answer lies within one last step of the true threshold.
    found = best.ratio if best else 4.0
    assert found <= threshold < min([r for r in calls if r > threshold] + [5.657])


@pytest.mark.parametrize("threshold", [0.5, 2.0, 3.0, 7.9, 8.0, 31.0, 32.0, 100.0])
def test_bisection_finds_the_largest_passing_rung_in_few_attempts(threshold):
    rungs = ladder(32)
    calls: list[float] = []

    def attempt(ratio: float) -> Attempt:
        calls.append(ratio)
        return Attempt(ratio, 100, "test", {"passed": ratio <= threshold})

    index, attempts = largest_passing(rungs, attempt)
    expected = next((i for i, r in enumerate(rungs) if r <= threshold), None)
    assert index == expected and [a.ratio for a in attempts] == calls
    assert len(calls) == len(set(calls)) <= 2 + 3  # top, bottom, then log2(9 rungs) halvings


def test_the_search_stores_the_smallest_artifact_that_passes(tmp_path):
    # Random factors: the weight error falls smoothly as the artifact grows.
    adapter = read_adapter(make_adapter(tmp_path / "adapter", r=8, target_modules=ALL_LINEAR))
    threshold = 0.05
    report = NolaCodec(NolaConfig(ratio=8), gate=Gate(max_weight_error=threshold)).compress(
        adapter, tmp_path / "a.nola"
    )
    search = report.fidelity["search"]
    assert report.fidelity["gate_passed"] and report.fidelity["gate"]["data_free"]
    assert report.fidelity["weight_rel_error"] <= threshold
    # Every rung made on its own, without a gate: the search took the largest ratio that passes.
    errors = {
        r: NolaCodec(NolaConfig(ratio=r)).compress(adapter, tmp_path / "b.nola").fidelity["weight_rel_error"]
        for r in ladder(8)
    }
    passing = [r for r, e in errors.items() if e <= threshold]
    failing = [r for r, e in errors.items() if e > threshold]
    assert passing and failing  # the search had something to find
    # The largest passing rung, or a size between it and the failing rung above (refined).
    above = min([r for r in failing if r > max(passing)], default=None)
    assert max(passing) <= search["chosen_ratio"] < (above or float("inf"))
    refined = [a for a in search["attempts"] if a["ratio"] not in errors]
    assert all(a["passed"] == (a["ratio"] <= search["chosen_ratio"]) for a in refined)
    assert report.ratio == pytest.approx(search["chosen_ratio"], rel=0.03)
