"""The NOLA codec: LoRA factors as quantized coefficients over seeded random bases.

Artifact (one safetensors file):
  tensors   `nola.codes` (uint8, every factor's packed codes), `nola.scales` (fp16 group scales), and
            every tensor NOLA does not model under its PEFT key (lossless).
  metadata  format name/version and the PEFT config (see codec.py); `nola.header`: JSON (zlib, then
            base64, since per-module records would otherwise outweigh a small adapter's
            coefficients) with the generator (name, version, seed, fingerprint), basis family,
            layout, group size, the source digest, the codec parameters and fidelity summary, and
            one record per module (shapes, dtypes, and per factor: k, format, byte
            ranges, basis digest, errors); `nola.checksum`: sha256 of everything else, so any
            corruption or edit is caught. `adapters inspect` prints the header.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import zlib
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import torch

from . import philox, stfile
from .allocate import Candidate, allocate, k_grid
from .bases import FAMILIES, FastBasis, basis_key, make_basis, positions_for
from .codec import (
    CompressionReport,
    Progress,
    canonical_bytes,
    config_metadata,
    register_codec,
)
from .errors import CompressError, InvalidArtifact
from .fidelity import measure
from .fit import BasisMetric, ColumnMetric, balance, fit_group, subspace_fit, weighted_quad
from .peft_io import KEY_PREFIX, LoraCheckpoint, LoraPair
from .quant import BITS, FORMATS, Quantized, dequantize, fake_quantize, stored_nbytes
from .stats import InputStats

HEADER_KEY = "nola.header"
CHECKSUM_KEY = "nola.checksum"
CODES_KEY = "nola.codes"
SCALES_KEY = "nola.scales"
LAYOUT = "rows"
FITS = ("auto", "weight", "activation", "distill")
WEIGHTINGS = ("absolute", "relative", "balanced")
_DTYPE_NAMES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64"}
_DTYPES = {v: k for k, v in _DTYPE_NAMES.items()}
# Modules per batch are bounded so the largest intermediate stays near this many numbers.
_BATCH_ELEMENTS = 1 << 25


@dataclass
class NolaConfig:
    """How to compress. Every field is recorded in the artifact."""

    ratio: float = field(default=20.0, metadata={"help": "target: LoRA factor bytes / coefficient bytes"})
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
        default="relative",
        metadata={
            "help": "how module errors add up in the byte allocation: absolute (output energy lost), "
            "relative (each module's relative error counts the same) or balanced (between the two)"
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
        size = max(1, _BATCH_ELEMENTS // width)
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
    if family != "fast" or metric.full is not None:
        for k in grid:
            basis = make_basis(family, n, [k] * len(keys), keys, device, torch.float64)
            x0, m = subspace_fit(rows, metric, basis)
            yield k, x0, m
        return
    full = FastBasis(n, [n] * len(keys), keys, device, torch.float64)
    rotated_rows = full.rotate_t(metric.apply(rows))  # [b, r, n]
    rotated_vecs = full.rotate_t(metric.eigvecs.transpose(1, 2)) if metric.eigvecs is not None else None
    for k in grid:
        positions = positions_for(n, [k] * len(keys)).to(device)
        mask = torch.ones(len(keys), k, dtype=torch.bool, device=device)
        select = partial(full.select, positions=positions, mask=mask)
        m = BasisMetric.from_rotated(metric, mask, select, rotated_vecs)
        yield k, m.solve(select(rotated_rows)), m


def _candidates(batch: _Batch, cfg: NolaConfig, device: torch.device) -> list[list[Candidate]]:
    """Per module, two units (A then B): error if only that factor is approximated, per (k, format)."""
    metric = ColumnMetric.from_stats(batch.stats, batch.n_in, cfg.damp, device)
    a_bal, b_bal, sigma = balance(batch.a, batch.b, metric)
    total = (sigma**2).sum(-1)
    scale2 = torch.tensor([p.scale**2 for p in batch.pairs], dtype=torch.float64, device=device)
    energy = (scale2 * total).clamp_min(1e-300)  # each module's output energy, in the fit metric
    weight = {"absolute": scale2, "relative": scale2 / energy, "balanced": scale2 / energy.sqrt()}[
        cfg.weighting
    ]
    units: list[list[Candidate]] = [[] for _ in range(2 * len(batch.pairs))]
    sides = (
        (0, "A", a_bal, metric, batch.n_in),
        (1, "B", b_bal.transpose(1, 2), ColumnMetric(batch.n_out, len(batch.pairs)), batch.n_out),
    )
    for side, factor, rows, side_metric, n in sides:
        keys = _keys(cfg.seed, batch.pairs, factor)
        for k, x0, m in _side_fits(rows, side_metric, cfg.basis, n, keys, device):
            base = total - weighted_quad(x0, m, sigma)
            flat = x0.reshape(-1, k)  # groups never span rows, so one call serves every module
            for fmt in cfg.formats:
                xq = fake_quantize(flat, fmt, cfg.group_size).reshape(x0.shape)
                err = (base + weighted_quad(x0 - xq, m, sigma)).clamp_min(0) * weight
                nbytes = stored_nbytes(batch.rank, k, fmt, cfg.group_size)
                for i, e in enumerate(err.tolist()):
                    units[2 * i + side].append(Candidate(k, fmt, e, nbytes))
    return units


def _fixed_choice(rank: int, n: int, cfg: NolaConfig) -> Candidate:
    k = min(n, max(1, round(cfg.k_fraction * n)))
    return Candidate(k, cfg.bits, 0.0, stored_nbytes(rank, k, cfg.bits, cfg.group_size))


def _module_record(
    pair: LoraPair, checkpoint: LoraCheckpoint, qa: Quantized, qb: Quantized, digests: tuple[str, str]
) -> dict[str, Any]:
    record = {
        "module": pair.module,
        "rank": pair.rank,
        "in": pair.in_features,
        "out": pair.out_features,
        "dtype_a": _DTYPE_NAMES[checkpoint.tensors[pair.a_key].dtype],
        "dtype_b": _DTYPE_NAMES[checkpoint.tensors[pair.b_key].dtype],
        "A": {"k": qa.k, "format": qa.fmt, "digest": digests[0]},
        "B": {"k": qb.k, "format": qb.fmt, "digest": digests[1]},
    }
    default_a, default_b = _default_keys(pair.module)
    if (pair.a_key, pair.b_key) != (default_a, default_b):
        record.update(a_key=pair.a_key, b_key=pair.b_key)
    return record


def _default_keys(module: str) -> tuple[str, str]:
    return f"{KEY_PREFIX}{module}.lora_A.weight", f"{KEY_PREFIX}{module}.lora_B.weight"


def encode_header(header: dict[str, Any]) -> str:
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    return base64.b64encode(zlib.compress(text, 9)).decode()


def decode_header(value: str) -> dict[str, Any]:
    try:
        header = json.loads(zlib.decompress(base64.b64decode(value, validate=True)))
    except (ValueError, zlib.error):
        raise InvalidArtifact("corrupt: the NOLA header cannot be read") from None
    if not isinstance(header, dict):
        raise InvalidArtifact("corrupt: the NOLA header is not an object")
    return header


def _checksum(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    meta = {k: v for k, v in metadata.items() if k != CHECKSUM_KEY}
    return hashlib.sha256(stfile.dumps(tensors, meta)).hexdigest()


@register_codec
class NolaCodec:
    name: ClassVar[str] = "nola"
    format_version: ClassVar[int] = 1

    def __init__(
        self,
        config: NolaConfig | None = None,
        stats: dict[str, InputStats] | None = None,
        *,
        base_model: str | Path | None = None,
        texts: Sequence[str] | None = None,
        distill: Any = None,
        gate: Any = None,
    ):
        """`stats`: input statistics per module; `base_model` (a local directory) with `texts` enables
        distillation and the held-out measurement; `distill` a DistillConfig; `gate` a pipeline.Gate."""
        self.config = config or NolaConfig()
        self.stats = stats or {}
        self.base_model, self.texts, self.distill, self.gate = base_model, texts, distill, gate

    @classmethod
    def from_params(cls, **params: Any) -> NolaCodec:
        """Parameters by name: NolaConfig fields, `distill_<field>` for DistillConfig, and the gate's
        `min_agreement`, `max_kl`, `max_weight_error` (a gate applies when any is given)."""
        from .distill import DistillConfig
        from .pipeline import Gate

        gate_fields = {"min_agreement", "max_kl", "max_weight_error"}
        gate = {k: params.pop(k) for k in list(params) if k in gate_fields}
        distill = {
            k.removeprefix("distill_"): params.pop(k) for k in list(params) if k.startswith("distill_")
        }
        try:
            return cls(
                NolaConfig(**params),
                distill=DistillConfig(**distill) if distill else None,
                gate=Gate(**gate) if gate else None,
            )
        except TypeError as exc:
            raise ValueError(f"bad NOLA parameters: {exc}") from None

    def compress(
        self, checkpoint: LoraCheckpoint, out_file: Path, *, progress: Progress | None = None
    ) -> CompressionReport:
        from .pipeline import run

        data, report = run(
            checkpoint,
            self.config,
            stats=self.stats or None,
            base_model=self.base_model,
            texts=self.texts,
            distill_config=self.distill,
            gate=self.gate,
            progress=progress,
        )
        Path(out_file).write_bytes(data)
        return report

    def decode(
        self, tensors: dict[str, torch.Tensor], metadata: dict[str, str], config: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        if metadata.get(CHECKSUM_KEY) != _checksum(tensors, metadata):
            raise InvalidArtifact("checksum mismatch: the artifact was corrupted or edited")
        if HEADER_KEY not in metadata:
            raise InvalidArtifact("corrupt: the artifact has no NOLA header")
        return _decode_tensors(decode_header(metadata[HEADER_KEY]), tensors, resolve_device("auto"))


@dataclass
class ModuleFit:
    """One module's stored coefficients."""

    pair: LoraPair
    stored_a: Quantized
    stored_b: Quantized


