"""The transform code's tabulated entropy models (format 3): the same bits on every machine."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest

from adapters.compress import transform_entropy as entropy
from adapters.compress.transform import _ans

# sha256 of gaussian_table(c, 300) for c in TABLE_CODES, concatenated, and of the ANS words of
# `_symbols()` coded under Models(40): written by this code on x86-64; any machine must agree, or
# artifacts written on one would not read on another.
TABLE_CODES = (1, 30, 64, 100, 180, 255)
TABLES_SHA256 = "4283e325efe46cdefd37129c4c4987b5a2dec7f201ac4ccdd7cab67ef52c8a61"
STREAM_SHA256 = "4cc07c00c5432dbf42c01770c8bb25616a4864bf268912e56a4cc0b0a377e478"


def _symbols(code: int, n: int = 500) -> np.ndarray:
    """Fixed integers of about the code's spread (no random generator: its streams may change)."""
    i = np.arange(n, dtype=np.int64)
    u = ((i * 40503 + code * 977) % 4099) / 4099.0 - 0.5  # a fixed spread-out sequence in [-0.5, 0.5)
    return np.clip(np.round(u * 3.4 * entropy.spread(code)), -40, 40).astype(np.int32)


def test_tables_and_streams_are_the_known_bits():
    h = hashlib.sha256()
    for c in TABLE_CODES:
        h.update(entropy.gaussian_table(c, 300).tobytes())
    assert h.hexdigest() == TABLES_SHA256
    coder, models = _ans().stream.stack.AnsCoder(), entropy.Models(40)
    for c in (20, 64, 90, 120):
        coder.encode_reverse(_symbols(c) + 40, models[c])
    words = coder.get_compressed()
    assert hashlib.sha256(words.astype("<u4").tobytes()).hexdigest() == STREAM_SHA256
    reader = _ans().stream.stack.AnsCoder(words)
    for c in (120, 90, 64, 20):  # a stack: last in, first out
        assert np.array_equal(reader.decode(models[c], 500) - 40, _symbols(c))
    assert reader.is_empty()


def test_spread_codes_are_the_nearest_log_step_by_exact_comparison():
    rng = np.random.default_rng(0)
    sums = rng.integers(1, 10**7, 3000)
    counts = rng.integers(1, 20000, 3000)
    for s, n in zip(sums.tolist(), counts.tolist()):
        rms = math.sqrt(s / n)
        expected = min(255, max(1, round(entropy.SPREAD_STEPS * math.log2(rms)) + entropy.SPREAD_ZERO))
        assert entropy.spread_codes(np.array([s]), n)[0] == expected
    assert entropy.spread_codes(np.array([0, 1]), 4).tolist() == [0, 48]  # 0: the row is all zero
    assert entropy.spread(entropy.SPREAD_ZERO) == 1.0 and entropy.spread(80) == 2.0


def test_exp_and_erfc_without_libm_are_accurate():
    x = -np.linspace(0, 700, 20001)
    assert np.max(np.abs(entropy._exp(x) - np.exp(x)) / np.exp(x)) < 1e-15
    for z in np.linspace(0, 6, 301).tolist():
        assert entropy._erfc(np.array(z)) == pytest.approx(math.erfc(z), rel=2e-7)


def test_a_table_is_the_binned_gaussian():
    table = entropy.gaussian_table(entropy.SPREAD_ZERO, 8)  # sigma 1
    assert table.shape == (17,) and np.array_equal(table, table[::-1])
    assert table[8] == pytest.approx(math.erf(0.5 / math.sqrt(2)), rel=1e-6)
    assert table[9] == pytest.approx(
        0.5 * (math.erf(1.5 / math.sqrt(2)) - math.erf(0.5 / math.sqrt(2))), rel=1e-6
    )
    assert table.sum() == pytest.approx(1.0, abs=1e-6)
