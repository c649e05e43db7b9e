"""NOLA's fits: LoRA factors as quantized coefficients over seeded random bases.

`prepare` does what does not depend on the byte budget (modules batched by shape and, per rank
component, the Pareto front of its (k, format) choices, or the transform code's coefficients);
`fit_budget` then chooses within a budget and fits every module. `nola_format.py` writes the result.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from . import artifact, transform
from .allocate import Candidate, allocate, k_grid, pareto
from .bases import FastBasis, basis_key, make_basis
from .errors import CompressError
from .fit import BasisMetric, ColumnMetric, balance, fit_group, subspace_fit, weighted_quad
from .nola_config import NolaConfig, resolve_device
from .peft_io import LoraCheckpoint, LoraPair
from .protocol import Progress
from .quant import FactorCode, fake_quantize, row_nbytes
from .stats import InputStats
from .transform import ModuleCoefficients, TransformCode
from .transform_act import activation_coefficients


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