@dataclass
class NolaFit:
    """Every module's stored coefficients, with what produced them."""

    config: NolaConfig
    modules: list[ModuleFit]
    method: str  # weight | activation | distill
    stats: dict[str, InputStats]
    lora_bytes: int
    notes: dict[str, Any] = field(default_factory=dict)  # recorded in the header (e.g. distillation)


def lora_pairs(checkpoint: LoraCheckpoint) -> list[LoraPair]:
    """The pairs NOLA models: 2-D linear LoRA (embedding and conv LoRA travel losslessly)."""
    return [p for p in checkpoint.pairs if p.kind == "linear"]


def fit_adapter(
    checkpoint: LoraCheckpoint,
    cfg: NolaConfig,
    stats: dict[str, InputStats] | None = None,
    progress: Progress | None = None,
) -> NolaFit:
    """Choose (k, format) per factor under the byte budget and fit every module's coefficients."""
    device = resolve_device(cfg.device)
    pairs = lora_pairs(checkpoint)
    use_stats = cfg.fit in ("auto", "activation")
    stats = {p.module: stats[p.module] for p in pairs if use_stats and stats and p.module in stats}
    if cfg.fit == "activation" and not stats:
        raise CompressError("fit=activation needs input statistics for the adapter's modules")
    batches = list(_batches(checkpoint, pairs, stats, device))
    steps, done = 2 * len(batches), 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress:
            progress(done, steps)

    lora_bytes = sum(
        checkpoint.tensors[k].numel() * checkpoint.tensors[k].element_size()
        for p in pairs
        for k in (p.a_key, p.b_key)
    )
    if cfg.k_fraction is not None:
        chosen = [
            _fixed_choice(batch.rank, n, cfg)
            for batch in batches
            for _ in batch.pairs
            for n in (batch.n_in, batch.n_out)
        ]
        done += len(batches)
    else:
        units: list[list[Candidate]] = []
        for batch in batches:
            units.extend(_candidates(batch, cfg, device))
            tick()
        chosen = allocate(units, int(lora_bytes / cfg.ratio))

    modules: list[ModuleFit] = []
    offset = 0
    for batch in batches:
        picks = chosen[offset : offset + 2 * len(batch.pairs)]
        offset += 2 * len(batch.pairs)
        metric = ColumnMetric.from_stats(batch.stats, batch.n_in, cfg.damp, device)
        keys_a, keys_b = _keys(cfg.seed, batch.pairs, "A"), _keys(cfg.seed, batch.pairs, "B")
        basis_a = make_basis(cfg.basis, batch.n_in, [c.k for c in picks[0::2]], keys_a, device, torch.float64)
        basis_b = make_basis(
            cfg.basis, batch.n_out, [c.k for c in picks[1::2]], keys_b, device, torch.float64
        )
        fitted = fit_group(
            batch.a,
            batch.b,
            metric,
            basis_a,
            basis_b,
            [c.fmt for c in picks[0::2]],
            [c.fmt for c in picks[1::2]],
            cfg.group_size,
            cfg.rounds,
        )
        modules += [ModuleFit(p, qa, qb) for p, qa, qb in zip(batch.pairs, fitted.stored_a, fitted.stored_b)]
        tick()
    return NolaFit(cfg, modules, "activation" if stats else "weight", stats, lora_bytes)


