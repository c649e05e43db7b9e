"""The fidelity gate: the Wilson bound, the floor on predictions, and the data-free proxy."""

from __future__ import annotations

import math

import pytest

from adapters.compress.gate import BASIS_AGREEMENT, BASIS_DATA_FREE, Gate, wilson_interval


def held_out(agreement: float, n: int, kl: float = 0.001) -> dict:
    return {"held_out": {"agreement": agreement, "kl": kl, "predictions": n}, "weight_rel_error": 0.5}


def test_wilson_bounds_match_the_closed_forms():
    # All n agree: the lower bound is n / (n + z^2); none agree: the upper bound is z^2 / (n + z^2).
    z = 1.6448536269514722  # one-sided 95%
    lower, upper = wilson_interval(300, 300)
    assert lower == pytest.approx(300 / (300 + z * z)) and upper == 1.0
    assert wilson_interval(0, 50)[1] == pytest.approx(z * z / (50 + z * z))
    # The bounds hold the estimate and close in as n grows.
    for n in (100, 1000, 10000):
        lo, hi = wilson_interval(round(0.97 * n), n)
        assert lo < 0.97 < hi
    widths = [math.fsum((-a, b)) for a, b in (wilson_interval(97 * k, 100 * k) for k in (1, 10, 100))]
    assert widths[0] > widths[1] > widths[2]
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_the_bound_decides_not_the_point_estimate():
    gate = Gate(min_agreement=0.99)
    # 0.995 over 400 predictions: the estimate passes, its lower 95% bound (0.985) does not.
    verdict = gate.check(held_out(0.995, 400))
    assert not verdict["passed"] and verdict["estimate"] == 0.995 and verdict["bound"] < 0.99
    assert verdict["basis"] == BASIS_AGREEMENT and verdict["predictions"] == 400 and not verdict["data_free"]
    assert "lower 95% bound" in verdict["reason"]
    # The same estimate over 8,000 predictions is evidence enough.
    passed = gate.check(held_out(0.995, 8000))
    assert passed["passed"] and 0.99 < passed["bound"] < 0.995


def test_too_few_predictions_are_judged_data_free_but_can_still_fail():
    gate = Gate(min_agreement=0.99, max_weight_error=0.6)
    few = gate.check(held_out(0.999, 100))  # below the floor of 300: the proxy decides
    assert few["basis"] == BASIS_DATA_FREE and few["data_free"] and few["passed"]
    assert "only 100 held-out predictions" in few["note"]
    # ... unless even the upper bound of a small sample is below the threshold.
    bad = gate.check(held_out(0.80, 100))
    assert not bad["passed"] and "upper bound" in bad["reason"]


def test_without_a_base_model_the_weight_error_decides():
    gate = Gate(max_weight_error=0.1)
    assert gate.check({"weight_rel_error": 0.08})["passed"]
    verdict = gate.check({"weight_rel_error": 0.12})
    assert not verdict["passed"] and verdict["basis"] == BASIS_DATA_FREE and verdict["predictions"] == 0
    assert verdict["reason"] == "weight error 0.1200 > 0.1"


def test_kl_is_judged_beside_agreement():
    verdict = Gate(min_agreement=0.9, max_kl=0.01).check(held_out(0.999, 5000, kl=0.02))
    assert not verdict["passed"] and verdict["reason"] == "KL 0.02 > 0.01"


@pytest.mark.parametrize(
    "bad",
    [
        {"min_agreement": 1.5},
        {"max_kl": -1},
        {"max_weight_error": True},
        {"confidence": 1.0},
        {"min_predictions": 10},
    ],
)
def test_bad_gates(bad):
    with pytest.raises(ValueError):
        Gate(**bad)
