"""Coefficient quantization: symmetric uniform codes with one scale per group, packed into bytes.

Coefficients of a factor form a matrix [rows, k]; each row is cut into groups of group_size (the last
may be shorter), each with its own scale. Scales are searched per group for the least
squared error (for few levels, clipping the largest values beats scaling to the maximum), then stored
as fp16 relative to a power-of-two exponent per row (one int8), so rows of very different magnitude
(the balanced gauge gives row j a norm of sqrt(sigma_j)) all keep full fp16 precision. Quantization
uses the stored scale, so `dequantize(quantize(x))` is exactly what a reader rebuilds.

Formats, with their cost per coefficient:
  fp16     16 bits, no scales
  int8     [-127, 127]
  int4     [-7, 7]
  int3     [-3, 3]
  int2     {-1.5, -0.5, 0.5, 1.5} (4 levels, no zero: better for bell-shaped values at 2 bits)
  ternary  {-1, 0, 1}, five codes per byte (1.6 bits)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

# name -> (lowest code, highest code, offset added to codes, bits per stored code)
# int2 codes are half-integers: q in {-1.5, -0.5, 0.5, 1.5} is stored as q + 1.5.
_LEVELS: dict[str, tuple[float, float, float, int]] = {
    "int8": (-127, 127, 127, 8),
    "int4": (-7, 7, 7, 4),
    "int3": (-3, 3, 3, 3),
    "int2": (-1.5, 1.5, 1.5, 2),
    "ternary": (-1, 1, 1, 0),  # packed in base 3
}
FORMATS = ("fp16", *_LEVELS)
BITS: dict[str, float] = {"fp16": 16, "int8": 8, "int4": 4, "int3": 3, "int2": 2, "ternary": 1.6}
# Scales tried per group, as fractions of max|x| / qmax: the fewer the levels, the more clipping pays.
_SCALE_FRACTIONS = {
    "int8": (1.0, 0.9),
    "int4": (1.0, 0.9, 0.8, 0.7),
    "int3": (1.0, 0.9, 0.8, 0.7, 0.6),
    "int2": (1.0, 0.8, 0.7, 0.6, 0.5, 0.42, 0.35),
    "ternary": (1.0, 0.7, 0.6, 0.5, 0.42, 0.35, 0.28),
}


@dataclass
class Quantized:
    """One factor's coefficients in stored form."""

    fmt: str
    rows: int
    k: int
    group_size: int
    exponents: torch.Tensor  # int8 [rows]: row values (fp16) or scales are times 2**exponent
    codes: torch.Tensor  # uint8, packed
    scales: torch.Tensor  # fp16 [rows, groups] flattened (empty for fp16)

    @property
    def nbytes(self) -> int:
        return self.exponents.numel() + self.codes.numel() + 2 * self.scales.numel()

    def payload(self) -> torch.Tensor:
        """Exponents then codes, as one byte string (scales are stored apart, as fp16)."""
        return torch.cat([self.exponents.view(torch.uint8), self.codes])

    @classmethod
    def from_payload(
        cls, fmt: str, rows: int, k: int, group_size: int, payload: torch.Tensor, scales: torch.Tensor
    ) -> Quantized:
        if payload.numel() < rows:
            raise ValueError("stored coefficients are shorter than their exponents")
        exponents = payload[:rows].clone().view(torch.int8)
        return cls(fmt, rows, k, group_size, exponents, payload[rows:], scales)


def groups_per_row(k: int, group_size: int) -> int:
    return max(1, math.ceil(k / group_size))


def stored_nbytes(rows: int, k: int, fmt: str, group_size: int) -> int:
    """Bytes `quantize` uses for a [rows, k] coefficient matrix (exponents, codes and scales)."""
    if fmt == "fp16":
        return rows + 2 * rows * k
    n = rows * k
    codes = math.ceil(n / 5) if fmt == "ternary" else math.ceil(n * _LEVELS[fmt][3] / 8)
    return rows + codes + 2 * rows * groups_per_row(k, group_size)


def _row_exponents(peak: torch.Tensor) -> torch.Tensor:
    """floor(log2(peak)) per row, 0 for empty rows, within int8."""
    safe = torch.where(peak > 0, peak, torch.ones_like(peak))
    return torch.floor(torch.log2(safe)).clamp(-127, 127) * (peak > 0)