def _digests(modules: Sequence[ModuleFit], cfg: NolaConfig, device: torch.device) -> list[tuple[str, str]]:
    """Each module's (A, B) basis digests, building the bases batched by size."""
    out: dict[tuple[str, int], str] = {}
    for side in ("A", "B"):
        by_n: dict[int, list[int]] = defaultdict(list)
        for i, m in enumerate(modules):
            by_n[m.pair.in_features if side == "A" else m.pair.out_features].append(i)
        for n, members in by_n.items():
            ks = [(modules[i].stored_a if side == "A" else modules[i].stored_b).k for i in members]
            keys = [basis_key(cfg.seed, modules[i].pair.module, side) for i in members]
            for i, digest in zip(members, make_basis(cfg.basis, n, ks, keys, device).digests()):
                out[(side, i)] = digest
    return [(out[("A", i)], out[("B", i)]) for i in range(len(modules))]


def encode(checkpoint: LoraCheckpoint, fitted: NolaFit) -> tuple[bytes, CompressionReport]:
    """The artifact for fitted coefficients, with fidelity measured on what a reader rebuilds."""
    cfg = fitted.config
    device = resolve_device(cfg.device)
    records, codes, scales = [], [], []
    for module, digests in zip(fitted.modules, _digests(fitted.modules, cfg, device)):
        record = _module_record(module.pair, checkpoint, module.stored_a, module.stored_b, digests)
        for side, q in (("A", module.stored_a), ("B", module.stored_b)):
            payload = q.payload()
            record[side]["codes"] = [sum(t.numel() for t in codes), payload.numel()]
            record[side]["scales"] = [sum(t.numel() for t in scales), q.scales.numel()]
            codes.append(payload)
            scales.append(q.scales)
        records.append(record)
    source = canonical_bytes(checkpoint)
    header: dict[str, Any] = {
        "generator": {
            "name": philox.GENERATOR,
            "version": philox.GENERATOR_VERSION,
            "seed": cfg.seed,
            "fingerprint": philox.fingerprint(cfg.seed, device),
        },
        "basis": cfg.basis,
        "layout": LAYOUT,
        "group_size": cfg.group_size,
        "source_digest": hashlib.sha256(source).hexdigest(),
        "params": asdict(cfg),
        "fit": fitted.method,
        "modules": records,
        **fitted.notes,
    }
    pairs = [m.pair for m in fitted.modules]
    extras = {k: checkpoint.tensors[k] for k in _lossless_keys(checkpoint, pairs)}
    tensors = {
        CODES_KEY: torch.cat(codes) if codes else torch.empty(0, dtype=torch.uint8),
        SCALES_KEY: torch.cat(scales) if scales else torch.empty(0, dtype=torch.float16),
        **extras,
    }
    decoded = _decode_tensors(header, tensors, device)
    fidelity = measure(checkpoint, decoded, pairs, fitted.stats)
    header["fidelity"] = {k: v for k, v in fidelity.items() if k != "modules"}
    for record, errors in zip(records, fidelity["modules"]):
        record["errors"] = errors
    data = _serialize(checkpoint.config, header, tensors)
    params = {
        **asdict(cfg),
        "fit": fitted.method,
        "layout": LAYOUT,
        "bits_per_coefficient": _mean_bits(records),
        "coefficients": sum(r["rank"] * (r["A"]["k"] + r["B"]["k"]) for r in records),
    }
    fidelity.update(
        lossless_tensors=len(extras),
        lora_bytes=fitted.lora_bytes,
        coefficient_bytes=tensors[CODES_KEY].numel() + 2 * tensors[SCALES_KEY].numel(),
        **{k: v for k, v in fitted.notes.items() if k == "distill"},
    )
    report = CompressionReport(
        codec=NolaCodec.name,
        source_bytes=len(source),
        artifact_bytes=len(data),
        params=params,
        fidelity=fidelity,
    )
    return data, report


