"""Seeded random bases for NOLA: a factor (flattened to n numbers) = P @ coefficients, P of shape [n, k].

Two families behind one interface, both generated only from Philox streams keyed by
(seed, module, factor), so any machine regenerates the same basis from the seed:

- `dense`: the paper's basis, k matrices with entries uniform(-1, 1) / sqrt(k). Building and applying
  it costs O(k * n) time and memory, which grows with the square of the module size at a fixed ratio.
- `fast`: a subsampled randomized Hadamard transform. n is split into power-of-two blocks (its binary
  expansion); in each block of size N, P = D2 H Pi D1 S: S puts the k coefficients at the first k
  positions of a fixed slot order that interleaves the blocks in proportion to their size (so the
  subspace for any k is a prefix of the one for a larger k), D1 and D2 are seeded random
  signs, Pi is a seeded affine permutation i -> (a i + b) mod N (a odd), and H is the orthonormal
  Walsh-Hadamard transform. The columns are the Walsh functions at positions Pi^-1(0..k_b), signed
  by D2: an orthonormal basis of a random subspace, as in SRHT, from 2 bits per entry plus two words
  per block. P c and P^T x cost one fast transform, O(n log n); the rotation P^T x does not depend
  on k, so one rotation serves every k (`rotate_t` then `select`).

Every basis is batched: one object serves a group of modules with the same n, each with its own key
and its own k (coefficient slots beyond a module's k are masked to zero). `expand` and `project` take
[batch, ..., k] / [batch, ..., n]: the middle dims share their module's basis (the rows of a factor).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Protocol

import torch

from . import philox

FAMILIES = ("dense", "fast")
# Dense bases larger than this many numbers are regenerated chunk by chunk on every use.
DENSE_CACHE_ELEMENTS = 1 << 26


class Basis(Protocol):
    n: int
    ks: list[int]
    kmax: int
    mask: torch.Tensor  # [batch, kmax] bool
    column_norm2: float  # mean squared norm of a column of P

    def expand(self, coeffs: torch.Tensor) -> torch.Tensor:
        """[batch, ..., kmax] coefficients -> [batch, ..., n] vectors (P c)."""
        ...

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """[batch, ..., n] vectors -> [batch, ..., kmax] (P^T x), zero in masked slots."""
        ...

    def digests(self) -> list[str]:
        """Per module, a digest (16 hex chars) of the random data defining its basis: exact on any
        device and dtype, recorded at compression and checked before reconstruction."""
        ...


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal Walsh-Hadamard transform along the last dim (a power of two); H is symmetric.

    Butterflies between two buffers, so each level reads and writes the data once; the order of
    operations is fixed, so results are bit-identical on every run.
    """
    n = x.shape[-1]
    if n & (n - 1):
        raise ValueError(f"fwht needs a power-of-two length, got {n}")
    y = x.reshape(-1, n).clone()
    buf = torch.empty_like(y)
    h = 1
    while h < n:
        src = y.view(-1, n // (2 * h), 2, h)  # pairs (a, b) at distance h
        dst = buf.view(-1, n // (2 * h), 2, h)
        torch.add(src[:, :, 0], src[:, :, 1], out=dst[:, :, 0])
        torch.sub(src[:, :, 0], src[:, :, 1], out=dst[:, :, 1])
        y, buf = buf, y
        h *= 2
    return y.mul_(1.0 / math.sqrt(n)).reshape(x.shape)


def power_of_two_blocks(n: int) -> list[tuple[int, int]]:
    """(offset, size) of the blocks of n's binary expansion, largest first."""
    blocks, offset = [], 0
    for bit in reversed(range(n.bit_length())):
        size = 1 << bit
        if n & size:
            blocks.append((offset, size))
            offset += size
    return blocks


class _Batched:
    """What every batched basis holds: n, each module's k and key, the slot mask, device and dtype."""

    def __init__(
        self,
        n: int,
        ks: Sequence[int],
        keys: Sequence[tuple[int, int]],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        if n <= 0:
            raise ValueError(f"basis dimension must be positive, got {n}")
        if not ks or len(ks) != len(keys):
            raise ValueError("one k and one key per module are needed")
        if any(k <= 0 or k > n for k in ks):
            raise ValueError(f"every k must lie in 1..{n}, got {list(ks)}")
        self.n, self.ks, self.kmax = n, list(ks), max(ks)
        self.device, self.dtype = torch.device(device), dtype
        self.keys = torch.tensor([list(k) for k in keys], dtype=torch.int64, device=self.device).reshape(
            -1, 2
        )
        self.mask = (
            torch.arange(self.kmax, device=self.device)[None, :]
            < torch.tensor(self.ks, device=self.device)[:, None]
        )


class FastBasis(_Batched):
    """Subsampled randomized Hadamard basis; see the module docstring."""

    column_norm2 = 1.0

    def __init__(
        self,
        n: int,
        ks: Sequence[int],
        keys: Sequence[tuple[int, int]],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__(n, ks, keys, device, dtype)
        key = self.keys
        # Random signs, 32 per word: [batch, n] each, from streams 0 and 1.
        self.d1 = _signs(key, n, 0, self.device, dtype)
        self.d2 = _signs(key, n, 1, self.device, dtype)
        self.blocks = power_of_two_blocks(n)
        # Per block, the affine permutation i -> (a i + b) mod N (a odd) and its inverse, from stream 2.
        words = philox.random_words(key, 0, 2 * len(self.blocks), stream=2, device="cpu").tolist()
        self._affine = []
        for j, (_, size) in enumerate(self.blocks):
            a = [(w[2 * j] | 1) & (size - 1) or 1 for w in words]
            b = [w[2 * j + 1] & (size - 1) for w in words]
            a_inv = [pow(x, -1, size) if size > 1 else 0 for x in a]
            b_inv = [(-ai * bi) % size if size > 1 else 0 for ai, bi in zip(a_inv, b)]
            self._affine.append((a, b, a_inv, b_inv))
        order = slot_order(n)[: self.kmax].to(self.device)
        self.positions = order.expand(len(self.ks), -1)  # [batch, kmax]: the same slots for every module

    def _perm(self, j: int, size: int, inverse: bool) -> torch.Tensor:
        a, b, a_inv, b_inv = self._affine[j]
        a, b = (a_inv, b_inv) if inverse else (a, b)
        a = torch.tensor(a, dtype=torch.int64, device=self.device)[:, None]
        b = torch.tensor(b, dtype=torch.int64, device=self.device)[:, None]
        return (a * torch.arange(size, device=self.device) + b) & (size - 1)  # [batch, N]

    def _gather(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        index = index.reshape(index.shape[0], *(1,) * (x.dim() - 2), index.shape[1]).expand(x.shape)
        return x.gather(-1, index)

    def _blockwise(self, x: torch.Tensor, transpose: bool) -> torch.Tensor:
        parts = []
        middle = (1,) * (x.dim() - 2)
        for j, (offset, size) in enumerate(self.blocks):
            seg = x[..., offset : offset + size]
            d1 = self.d1[:, offset : offset + size].reshape(-1, *middle, size)
            d2 = self.d2[:, offset : offset + size].reshape(-1, *middle, size)
            if transpose:  # P^T = D1 Pi^T H D2 (before selection); (Pi^T v)[j] = v[Pi^-1(j)]
                parts.append(d1 * self._gather(fwht(d2 * seg), self._perm(j, size, inverse=True)))
            else:  # P = D2 H Pi D1; (Pi u)[i] = u[Pi(i)]
                parts.append(d2 * fwht(self._gather(d1 * seg, self._perm(j, size, inverse=False))))
        return torch.cat(parts, dim=-1)

    def digests(self) -> list[str]:
        signs = torch.cat([self.d1, self.d2], dim=-1).to(torch.int8).cpu()
        perms = [
            torch.tensor([blk[0][i] for blk in self._affine] + [blk[1][i] for blk in self._affine])
            for i in range(len(self.ks))
        ]
        return [
            _digest(
                signs[i].numpy().tobytes(),
                perms[i].numpy().tobytes(),
                self.positions[i, :k].cpu().numpy().tobytes(),
            )
            for i, k in enumerate(self.ks)
        ]

    def _broadcast(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """[batch, kmax] -> [batch, ..., kmax] matching the middle dims of `like`."""
        shape = (t.shape[0], *(1,) * (like.dim() - 2), t.shape[1])
        return t.reshape(shape).expand(*like.shape[:-1], t.shape[1])

    def expand(self, coeffs: torch.Tensor) -> torch.Tensor:
        coeffs = coeffs.to(self.dtype)
        z = torch.zeros(*coeffs.shape[:-1], self.n, dtype=self.dtype, device=self.device)
        # S c: [batch, ..., n]; adding (not assigning) keeps padded slots' zeros from overwriting
        positions, mask = self._broadcast(self.positions, coeffs), self._broadcast(self.mask, coeffs)
        z.scatter_add_(-1, positions, coeffs * mask)
        return self._blockwise(z, transpose=False)

    def rotate_t(self, x: torch.Tensor) -> torch.Tensor:
        """The full rotation T^T x ([batch, ..., n]); `select` picks any k's coefficients from it."""
        return self._blockwise(x.to(self.dtype), transpose=True)

    def select(self, rotated: torch.Tensor, positions: torch.Tensor | None = None, mask=None) -> torch.Tensor:
        positions = self.positions if positions is None else positions
        mask = self.mask if mask is None else mask
        like = rotated[..., : positions.shape[-1]]
        return rotated.gather(-1, self._broadcast(positions, like)) * self._broadcast(mask, like)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return self.select(self.rotate_t(x))


def slot_order(n: int) -> torch.Tensor:
    """Positions 0..n-1 in the order coefficient slots use them: block b's t-th position comes at
    (t + 1/2) / N_b, so the first k slots take k * N_b / n positions of each block, for every k."""
    keys, positions = [], []
    for offset, size in power_of_two_blocks(n):
        keys.append((torch.arange(size, dtype=torch.float64) + 0.5) / size)
        positions.append(torch.arange(offset, offset + size))
    order = torch.argsort(torch.cat(keys), stable=True)  # ties: earlier (larger) block first
    return torch.cat(positions)[order]


class DenseBasis(_Batched):
    """The paper's dense basis: column i of P is uniform(-1, 1)^n / sqrt(k), from stream 0, row i."""

    def __init__(
        self,
        n: int,
        ks: Sequence[int],
        keys: Sequence[tuple[int, int]],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        chunk_elements: int = DENSE_CACHE_ELEMENTS,
    ):
        super().__init__(n, ks, keys, device, dtype)
        self.column_norm2 = n / 3 / (sum(self.ks) / len(self.ks))  # E[u^2] = 1/3 for u ~ U(-1, 1)
        self._scale = (1.0 / torch.tensor(self.ks, dtype=torch.float64).sqrt()).to(dtype).to(self.device)
        batch = len(self.ks)
        self._rows_per_chunk = max(1, chunk_elements // max(1, batch * n))
        self._cached = self._rows(0, self.kmax) if batch * self.kmax * n <= chunk_elements else None

    def digests(self) -> list[str]:
        count = min(self.kmax * self.n, 4096)
        words = philox.random_words(self.keys, 0, count, device=self.device).cpu()
        return [_digest(words[i].numpy().tobytes(), str(k).encode()) for i, k in enumerate(self.ks)]

    def _rows(self, start: int, stop: int) -> torch.Tensor:
        """Basis matrices start..stop as [batch, stop-start, n], zero beyond each module's k."""
        values = philox.uniform(self.keys, start * self.n, (stop - start) * self.n, device=self.device)
        rows = values.to(self.dtype).reshape(len(self.ks), stop - start, self.n)
        return rows * (self._scale[:, None, None] * self.mask[:, start:stop, None])

    def _chunks(self):
        if self._cached is not None:
            yield 0, self.kmax, self._cached
            return
        for start in range(0, self.kmax, self._rows_per_chunk):
            stop = min(self.kmax, start + self._rows_per_chunk)
            yield start, stop, self._rows(start, stop)

    def expand(self, coeffs: torch.Tensor) -> torch.Tensor:
        coeffs = coeffs.to(self.dtype)
        lead = coeffs.shape[:-1]
        c = coeffs.reshape(lead[0], -1, self.kmax)  # [batch, rows, kmax]
        out = torch.zeros(lead[0], c.shape[1], self.n, dtype=self.dtype, device=self.device)
        for start, stop, rows in self._chunks():
            out += torch.bmm(c[..., start:stop], rows)  # sum_i c_i A_i: [batch, rows, n]
        return out.reshape(*lead, self.n)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype)
        lead = x.shape[:-1]
        v = x.reshape(lead[0], -1, self.n)  # [batch, rows, n]
        out = torch.zeros(lead[0], v.shape[1], self.kmax, dtype=self.dtype, device=self.device)
        for start, stop, rows in self._chunks():
            out[..., start:stop] = torch.bmm(v, rows.transpose(1, 2))  # <A_i, x>: [batch, rows, k]
        return out.reshape(*lead, self.kmax)


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.hexdigest()[:16]


def _signs(key: torch.Tensor, n: int, stream: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[batch, n] random +-1 from the bits of stream `stream` (bit b of word j is sign 32 j + b)."""
    words = philox.random_words(key, 0, (n + 31) // 32, stream=stream, device=device)  # [batch, w]
    bits = (words[..., :, None] >> torch.arange(32, device=device)) & 1  # [batch, w, 32]
    return (bits.flatten(-2)[..., :n] * 2 - 1).to(dtype)


def make_basis(
    family: str,
    n: int,
    ks: Sequence[int],
    keys: Sequence[tuple[int, int]],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Basis:
    if family == "fast":
        return FastBasis(n, ks, keys, device, dtype)
    if family == "dense":
        return DenseBasis(n, ks, keys, device, dtype)
    raise ValueError(f"unknown basis family {family!r} (choose from {', '.join(FAMILIES)})")


def basis_key(seed: int, module: str, factor: str) -> tuple[int, int]:
    """The Philox key of one factor's basis: derived from (seed, module path, factor name)."""
    return philox.derive_key(seed, module, factor)