def _grouped(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """[rows, k] -> [rows, groups, group_size], the last group padded with zeros."""
    rows, k = x.shape
    groups = groups_per_row(k, group_size)
    padded = torch.zeros(rows, groups * group_size, dtype=x.dtype, device=x.device)
    padded[:, :k] = x
    return padded.reshape(rows, groups, group_size)


def _round(x: torch.Tensor, fmt: str) -> torch.Tensor:
    lo, hi, _, _ = _LEVELS[fmt]
    if fmt == "int2":  # mid-rise: nearest of +-0.5, +-1.5
        return (torch.floor(x) + 0.5).clamp(lo, hi)
    return torch.round(x).clamp(lo, hi)


def _check_args(x: torch.Tensor, fmt: str, group_size: int) -> None:
    if x.dim() != 2:
        raise ValueError(f"quantize takes a [rows, k] matrix, got shape {tuple(x.shape)}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown coefficient format {fmt!r} (choose from {', '.join(FORMATS)})")
    if group_size <= 0:
        raise ValueError("group_size must be positive")


def _fit_codes(x: torch.Tensor, fmt: str, group_size: int):
    """Search each group's scale; returns (codes [rows, groups, gs] as levels, scales as stored
    relative to 2**exponent [rows, groups], exponents [rows], 2**exponent [rows, 1, 1])."""
    grouped = _grouped(x, group_size)  # [rows, groups, gs]
    peak = grouped.abs().amax(dim=-1)  # [rows, groups]
    qmax = _LEVELS[fmt][1]
    exps = _row_exponents(peak.amax(dim=1) / qmax) if peak.numel() else torch.zeros(x.shape[0])
    unit = torch.exp2(exps)[:, None]  # [rows, 1]
    best_err = torch.full_like(peak, math.inf)
    best_rel = torch.zeros_like(peak)
    valid = _grouped(torch.ones(1, x.shape[1], dtype=x.dtype, device=x.device), group_size)  # padding: 0
    for fraction in _SCALE_FRACTIONS[fmt]:
        # The scale as stored (fp16 relative to the row's 2**exponent): the search sees what a reader gets.
        rel = (peak * fraction / qmax / unit).to(torch.float16).to(x.dtype)
        scale = (rel * unit)[..., None]
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        err = (((grouped - _round(grouped / safe, fmt) * scale) ** 2) * valid).sum(-1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_rel = torch.where(better, rel, best_rel)
    scale = (best_rel * unit)[..., None]
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    levels = _round(grouped / safe, fmt) * (scale > 0)
    return levels, best_rel, exps, unit


def fake_quantize(x: torch.Tensor, fmt: str, group_size: int = 64) -> torch.Tensor:
    """What `dequantize(quantize(x))` gives, without packing (for searching formats quickly)."""
    _check_args(x, fmt, group_size)
    if fmt == "fp16":
        return dequantize(quantize(x, fmt, group_size), x.dtype)
    xf = x.detach().to(torch.float32)
    levels, rel, _, unit = _fit_codes(xf, fmt, group_size)
    values = levels * (rel.to(torch.float16).to(torch.float32) * unit)[..., None]
    return values.reshape(x.shape[0], -1)[:, : x.shape[1]].to(x.dtype)


def quantize(x: torch.Tensor, fmt: str, group_size: int = 64) -> Quantized:
    """Quantize a [rows, k] coefficient matrix."""
    _check_args(x, fmt, group_size)
    rows, k = x.shape
    x = x.detach().to(torch.float32).cpu()
    if fmt == "fp16":
        exps = _row_exponents(x.abs().amax(dim=1)) if k else torch.zeros(rows)
        values = (x * torch.exp2(-exps)[:, None]).to(torch.float16)  # in [-2, 2): full fp16 precision
        codes = values.reshape(-1).view(torch.uint8)
        empty = torch.empty(0, dtype=torch.float16)
        return Quantized(fmt, rows, k, group_size, exps.to(torch.int8), codes, empty)
    levels, rel, exps, _ = _fit_codes(x, fmt, group_size)
    codes = _pack((levels.reshape(rows, -1)[:, :k] + _LEVELS[fmt][2]).to(torch.uint8).reshape(-1), fmt)
    return Quantized(fmt, rows, k, group_size, exps.to(torch.int8), codes, rel.to(torch.float16).reshape(-1))


def dequantize(q: Quantized, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Rebuild the [rows, k] coefficients."""
    if q.exponents.numel() != q.rows:
        raise ValueError(f"stored coefficients have {q.exponents.numel()} exponents for {q.rows} rows")
    unit = torch.exp2(q.exponents.to(torch.float32))[:, None]  # [rows, 1]
    if q.fmt == "fp16":
        if q.codes.numel() != 2 * q.rows * q.k:
            raise ValueError(f"stored coefficients have {q.codes.numel()} bytes, expected {2 * q.rows * q.k}")
        values = q.codes.clone().view(torch.float16).to(torch.float32)  # clone: align to 2 bytes
        return (values.reshape(q.rows, q.k) * unit).to(dtype)
    lo, _, offset, _ = _LEVELS[q.fmt]
    groups = groups_per_row(q.k, q.group_size)
    expected = stored_nbytes(q.rows, q.k, q.fmt, q.group_size)
    if q.nbytes != expected or q.scales.numel() != q.rows * groups:
        raise ValueError(f"stored coefficients have {q.nbytes} bytes, expected {expected}")
    codes = _unpack(q.codes, q.fmt, q.rows * q.k).to(torch.float32) - offset
    if codes.numel() and (codes.min() < lo or codes.max() > -lo):
        raise ValueError("stored coefficient codes are out of range")
    scales = q.scales.to(torch.float32).reshape(q.rows, groups) * unit  # [rows, groups]
    values = _grouped(codes.reshape(q.rows, q.k), q.group_size) * scales[..., None]
    return values.reshape(q.rows, -1)[:, : q.k].to(dtype)


def _pack(codes: torch.Tensor, fmt: str) -> torch.Tensor:
    """Unsigned codes [n] -> bytes."""
    if fmt == "ternary":
        padded = torch.cat([codes, codes.new_zeros(-codes.numel() % 5)]).reshape(-1, 5).to(torch.int32)
        weights = torch.tensor([1, 3, 9, 27, 81], dtype=torch.int32)
        return (padded * weights).sum(-1).to(torch.uint8)
    bits = _LEVELS[fmt][3]
    if bits == 8:
        return codes.clone()
    shifts = torch.arange(bits, dtype=torch.uint8)
    stream = ((codes[:, None] >> shifts) & 1).reshape(-1)  # little-endian bits of each code
    stream = torch.cat([stream, stream.new_zeros(-stream.numel() % 8)]).reshape(-1, 8)
    return (stream << torch.arange(8, dtype=torch.uint8)).sum(-1, dtype=torch.int32).to(torch.uint8)


def _unpack(data: torch.Tensor, fmt: str, n: int) -> torch.Tensor:
    data = data.to(torch.int32)
    if fmt == "ternary":
        digits = (data[:, None] // torch.tensor([1, 3, 9, 27, 81], dtype=torch.int32)) % 3
        return digits.reshape(-1)[:n]
    bits = _LEVELS[fmt][3]
    if bits == 8:
        return data[:n]
    stream = ((data[:, None] >> torch.arange(8, dtype=torch.int32)) & 1).reshape(-1)
    stream = stream[: n * bits].reshape(n, bits)
    return (stream << torch.arange(bits, dtype=torch.int32)).sum(-1)


@dataclass
class FactorCode:
    """A factor's coefficients in stored form, row by row: row j has k_j coefficients (0: dropped)
    in format fmt_j. Rows of the balanced gauge differ in importance, so each gets its own size."""

    ks: list[int]
    fmts: list[str]
    group_size: int
    rows: list[Quantized | None]  # None for a dropped row

    @property
    def kmax(self) -> int:
        return max(self.ks, default=0)

    @property
    def nbytes(self) -> int:
        return sum(q.nbytes for q in self.rows if q is not None)

    def payload(self) -> torch.Tensor:
        parts = [q.payload() for q in self.rows if q is not None]
        return torch.cat(parts) if parts else torch.empty(0, dtype=torch.uint8)

    def scales(self) -> torch.Tensor:
        parts = [q.scales for q in self.rows if q is not None]
        return torch.cat(parts) if parts else torch.empty(0, dtype=torch.float16)

    def values(self, kmax: int | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """[rows, kmax] coefficients, zero beyond each row's k."""
        out = torch.zeros(len(self.ks), kmax if kmax is not None else max(1, self.kmax), dtype=dtype)
        for j, q in enumerate(self.rows):
            if q is not None:
                out[j, : q.k] = dequantize(q, dtype)[0]
        return out

    @classmethod
    def encode(cls, x: torch.Tensor, ks: Sequence[int], fmts: Sequence[str], group_size: int) -> FactorCode:
        """Quantize row j of x [rows, >= k_j] to its first k_j coefficients in format fmt_j."""
        rows = [
            quantize(x[j : j + 1, :k], fmt, group_size) if k else None
            for j, (k, fmt) in enumerate(zip(ks, fmts))
        ]
        return cls(list(ks), list(fmts), group_size, rows)

    @classmethod
    def decode(
        cls,
        ks: Sequence[int],
        fmts: Sequence[str],
        group_size: int,
        payload: torch.Tensor,
        scales: torch.Tensor,
    ) -> FactorCode:
        """Split stored bytes back into rows; ValueError when the sizes do not add up."""
        rows: list[Quantized | None] = []
        at_payload = at_scales = 0
        for k, fmt in zip(ks, fmts):
            if not k:
                rows.append(None)
                continue
            n_scales = 0 if fmt == "fp16" else groups_per_row(k, group_size)
            n_payload = stored_nbytes(1, k, fmt, group_size) - 2 * n_scales
            part = payload[at_payload : at_payload + n_payload]
            row_scales = scales[at_scales : at_scales + n_scales]
            if part.numel() != n_payload or row_scales.numel() != n_scales:
                raise ValueError("stored coefficients are shorter than their rows need")
            rows.append(Quantized.from_payload(fmt, 1, k, group_size, part, row_scales))
            at_payload += n_payload
            at_scales += n_scales
        if at_payload != payload.numel() or at_scales != scales.numel():
            raise ValueError("stored coefficients are longer than their rows need")
        return cls(list(ks), list(fmts), group_size, rows)


def row_nbytes(k: int, fmt: str, group_size: int) -> int:
    """Stored bytes of one row of k coefficients (0 for a dropped row)."""
    return stored_nbytes(1, k, fmt, group_size) if k else 0
