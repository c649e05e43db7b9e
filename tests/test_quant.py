"""Coefficient quantization: exact stored sizes, round trips, error levels, packing."""

from __future__ import annotations

import math

import pytest
import torch

from adapters.compress.quant import BITS, FORMATS, Quantized, dequantize, quantize, stored_nbytes

# Relative squared error on Gaussian data, a little above the Lloyd-Max optimum of each level count.
MAX_REL_ERROR = {"fp16": 1e-6, "int8": 1e-4, "int4": 0.015, "int3": 0.06, "int2": 0.15, "ternary": 0.22}


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_size_and_error(fmt):
    torch.manual_seed(0)
    x = torch.randn(16, 1000) * torch.logspace(-6, 1, 16)[:, None]  # rows of very different scales
    q = quantize(x, fmt, 64)
    assert q.nbytes == stored_nbytes(16, 1000, fmt, 64)
    y = dequantize(q)
    rel = float(((y - x) ** 2).sum(-1).div((x**2).sum(-1)).max())
    assert rel < MAX_REL_ERROR[fmt]
    # codes + one fp16 scale per group (none for fp16) + one exponent byte per row
    overhead = (0 if fmt == "fp16" else 16 / 64) + 8 / 1000
    assert 8 * q.nbytes / x.numel() <= BITS[fmt] + overhead + 0.01


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f != "fp16"])
def test_requantizing_is_stable(fmt):
    x = torch.randn(4, 37)
    y = dequantize(quantize(x, fmt, 16))
    assert torch.allclose(dequantize(quantize(y, fmt, 16)), y, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("fmt", FORMATS)
def test_zeros_and_tiny_values(fmt):
    assert torch.equal(dequantize(quantize(torch.zeros(3, 10), fmt)), torch.zeros(3, 10))
    tiny = torch.randn(2, 50) * 1e-20
    y = dequantize(quantize(tiny, fmt))
    assert math.isfinite(float(y.abs().max()))
    err = float(((y.double() - tiny.double()) ** 2).sum() / (tiny.double() ** 2).sum())
    assert err < MAX_REL_ERROR[fmt] * 2


def test_corrupt_stored_coefficients_are_rejected():
    q = quantize(torch.randn(2, 20), "int4")
    short = Quantized(q.fmt, q.rows, q.k, q.group_size, q.exponents, q.codes[:-1], q.scales)
    with pytest.raises(ValueError, match="bytes"):
        dequantize(short)
    bad = Quantized(q.fmt, q.rows, q.k, q.group_size, q.exponents, torch.full_like(q.codes, 255), q.scales)
    with pytest.raises(ValueError, match="out of range"):
        dequantize(bad)
    back = Quantized.from_payload(q.fmt, q.rows, q.k, q.group_size, q.payload(), q.scales)
    assert torch.equal(dequantize(back), dequantize(q))


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown coefficient format"):
        quantize(torch.zeros(2, 2), "int5")
    with pytest.raises(ValueError, match=r"\[rows, k\]"):
        quantize(torch.zeros(2), "int8")
