"""NOLA's numerics: LoRA factors as quantized coefficients over seeded random bases.

This module chooses and fits the coefficients (configuration, rate-distortion search, closed-form
fits with quantized refinement) and encodes them; `artifact.py` writes and reads the file. The codec
object, which runs the whole pipeline, sits on top in `nola.py`.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any, ClassVar

import torch

from . import artifact, philox, transform
from .allocate import Candidate, allocate, k_grid, pareto
from .bases import FAMILIES, FastBasis, basis_key, make_basis
from .errors import CompressError
from .fidelity import measure
from .fit import BasisMetric, ColumnMetric, balance, fit_group, subspace_fit, weighted_quad
from .peft_io import LoraCheckpoint, LoraPair
from .protocol import CompressionReport, Progress, canonical_bytes
from .quant import BITS, FORMATS, FactorCode, fake_quantize, row_nbytes
from .stats import InputStats
from .transform import ModuleCoefficients, TransformCode
from .transform_act import activation_coefficients

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


@dataclass
class _Batch:
    """Modules of one shape, fitted together."""

    pairs: list[LoraPair]
    a: torch.Tensor  # [b, r, in] fp64
    b: torch.Tensor  # [b, out, r] fp64
    stats: list[InputStats | None]

    @property
    def rank(self) -> int:
        return self.a.shape[1]

    @property
    def n_in(self) -> int:
        return self.a.shape[2]

    @property
    def n_out(self) -> int:
        return self.b.shape[1]


def _batches(
    checkpoint: LoraCheckpoint, pairs: Sequence[LoraPair], stats: dict[str, InputStats], device: torch.device
) -> Iterator[_Batch]:
    groups: dict[tuple[int, int, int], list[LoraPair]] = defaultdict(list)
    for p in pairs:
        groups[(p.rank, p.in_features, p.out_features)].append(p)
    for (rank, n_in, n_out), members in sorted(groups.items()):
        full = any(stats.get(p.module) is not None and not stats[p.module].low_rank for p in members)
        width = n_in * n_in * 3 if full else max(n_in, n_out) * (rank + 512)
        size = max(1, artifact.BATCH_ELEMENTS // width)
        for start in range(0, len(members), size):
            chunk = members[start : start + size]
            yield _Batch(
                pairs=chunk,
                a=torch.stack([checkpoint.tensors[p.a_key] for p in chunk]).to(device, torch.float64),
                b=torch.stack([checkpoint.tensors[p.b_key] for p in chunk]).to(device, torch.float64),
                stats=[stats.get(p.module) for p in chunk],
            )


def _keys(seed: int, pairs: Sequence[LoraPair], factor: str) -> list[tuple[int, int]]:
    return [basis_key(seed, p.module, factor) for p in pairs]


def _side_fits(rows: torch.Tensor, metric: ColumnMetric, family: str, n: int, keys, device):
    """(k, X0, M) for every k of the grid: the best coefficients of each size for one side.

    With the fast basis the rotation T^T does not depend on k, so the rows (in the metric) and the
    metric's eigenvectors are rotated once and each k only selects its positions.
    """
    grid = k_grid(n)
    if family != "fast":
        for k in grid:
            basis = make_basis(family, n, [k] * len(keys), keys, device, torch.float64)
            x0, m = subspace_fit(rows, metric, basis)
            yield k, x0, m
        return
    full = FastBasis(n, [n] * len(keys), keys, device, torch.float64)
    if metric.full is not None:  # one rotated metric and one Cholesky factor serve every k
        m_full = BasisMetric.rotated_full(metric, full)
        rotated_rows = full.select(full.rotate_t(metric.apply(rows)))  # [b, r, n] in slot order
        for k in grid:
            m = m_full.prefix(k)
            yield k, m.solve(rotated_rows[..., :k]), m
        return
    rotated_rows = full.rotate_t(metric.apply(rows))  # [b, r, n]
    rotated_vecs = full.rotate_t(metric.eigvecs.transpose(1, 2)) if metric.eigvecs is not None else None
    for k in grid:
        positions = full.positions[:, :k]  # the first k slots: the basis for this k
        mask = torch.ones(len(keys), k, dtype=torch.bool, device=device)
        select = partial(full.select, positions=positions, mask=mask)
        m = BasisMetric.from_rotated(metric, mask, select, rotated_vecs)
        yield k, m.solve(select(rotated_rows)), m


def _candidates(batch: _Batch, cfg: NolaConfig, device: torch.device) -> list[list[Candidate]]:
    """Per module and rank component, the Pareto front of (k, format) choices for its A row and B
    column together, and dropping it. Errors are the module's, in the fit metric, weighted per module."""
    metric = ColumnMetric.from_stats(batch.stats, batch.n_in, cfg.damp, device)
    a_bal, b_bal, sigma = balance(batch.a, batch.b, metric)
    total = (sigma**2).sum(-1)
    scale2 = torch.tensor([p.scale**2 for p in batch.pairs], dtype=torch.float64, device=device)
    energy = (scale2 * total).clamp_min(1e-300)  # each module's output energy, in the fit metric
    weight = {"absolute": scale2, "relative": scale2 / energy, "balanced": scale2 / energy.sqrt()}[
        cfg.weighting
    ]
    count, rank = len(batch.pairs), batch.rank
    options: list[list[list[Candidate]]] = [[[] for _ in range(count * rank)] for _ in range(2)]
    sides = (
        (0, "A", a_bal, metric, batch.n_in),
        (1, "B", b_bal.transpose(1, 2), ColumnMetric(batch.n_out, count), batch.n_out),
    )
    for side, factor, rows, side_metric, n in sides:
        keys = _keys(cfg.seed, batch.pairs, factor)
        for k, x0, m in _side_fits(rows, side_metric, cfg.basis, n, keys, device):
            # Row j's error with the other side exact: sigma_j (sigma_j - x0_j M x0_j^T) + quantization.
            base = sigma**2 - weighted_quad(x0, m, sigma)  # [b, r]
            flat = x0.reshape(-1, k)  # each row is quantized on its own (its own exponent and groups)
            for fmt in cfg.formats:
                xq = fake_quantize(flat, fmt, cfg.group_size).reshape(x0.shape)
                err = (
                    ((base + weighted_quad(x0 - xq, m, sigma)).clamp_min(0) * weight[:, None])
                    .flatten()
                    .tolist()
                )
                nbytes = row_nbytes(k, fmt, cfg.group_size)
                for unit, e in enumerate(err):
                    options[side][unit].append(Candidate(e, nbytes, (k, fmt)))
    drop = (sigma**2 * weight[:, None]).flatten().tolist()
    units = []
    for unit in range(count * rank):
        joint = [Candidate(drop[unit], 0, (0, None, 0, None))]
        for ca in pareto(options[0][unit]):
            for cb in pareto(options[1][unit]):
                joint.append(Candidate(ca.error + cb.error, ca.nbytes + cb.nbytes, ca.option + cb.option))
        units.append(pareto(joint))
    return units


