"""The transform code's entropy models (format 3): one probability table per spread code.

Every column of B'' and row of A'' is coded under a Gaussian of known spread, binned to the integers
(see transform.py). Format 2 built a quantized-Gaussian model per symbol, which costs an inverse-CDF
search per symbol when decoding. Here the spread is one of 255 log-scale codes, for A's rows too
(computed from the decoded B column, like format 2's exact spread), so the Gaussian of each code is
tabulated once into a categorical model over -bound..bound, and each column is then coded with one
vectorized call (`constriction`'s Categorical, a binary search in a small table per symbol).

A reader must build the very same tables on any machine, so nothing here calls a platform's libm:
the spread thresholds and spreads come from a table of 2^(j/16) written out bit by bit, exp is a
Cody-Waite reduction plus a fixed polynomial, erfc a fixed rational form (Numerical Recipes' erfcc,
relative error below 1.2e-7, which only shapes the model), all in float64 arithmetic that IEEE
rounds the same everywhere; constriction turns the same float table into the same fixed-point one.
"""

from __future__ import annotations

import numpy as np

# Log-scale spread codes: spread = 2 ** ((code - SPREAD_ZERO) / SPREAD_STEPS), code 1..255; 0: all zero.
SPREAD_ZERO, SPREAD_STEPS = 64, 16
# 2 ** (j / 16), j = 0..15, correctly rounded (checked against 60-digit decimal arithmetic).
_ROOTS = np.array(
    [
        float.fromhex(h)
        for h in (
            "0x1.0000000000000p+0",
            "0x1.0b5586cf9890fp+0",
            "0x1.172b83c7d517bp+0",
            "0x1.2387a6e756238p+0",
            "0x1.306fe0a31b715p+0",
            "0x1.3dea64c123422p+0",
            "0x1.4bfdad5362a27p+0",
            "0x1.5ab07dd485429p+0",
            "0x1.6a09e667f3bcdp+0",
            "0x1.7a11473eb0187p+0",
            "0x1.8ace5422aa0dbp+0",
            "0x1.9c49182a3f090p+0",
            "0x1.ae89f995ad3adp+0",
            "0x1.c199bdd85529cp+0",
            "0x1.d5818dcfba487p+0",
            "0x1.ea4afa2a490dap+0",
        )
    ]
)


def _pow2_16(e: np.ndarray | int) -> np.ndarray:
    """2 ** (e / 16) for integers e, exactly the correctly rounded value."""
    e = np.asarray(e, dtype=np.int64)
    return np.ldexp(_ROOTS[e % 16], e // 16)


# Code c (2..255) starts where the mean square reaches 2 ** ((2c - 129) / 16), i.e. where
# round(16 log2(rms)) + SPREAD_ZERO reaches c.
_THRESHOLDS = _pow2_16(2 * np.arange(2, 256) - 2 * SPREAD_ZERO - 1)


def spread_codes(sum_squares: np.ndarray, count: int) -> np.ndarray:
    """Per row, the spread code of integers with these sums of squares over `count` entries (0: all
    zero): the nearest code to their RMS on the log scale, by exact comparisons."""
    sums = np.asarray(sum_squares, dtype=np.int64)
    codes = 1 + np.searchsorted(_THRESHOLDS, sums / float(count), side="right")
    return np.where(sums > 0, codes, 0).astype(np.uint8)


def spread(code: int) -> float:
    return float(_pow2_16(int(code) - SPREAD_ZERO))


_LN2_HI, _LN2_LO = 6.93145751953125e-1, 1.42860682030941723212e-6  # fdlibm's split of ln 2
_INV_LN2 = 1.44269504088896338700e00
_EXP_TAYLOR = [1.0 / float(np.prod(np.arange(1, k + 1, dtype=np.float64))) for k in range(14)]


def _exp(x: np.ndarray) -> np.ndarray:
    """exp(x) for x <= 0 with basic float64 operations only (the same bits on every machine)."""
    x = np.maximum(np.asarray(x, dtype=np.float64), -740.0)
    n = np.floor(x * _INV_LN2 + 0.5)
    r = (x - n * _LN2_HI) - n * _LN2_LO  # |r| <= 0.35: the Taylor polynomial below is exact to 1 ulp
    p = np.full_like(r, _EXP_TAYLOR[-1])
    for c in reversed(_EXP_TAYLOR[:-1]):
        p = p * r + c
    return np.ldexp(p, n.astype(np.int64))


_ERFC = (
    -1.26551223,
    1.00002368,
    0.37409196,
    0.09678418,
    -0.18628806,
    0.27886807,
    -1.13520398,
    1.48851587,
    -0.82215223,
    0.17087277,
)


def _erfc(z: np.ndarray) -> np.ndarray:
    """erfc(z) for z >= 0 (Numerical Recipes' erfcc)."""
    t = 1.0 / (1.0 + 0.5 * z)
    poly = np.full_like(t, _ERFC[-1])
    for c in reversed(_ERFC[:-1]):
        poly = poly * t + c
    return t * _exp(poly - z * z)


_SQRT2 = float.fromhex("0x1.6a09e667f3bcdp+0")


def gaussian_table(code: int, bound: int) -> np.ndarray:
    """P(round(X) = k), X ~ N(0, spread(code)^2), for k = -bound..bound (unnormalized tails beyond)."""
    width = spread(code) * _SQRT2
    edges = (np.arange(bound + 1, dtype=np.float64) + 0.5) / width  # (k + 1/2) / (sigma sqrt 2)
    tail = 0.5 * _erfc(edges)  # P(X > k + 1/2), k = 0..bound
    half = np.maximum(tail[:-1] - tail[1:], 0.0)  # k = 1..bound
    centre = np.array([max(1.0 - 2.0 * tail[0], 0.0)])
    return np.concatenate([half[::-1], centre, half])


class Models:
    """Categorical models by spread code for one alphabet -bound..bound, built when first needed."""

    def __init__(self, bound: int):
        import constriction

        self.bound = bound
        self._categorical = constriction.stream.model.Categorical
        self._models: dict[int, object] = {}

    def __getitem__(self, code: int):
        model = self._models.get(code)
        if model is None:
            model = self._categorical(gaussian_table(code, self.bound), perfect=False)
            self._models[code] = model
        return model
