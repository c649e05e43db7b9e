"""Philox4x32-10 (Salmon et al., SC'11), a counter-based random generator in plain integer tensor ops.

A counter-based generator is a pure function of (key, counter): no hidden state, no dependence on the
launch grid, so the same key and counter give the same bits on CPU and CUDA, on any machine and torch
version. That is what makes seeded bases portable; `torch.manual_seed` streams are not (they differ
between devices and GPU models).

Words are 32-bit values held in int64 tensors; products are split into 16-bit halves so no
intermediate overflows a signed 64-bit integer. Floats are made from the top 24 bits of each word,
which fp32 represents exactly, so the conversion is exact on every device too.
"""

from __future__ import annotations

import hashlib

import torch

GENERATOR = "philox4x32-10"
GENERATOR_VERSION = 1

_MASK32 = 0xFFFFFFFF
_M0, _M1 = 0xD2511F53, 0xCD9E8D57  # round multipliers
_W0, _W1 = 0x9E3779B9, 0xBB67AE85  # key schedule (Weyl) increments
_ROUNDS = 10


def _mulhilo(m: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of the 64-bit product m * x, for 32-bit m and x held in int64."""
    low16 = m * (x & 0xFFFF)  # < 2**48
    high16 = m * (x >> 16)  # < 2**48; m * x = high16 * 2**16 + low16
    mid = ((high16 & 0xFFFF) << 16) + low16  # < 2**49
    return (high16 >> 16) + (mid >> 32), mid & _MASK32


def philox4x32(counter: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Philox4x32-10 block function.

    counter: [..., 4] int64 words in [0, 2**32); key: [..., 2] (broadcastable). Returns [..., 4] words.
    """
    if counter.dtype != torch.int64 or key.dtype != torch.int64:
        raise ValueError("philox4x32 takes int64 tensors holding 32-bit words")
    if counter.shape[-1] != 4 or key.shape[-1] != 2:
        raise ValueError(f"counter must be [..., 4] and key [..., 2], got {counter.shape} and {key.shape}")
    c0, c1, c2, c3 = counter.unbind(-1)
    k0, k1 = key.unbind(-1)
    for round_ in range(_ROUNDS):
        if round_:
            k0 = (k0 + _W0) & _MASK32
            k1 = (k1 + _W1) & _MASK32
        hi0, lo0 = _mulhilo(_M0, c0)
        hi1, lo1 = _mulhilo(_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return torch.stack((c0, c1, c2, c3), dim=-1)


def derive_key(seed: int, *names: str) -> tuple[int, int]:
    """A 64-bit Philox key from a seed and names (e.g. a module path and "A"), stable everywhere."""
    text = "\x1f".join([str(int(seed)), *names]).encode()
    digest = hashlib.sha256(text).digest()
    return int.from_bytes(digest[0:4], "little"), int.from_bytes(digest[4:8], "little")


def random_words(
    keys: torch.Tensor | tuple[int, int],
    start: int,
    count: int,
    stream: int = 0,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Words `start .. start+count` of the stream (key, stream): [..., count] int64 in [0, 2**32).

    keys: one (k0, k1) pair or an int64 tensor [batch, 2] of keys (one stream per row).
    Word j comes from counter (j // 4, 0, stream, 0), lane j % 4, so any slice of a stream can be
    generated on its own: chunked generation gives the same words as generating everything at once.
    """
    if count < 0 or start < 0:
        raise ValueError("start and count must be non-negative")
    key = torch.as_tensor(keys, dtype=torch.int64, device=device)
    batch = key.shape[:-1]
    first, last = start // 4, (start + count + 3) // 4
    blocks = torch.arange(first, last, dtype=torch.int64, device=device)  # [nb]
    counter = torch.zeros((*batch, blocks.numel(), 4), dtype=torch.int64, device=device)
    counter[..., 0] = blocks & _MASK32
    counter[..., 1] = blocks >> 32
    counter[..., 2] = stream & _MASK32
    words = philox4x32(counter, key.unsqueeze(-2)).flatten(-2)  # [..., nb * 4]
    offset = start - first * 4
    return words[..., offset : offset + count]


def words_to_uniform(words: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Map 32-bit words to floats uniform on [-1, 1), exactly (24-bit grid: k * 2**-23 - 1)."""
    return ((words >> 8).to(dtype) * 2.0**-23 - 1.0).to(dtype)


def uniform(
    keys: torch.Tensor | tuple[int, int],
    start: int,
    count: int,
    stream: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Uniform(-1, 1) values `start .. start+count` of the stream (key, stream)."""
    return words_to_uniform(random_words(keys, start, count, stream, device), dtype)


def fingerprint(seed: int, device: torch.device | str = "cpu") -> str:
    """A digest of a fixed probe of the generator's output for `seed` (16 hex chars).

    Recorded in every artifact when it is written and checked before reconstruction trusts the bases:
    a generator that drifted (other code, a broken device) changes it.
    """
    probe = random_words(derive_key(seed, "fingerprint"), 0, 4096, device=device)
    floats = uniform(derive_key(seed, "fingerprint"), 4096, 1024, device=device)
    data = probe.cpu().numpy().astype("<u4").tobytes() + floats.cpu().numpy().astype("<f4").tobytes()
    return hashlib.sha256(data).hexdigest()[:16]