def _fixed_choices(batch: _Batch, cfg: NolaConfig) -> list[list[Candidate]]:
    """k_fraction: every row the same size and format (one candidate per component)."""
    k_in = min(batch.n_in, max(1, round(cfg.k_fraction * batch.n_in)))
    k_out = min(batch.n_out, max(1, round(cfg.k_fraction * batch.n_out)))
    nbytes = row_nbytes(k_in, cfg.bits, cfg.group_size) + row_nbytes(k_out, cfg.bits, cfg.group_size)
    option = (k_in, cfg.bits, k_out, cfg.bits)
    return [[Candidate(0.0, nbytes, option)] for _ in range(len(batch.pairs) * batch.rank)]


def _module_choices(options: Sequence[tuple], count: int, rank: int):
    """Per module, ((k_j), (format_j)) of its A rows and of its B columns."""
    choices_a, choices_b = [], []
    for i in range(count):
        rows = options[i * rank : (i + 1) * rank]
        choices_a.append(([o[0] for o in rows], [o[1] for o in rows]))
        choices_b.append(([o[2] for o in rows], [o[3] for o in rows]))
    return choices_a, choices_b


class NolaFormat:
    """The reading side of the NOLA codec: what `protocol.decode_with` needs to rebuild an artifact.
    The pipeline decodes its own artifacts with it; `nola.NolaCodec` adds the writing side."""

    name: ClassVar[str] = artifact.FORMAT
    format_version: ClassVar[int] = artifact.FORMAT_VERSION
    read_versions: ClassVar[tuple[int, ...]] = artifact.READ_VERSIONS

    def decode(
        self, tensors: dict[str, torch.Tensor], metadata: dict[str, str], config: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        return artifact.decode(tensors, metadata, resolve_device("auto"))

    @staticmethod
    def config_text(metadata: dict[str, str]) -> str:
        """The PEFT config's JSON text, where the artifact has it (see artifact.serialize)."""
        return artifact.config_text(metadata)


@dataclass
class ModuleFit:
    """One module's stored coefficients."""

    pair: LoraPair
    stored_a: FactorCode
    stored_b: FactorCode


@dataclass
class NolaFit:
    """Every module's stored coefficients, with what produced them."""

    config: NolaConfig
    modules: list[ModuleFit]
    method: str  # weight | activation | distill
    stats: dict[str, InputStats]
    lora_bytes: int
    notes: dict[str, Any] = field(default_factory=dict)  # reported with the fidelity (e.g. distillation)
    transform: TransformCode | None = None  # the transform code (modules then stays empty)


def lora_pairs(checkpoint: LoraCheckpoint) -> list[LoraPair]:
    """The pairs NOLA models: 2-D linear LoRA (embedding and conv LoRA travel losslessly)."""
    return [p for p in checkpoint.pairs if p.kind == "linear"]


@dataclass
class Prepared:
    """What a fit does not need to redo for another byte budget: the modules in same-shaped batches
    and, per rank component, the Pareto front of its (k, format) choices."""

    checkpoint: LoraCheckpoint
    config: NolaConfig
    batches: list[_Batch]
    units: list[list[Candidate]]
    stats: dict[str, InputStats]
    lora_bytes: int  # the modelled factors' bytes in the source
    device: torch.device
    transform: list[ModuleCoefficients] | None = None  # the transform code's coefficients


def prepare(
    checkpoint: LoraCheckpoint,
    cfg: NolaConfig,
    stats: dict[str, InputStats] | None = None,
    progress: Progress | None = None,
) -> Prepared:
    """Everything of a fit that does not depend on the byte budget (see `fit_budget`)."""
    device = resolve_device(cfg.device)
    pairs = lora_pairs(checkpoint)
    use_stats = cfg.fit in ("auto", "activation")
    stats = {p.module: stats[p.module] for p in pairs if use_stats and stats and p.module in stats}
    if cfg.fit == "activation" and not stats:
        raise CompressError("fit=activation needs input statistics for the adapter's modules")
    lora_bytes = sum(
        checkpoint.tensors[k].numel() * checkpoint.tensors[k].element_size()
        for p in pairs
        for k in (p.a_key, p.b_key)
    )
    if uses_transform(cfg, stats):
        if stats:  # the whitened gauge, A rounded with error feedback (transform_act.py)
            coefficients = activation_coefficients(checkpoint, pairs, stats, cfg.seed, device, cfg.damp)
        else:
            coefficients = transform.coefficients(checkpoint, pairs, cfg.seed, device)
        if progress:
            progress(1, 1)
        return Prepared(checkpoint, cfg, [], [], stats, lora_bytes, device, coefficients)
    batches = list(_batches(checkpoint, pairs, stats, device))
    units: list[list[Candidate]] = []
    for done, batch in enumerate(batches, 1):
        units.extend(
            _fixed_choices(batch, cfg) if cfg.k_fraction is not None else _candidates(batch, cfg, device)
        )
        if progress:
            progress(done, len(batches))
    return Prepared(checkpoint, cfg, batches, units, stats, lora_bytes, device)


def uses_transform(cfg: NolaConfig, stats: dict[str, InputStats] | None) -> bool:
    """Whether `cfg` codes with the transform code: asked for, or auto for the weight and activation
    fits (with statistics it codes in their metric: transform_act.py)."""
    if cfg.code != "auto":
        return cfg.code == "transform"
    if cfg.k_fraction is not None or cfg.basis != "fast" or cfg.bits != "auto":
        return False
    return cfg.fit in ("weight", "activation", "auto")


def fit_budget(prepared: Prepared, budget: int, progress: Progress | None = None) -> NolaFit:
    """Choose (k, format) per factor within `budget` coefficient bytes and fit every module."""
    cfg, device = prepared.config, prepared.device
    if prepared.transform is not None:
        gamma = transform.GAMMAS[cfg.weighting]
        code = transform.fit_step(prepared.transform, max(0, int(budget)), cfg.rounding, gamma)
        if progress:
            progress(1, 1)
        method = "activation" if prepared.stats else "weight"
        return NolaFit(cfg, [], method, prepared.stats, prepared.lora_bytes, transform=code)
    chosen = allocate(prepared.units, max(0, int(budget)))
    modules: list[ModuleFit] = []
    offset = 0
    for done, batch in enumerate(prepared.batches, 1):
        count = len(batch.pairs) * batch.rank
        options = [c.option for c in chosen[offset : offset + count]]
        offset += count
        choices_a, choices_b = _module_choices(options, len(batch.pairs), batch.rank)
        metric = ColumnMetric.from_stats(batch.stats, batch.n_in, cfg.damp, device)
        keys_a, keys_b = _keys(cfg.seed, batch.pairs, "A"), _keys(cfg.seed, batch.pairs, "B")
        kmax_a = [max(1, *ks) for ks, _ in choices_a]
        kmax_b = [max(1, *ks) for ks, _ in choices_b]
        basis_a = make_basis(cfg.basis, batch.n_in, kmax_a, keys_a, device, torch.float64)
        basis_b = make_basis(cfg.basis, batch.n_out, kmax_b, keys_b, device, torch.float64)
        fitted = fit_group(
            batch.a, batch.b, metric, basis_a, basis_b, choices_a, choices_b, cfg.group_size, cfg.rounds
        )
        modules += [ModuleFit(p, qa, qb) for p, qa, qb in zip(batch.pairs, fitted.stored_a, fitted.stored_b)]
        if progress:
            progress(done, len(prepared.batches))
    method = "activation" if prepared.stats else "weight"
    return NolaFit(cfg, modules, method, prepared.stats, prepared.lora_bytes)


def fit_adapter(
    checkpoint: LoraCheckpoint,
    cfg: NolaConfig,
    stats: dict[str, InputStats] | None = None,
    progress: Progress | None = None,
    *,
    budget: int,
) -> NolaFit:
    """Fit every module within `budget` coefficient bytes (`prepare` then `fit_budget`)."""
    return fit_budget(prepare(checkpoint, cfg, stats), budget, progress)


def encode(checkpoint: LoraCheckpoint, fitted: NolaFit) -> tuple[bytes, CompressionReport]:
    """The artifact for fitted coefficients, with fidelity measured on what a reader rebuilds."""
    data, report, _ = encode_decoded(checkpoint, fitted)
    return data, report


def encode_decoded(
    checkpoint: LoraCheckpoint, fitted: NolaFit
) -> tuple[bytes, CompressionReport, dict[str, torch.Tensor]]:
    """`encode`, with the tensors a reader rebuilds from the artifact (decoded once, to measure it):
    whoever measures the artifact further needs not decode it again."""
    cfg = fitted.config
    device = resolve_device(cfg.device)
    if fitted.transform is not None:
        return _encode_transform(checkpoint, fitted, device)
    stored = [(m.pair, m.stored_a, m.stored_b) for m in fitted.modules]
    digests = artifact.basis_digests(stored, cfg.basis, cfg.seed, device)
    records, codes, scales = artifact.pack(checkpoint, stored, digests)
    source = canonical_bytes(checkpoint)
    header: dict[str, Any] = {
        "generator": {
            "name": philox.GENERATOR,
            "version": philox.GENERATOR_VERSION,
            "seed": cfg.seed,
            "fingerprint": philox.fingerprint(cfg.seed, device),
        },
        "basis": cfg.basis,
        "layout": artifact.LAYOUT,
        "group_size": cfg.group_size,
        "source_digest": hashlib.sha256(source).hexdigest(),
        "params": asdict(cfg),
        "fit": fitted.method,
        "modules": records,
    }
    pairs = [m.pair for m in fitted.modules]
    extras, widened = artifact.store_extras(
        {k: checkpoint.tensors[k] for k in _lossless_keys(checkpoint, pairs)}, cfg.extras
    )
    if widened:
        header["fp16_extras"] = widened
    tensors = {artifact.CODES_KEY: codes, artifact.SCALES_KEY: scales, **extras}
    decoded = artifact.decode_tensors(header, tensors, device)
    fidelity = measure(checkpoint, decoded, pairs, fitted.stats)
    header["fidelity"] = {k: v for k, v in fidelity.items() if k != "modules"}
    for record, errors in zip(records, fidelity["modules"]):
        record["errors"] = errors
    data = artifact.serialize(checkpoint.config, header, tensors)
    params = {
        **asdict(cfg),
        "fit": fitted.method,
        "layout": artifact.LAYOUT,
        "bits_per_coefficient": _mean_bits(records),
        "coefficients": _coefficients(records),
    }
    coefficient_bytes = codes.numel() + 2 * scales.numel()
    fidelity.update(
        lossless_tensors=len(extras),
        lossless_bytes=sum(t.numel() * t.element_size() for t in extras.values()),
        lora_bytes=fitted.lora_bytes,
        coefficient_bytes=coefficient_bytes,
        lora_ratio=round(fitted.lora_bytes / coefficient_bytes, 3) if coefficient_bytes else None,
        **fitted.notes,
    )
    report = CompressionReport(
        codec=NolaFormat.name,
        source_bytes=len(source),
        artifact_bytes=len(data),
        params=params,
        fidelity=fidelity,
    )
    return data, report, decoded


def _generator(seed: int, device: torch.device) -> dict[str, Any]:
    return {
        "name": philox.GENERATOR,
        "version": philox.GENERATOR_VERSION,
        "seed": seed,
        "fingerprint": philox.fingerprint(seed, device),
    }


def _encode_transform(
    checkpoint: LoraCheckpoint, fitted: NolaFit, device: torch.device
) -> tuple[bytes, CompressionReport, dict[str, torch.Tensor]]:
    """The transform layout: the header lists modules (no per-row sizes or formats), one digest
    stands for every basis, and the codes tensor holds the whole coefficient stream."""
    cfg, code = fitted.config, fitted.transform
    assert code is not None
    pairs = lora_pairs(checkpoint)
    source = canonical_bytes(checkpoint)
    header: dict[str, Any] = {
        "generator": _generator(cfg.seed, device),
        "basis": "fast",
        "layout": transform.LAYOUT,
        "code": {
            "step": code.step,
            "bound": code.bound,
            "bytes": code.nbytes,
            "model": transform.MODEL,
        },
        "source_digest": hashlib.sha256(source).hexdigest(),
        "params": asdict(cfg),
        "fit": fitted.method,
        "modules": artifact.transform_records(checkpoint, pairs),
    }
    extras, widened = artifact.store_extras(
        {k: checkpoint.tensors[k] for k in _lossless_keys(checkpoint, pairs)}, cfg.extras
    )
    if widened:
        header["fp16_extras"] = widened
    codes = (
        torch.frombuffer(bytearray(code.codes), dtype=torch.uint8)
        if code.codes
        else torch.empty(0, dtype=torch.uint8)
    )
    tensors = {artifact.CODES_KEY: codes, **extras}
    header["digest"] = transform.bases_digest(pairs, cfg.seed, device)
    decoded = artifact.decode_tensors(header, tensors, device)
    fidelity = measure(checkpoint, decoded, pairs, fitted.stats)
    header["fidelity"] = {k: v for k, v in fidelity.items() if k != "modules"}
    header["errors"] = [m["weight"] for m in fidelity["modules"]]
    data = artifact.serialize(checkpoint.config, header, tensors)
    kept = transform.kept_coefficients(pairs, code)
    params = {
        **asdict(cfg),
        "fit": fitted.method,
        "layout": transform.LAYOUT,
        "bits_per_coefficient": round(8 * code.nbytes / kept, 3) if kept else 0.0,
        "coefficients": kept,
        "components": code.components,
    }
    fidelity.update(
        lossless_tensors=len(extras),
        lossless_bytes=sum(t.numel() * t.element_size() for t in extras.values()),
        lora_bytes=fitted.lora_bytes,
        coefficient_bytes=code.nbytes,
        lora_ratio=round(fitted.lora_bytes / code.nbytes, 3) if code.nbytes else None,
        **fitted.notes,
    )
    report = CompressionReport(
        codec=NolaFormat.name,
        source_bytes=len(source),
        artifact_bytes=len(data),
        params=params,
        fidelity=fidelity,
    )
    return data, report, decoded


def _lossless_keys(checkpoint: LoraCheckpoint, pairs: Sequence[LoraPair]) -> list[str]:
    fitted = {k for p in pairs for k in (p.a_key, p.b_key)}
    return sorted(k for k in checkpoint.tensors if k not in fitted)


def _coefficients(records: Sequence[dict]) -> int:
    return sum(k for r in records for side in ("A", "B") for k in r[side]["k"])


def _mean_bits(records: Sequence[dict]) -> float:
    bits = sum(
        k * BITS[fmt]
        for r in records
        for side in ("A", "B")
        for k, fmt in zip(r[side]["k"], r[side]["format"])
        if k
    )
    coeffs = _coefficients(records)
    return round(bits / coeffs, 3) if coeffs else 0.0
