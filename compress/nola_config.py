"""NOLA's configuration: how to compress (every field is recorded in the artifact), and the device
a fit runs on."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .bases import FAMILIES
from .errors import CompressError
from .quant import FORMATS

FITS = ("auto", "weight", "activation", "distill")
CODES = ("auto", "transform", "rows")
WEIGHTINGS = ("absolute", "relative", "balanced")


@dataclass
class NolaConfig:
    """How to compress. Every field is recorded in the artifact."""

    ratio: float = field(
        default=32.0,
        metadata={
            "help": "whole-file ratio (source file bytes / artifact bytes): the largest the size search "
            "tries, or, with no gate, the exact size made"
        },
    )
    bits: str = field(default="auto", metadata={"help": "coefficient format, or auto (rate-distortion)"})
    basis: str = field(default="fast", metadata={"help": "fast (structured, O(n log n)) or dense (paper)"})
    fit: str = field(
        default="auto",
        metadata={
            "help": "weight, activation, distill, or auto (the best the given statistics/base model allow)"
        },
    )
    seed: int = field(default=0, metadata={"help": "seed of every random basis"})
    group_size: int = field(default=64, metadata={"help": "coefficients per quantization scale"})
    damp: float = field(default=0.01, metadata={"help": "added to C: damp * mean(diag C) * I"})
    rounds: int = field(default=4, metadata={"help": "alternating quantized least-squares rounds"})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda"})
    weighting: str = field(
        default="balanced",
        metadata={
            "help": "how module errors add up in the byte allocation: absolute (output energy lost), "
            "relative (each module's relative error counts the same) or balanced (between the two)"
        },
    )
    code: str = field(
        default="auto",
        metadata={
            "help": "transform (SVD gauge, full-size basis, one step, entropy-coded), rows (per-row "
            "subspaces and formats), or auto: transform for the weight and activation fits with the fast "
            "basis, rows for distillation or where bits/k_fraction are fixed"
        },
    )
    rounding: float = field(
        default=0.5,
        metadata={"help": "transform code: rounding offset (0.5 nearest; less widens the zero bin)"},
    )
    extras: str = field(
        default="fp16",
        metadata={
            "help": "tensors NOLA does not model (modules_to_save heads, biases): fp16 (fp32 ones at "
            "half precision: on the benchmark's classifier, agreement 1.0 with exact factors) or exact"
        },
    )
    k_fraction: float | None = field(
        default=None,
        metadata={"help": "fixed k = k_fraction * n for every factor (with fixed bits), no search"},
    )

    def __post_init__(self) -> None:
        if not (isinstance(self.ratio, (int, float)) and math.isfinite(self.ratio) and self.ratio >= 1):
            raise ValueError(f"ratio must be a number >= 1, got {self.ratio!r}")
        if self.bits != "auto" and self.bits not in FORMATS:
            raise ValueError(f"bits must be auto or one of {', '.join(FORMATS)}, got {self.bits!r}")
        if self.basis not in FAMILIES:
            raise ValueError(f"basis must be one of {', '.join(FAMILIES)}, got {self.basis!r}")
        if self.fit not in FITS:
            raise ValueError(f"fit must be one of {', '.join(FITS)}, got {self.fit!r}")
        if not 0 <= self.seed < 2**63:
            raise ValueError("seed must be a non-negative 63-bit integer")
        if self.group_size < 1 or self.rounds < 1:
            raise ValueError("group_size and rounds must be positive")
        if not 0 <= self.damp < 1e3:
            raise ValueError("damp must be a small non-negative number")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {self.weighting!r}")
        if self.code not in CODES:
            raise ValueError(f"code must be one of {', '.join(CODES)}, got {self.code!r}")
        if self.extras not in ("exact", "fp16"):
            raise ValueError(f"extras must be exact or fp16, got {self.extras!r}")
        if not 0 < self.rounding <= 0.5:
            raise ValueError(f"rounding must lie in (0, 0.5], got {self.rounding!r}")
        if self.code == "transform" and (
            self.basis != "fast" or self.k_fraction is not None or self.bits != "auto"
        ):
            raise ValueError("code=transform uses the fast basis at full size (no bits or k_fraction)")
        if self.k_fraction is not None:
            if not 0 < self.k_fraction <= 1:
                raise ValueError(f"k_fraction must lie in (0, 1], got {self.k_fraction!r}")
            if self.bits == "auto":
                raise ValueError("k_fraction fixes the size, so bits must name a format too")

    @property
    def formats(self) -> tuple[str, ...]:
        return FORMATS if self.bits == "auto" else (self.bits,)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CompressError("device cuda was asked for but no CUDA device is available")
    return torch.device(name)