def _lossless_keys(checkpoint: LoraCheckpoint, pairs: Sequence[LoraPair]) -> list[str]:
    fitted = {k for p in pairs for k in (p.a_key, p.b_key)}
    return sorted(k for k in checkpoint.tensors if k not in fitted)


def _mean_bits(records: Sequence[dict]) -> float:
    coeffs = sum(r["rank"] * (r["A"]["k"] + r["B"]["k"]) for r in records)
    bits = sum(r["rank"] * r[s]["k"] * BITS[r[s]["format"]] for r in records for s in ("A", "B"))
    return round(bits / coeffs, 3) if coeffs else 0.0


def _serialize(config: dict[str, Any], header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> bytes:
    metadata = config_metadata(NolaCodec, config)
    metadata[HEADER_KEY] = encode_header(header)
    metadata[CHECKSUM_KEY] = _checksum(tensors, metadata)
    return stfile.dumps(tensors, metadata)


def _decode_tensors(
    header: dict[str, Any], tensors: dict[str, torch.Tensor], device: torch.device
) -> dict[str, torch.Tensor]:
    """Rebuild every PEFT tensor from the header and stored coefficients, module batch by batch."""
    try:
        generator = header["generator"]
        family, layout, group_size = header["basis"], header["layout"], int(header["group_size"])
        records = header["modules"]
        seed = int(generator["seed"])
    except (KeyError, TypeError, ValueError):
        raise InvalidArtifact("corrupt: the NOLA header lacks required fields") from None
    if (generator.get("name"), generator.get("version")) != (philox.GENERATOR, philox.GENERATOR_VERSION):
        raise InvalidArtifact(
            f"artifact made with generator {generator.get('name')} v{generator.get('version')}; "
            f"this build has {philox.GENERATOR} v{philox.GENERATOR_VERSION}"
        )
    if generator.get("fingerprint") != philox.fingerprint(seed, device):
        raise InvalidArtifact("generator fingerprint mismatch: the bases would not be the ones fitted")
    if layout != LAYOUT or family not in FAMILIES:
        raise InvalidArtifact(f"unsupported basis {family!r} / layout {layout!r}")
    codes, scales = tensors.get(CODES_KEY), tensors.get(SCALES_KEY)
    if codes is None or scales is None or codes.dtype != torch.uint8 or scales.dtype != torch.float16:
        raise InvalidArtifact("corrupt: coefficient tensors missing or of the wrong type")
    out = {k: v for k, v in tensors.items() if k not in (CODES_KEY, SCALES_KEY)}
    by_shape: dict[tuple[int, int, int], list[dict]] = defaultdict(list)
    try:
        for record in records:
            by_shape[(int(record["rank"]), int(record["in"]), int(record["out"]))].append(record)
        for (rank, n_in, n_out), members in sorted(by_shape.items()):
            size = max(1, _BATCH_ELEMENTS // (max(n_in, n_out) * (rank + 64)))
            for start in range(0, len(members), size):
                chunk = members[start : start + size]
                a_hat = _expand_side(chunk, "A", n_in, rank, family, seed, group_size, codes, scales, device)
                b_hat = _expand_side(chunk, "B", n_out, rank, family, seed, group_size, codes, scales, device)
                for record, a, b in zip(chunk, a_hat, b_hat):
                    default_a, default_b = _default_keys(record["module"])
                    out[record.get("a_key", default_a)] = a.to(_DTYPES[record["dtype_a"]]).cpu()
                    out[record.get("b_key", default_b)] = (
                        b.T.to(_DTYPES[record["dtype_b"]]).contiguous().cpu()
                    )
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidArtifact(f"corrupt module record: {exc}") from None
    return out


def _expand_side(
    records: Sequence[dict],
    side: str,
    n: int,
    rank: int,
    family: str,
    seed: int,
    group_size: int,
    codes: torch.Tensor,
    scales: torch.Tensor,
    device: torch.device,
) -> torch.Tensor:
    """Rows of one factor for a batch of modules: A^ [b, r, in] or B^T [b, r, out]."""
    ks = [int(r[side]["k"]) for r in records]
    if any(k < 1 or k > n for k in ks):
        raise InvalidArtifact(f"corrupt: a subspace size lies outside 1..{n}")
    basis = make_basis(family, n, ks, [basis_key(seed, r["module"], side) for r in records], device)
    coeffs = torch.zeros(len(records), rank, basis.kmax, dtype=torch.float32, device=device)
    for i, record in enumerate(records):
        entry = record[side]
        if entry["format"] not in FORMATS:
            raise InvalidArtifact(f"corrupt: unknown coefficient format {entry['format']!r}")
        stored = Quantized.from_payload(
            entry["format"],
            rank,
            ks[i],
            group_size,
            _slice(codes, entry["codes"]),
            _slice(scales, entry["scales"]),
        )
        coeffs[i, :, : ks[i]] = dequantize(stored).to(device)
    for record, digest in zip(records, basis.digests()):
        if record[side]["digest"] != digest:
            raise InvalidArtifact(f"{record['module']}: basis digest mismatch (generator or k differ)")
    return basis.expand(coeffs)  # [b, r, n]


def _slice(flat: torch.Tensor, span: Sequence[int]) -> torch.Tensor:
    start, length = int(span[0]), int(span[1])
    if start < 0 or length < 0 or start + length > flat.numel():
        raise InvalidArtifact("corrupt: a coefficient range lies outside the stored data")
    return flat[start : start + length]
