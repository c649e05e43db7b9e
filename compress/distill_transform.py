"""Distillation of the transform code: its coefficients trained end to end through its own quantizer.

Starting from the closed-form transform code at the target budget, every module's rotated coefficients
(B'' columns and A'' rows, transform.py) are trained on the same loss as the row code's distillation
(distill.py: KL of the outputs plus the last hidden states' relative MSE) with the forward pass using
the values the reader will decode: B'' rounded at the code's step (times the module's multiplier), A''
at 1 / sqrt(sum q_j^2) of its decoded B column, as the encoder does (straight-through gradients). The
step stays the closed-form one: without a rate term in the loss a learned step would only shrink, and
the bytes would then have to be won back by a coarser step at re-encoding.

At every check the coefficients are coded exactly as the artifact will hold them (the ANS coder, at
the code's step if the stream fits the budget, else the step found again by bisection), decoded, and
scored on the validation texts; the best code by validation loss is kept, so the bytes returned are the
bytes that get written.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, replace

import numpy as np
import torch

from .bases import FastBasis, basis_key
from .distill import Teacher, _Expand, _Out, _step_loss, validation_loss
from .distill_config import DistillConfig
from .distill_loop import train as train_loop
from .errors import CompressError
from .nola_fit import NolaFit
from .protocol import Progress
from .transform import (
    GAMMAS,
    ModuleCoefficients,
    TransformCode,
    _multiplier,
    encode,
    fit_step,
    module_integers,
    module_weights,
)
from .transform_read import decode


def _ste_round(x: torch.Tensor, rounding: float) -> torch.Tensor:
    q = torch.sign(x) * torch.floor(x.abs() + rounding)
    return x + (q - x).detach()


class _Student(torch.nn.Module):
    """The rotated coefficients of every module, grouped by (side, size, rank) to share a basis."""

    def __init__(self, modules, start: list[tuple[np.ndarray, np.ndarray]], steps, rounding, seed, device):
        super().__init__()
        self.modules_, self.rounding = modules, rounding
        self.groups: list[tuple[str, list[int], FastBasis, torch.Tensor]] = []
        self.params = torch.nn.ParameterList()
        self.steps = torch.tensor(steps, dtype=torch.float32, device=device)
        for side in ("B", "A"):
            members: dict[tuple[int, int], list[int]] = defaultdict(list)
            for i, m in enumerate(modules):
                n = m.pair.out_features if side == "B" else m.pair.in_features
                members[(n, m.pair.rank)].append(i)
            for (n, _), idx in sorted(members.items()):
                keys = [basis_key(seed, modules[i].pair.module, side) for i in idx]
                basis = FastBasis(n, [n] * len(idx), keys, device, torch.float32)
                init = torch.stack([torch.from_numpy(start[i][0 if side == "B" else 1]) for i in idx]).float()
                scale = init.pow(2).mean(dim=(1, 2), keepdim=True).sqrt().clamp_min(1e-12).to(device)
                self.params.append(torch.nn.Parameter(init.to(device) / scale))
                self.groups.append((side, idx, basis, scale))

    def values(self) -> dict[tuple[str, int], torch.Tensor]:
        """(side, module) -> float coefficients [r, n]."""
        out = {}
        for (side, idx, _, scale), p in zip(self.groups, self.params):
            for j, i in enumerate(idx):
                out[(side, i)] = p[j] * scale[j]
        return out

    def weights(self, names: dict[str, str]) -> dict[str, torch.Tensor]:
        """PEFT parameter name -> the factor the reader would decode from these coefficients."""
        vals = self.values()
        decoded: dict[tuple[str, int], torch.Tensor] = {}
        sums = {}
        for i in range(len(self.modules_)):
            step = self.steps[i]
            qb = _ste_round(vals[("B", i)] / step, self.rounding)
            decoded[("B", i)] = qb * step
            sums[i] = (qb.detach() ** 2).sum(1).clamp_min(1.0).sqrt()[:, None]
            qa = _ste_round(vals[("A", i)] * sums[i], self.rounding)
            decoded[("A", i)] = qa / sums[i]
        out = {}
        for side, idx, basis, _ in self.groups:
            rows = _Expand.apply(torch.stack([decoded[(side, i)] for i in idx]), basis)  # [b, r, n]
            for j, i in enumerate(idx):
                pair = self.modules_[i].pair
                if side == "A":
                    out[names[pair.a_key]] = rows[j]
                else:
                    out[names[pair.b_key]] = rows[j].T / pair.scale
        return out

    def coefficients(self) -> list[ModuleCoefficients]:
        vals = self.values()
        return [
            ModuleCoefficients(
                m.pair,
                vals[("B", i)].detach().double().cpu().numpy(),
                vals[("A", i)].detach().double().cpu().numpy(),
            )
            for i, m in enumerate(self.modules_)
        ]


def _start(modules, code: TransformCode, rounding: float, weights) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per module, (B'', A'') holding the closed-form code's decoded values where it keeps a component
    (so training starts from exactly that code) and the unquantized ones where it drops it."""
    out = []
    for m, w, ints in zip(modules, weights, module_integers(modules, code.step, rounding, weights)):
        b, a = m.b.copy(), m.a.copy()
        if ints.kept:
            b[ints.kept] = ints.qb * (code.step * _multiplier(w))
            sums = (ints.qb * ints.qb).sum(1)
            a[ints.kept] = ints.qa / np.sqrt(sums)[:, None]
        out.append((b, a))
    return out


def _exact_code(coeffs, code: TransformCode, budget: int, rounding: float, weights) -> TransformCode:
    """The trained coefficients coded as written: at the trained step if that fits, else bisection."""
    at_step = encode(coeffs, code.step, rounding, weights)
    if at_step is not None and at_step.nbytes <= budget:
        return at_step
    return fit_step(coeffs, budget, rounding, weights=weights)


def _decoded_params(teacher: Teacher, modules, code: TransformCode, seed: int) -> dict[str, torch.Tensor]:
    pairs = [m.pair for m in modules]
    factors, _ = decode(
        pairs, [p.scale for p in pairs], code.step, code.bound, code.codes, seed, teacher.device
    )
    tensors = {}
    for p, (a, b) in zip(pairs, factors):
        tensors[p.a_key], tensors[p.b_key] = a.float(), b.float()
    return teacher.params(tensors)


def distill_transform(
    teacher: Teacher,
    initial: NolaFit,
    modules: Sequence[ModuleCoefficients],
    train: list,
    validation: list,
    cfg: DistillConfig | None = None,
    progress: Progress | None = None,
) -> NolaFit:
    """Distill the closed-form transform code `initial` (over the prepared coefficients `modules`)
    within its own bytes; the best code by validation loss is kept (the initial one if none beats
    it). notes["distill"] records the run as `distill` does."""
    cfg = cfg or DistillConfig()
    if initial.transform is None:
        raise CompressError("distill_transform needs a transform-code fit")
    if not train or not validation:
        raise CompressError("distillation needs calibration texts to train on and to validate with")
    started = time.perf_counter()
    ncfg, code0 = initial.config, initial.transform
    budget, rounding, seed = code0.nbytes, ncfg.rounding, ncfg.seed
    weights = module_weights(modules, GAMMAS[ncfg.weighting])
    steps = [code0.step * _multiplier(w) for w in weights]
    student = _Student(
        modules, _start(modules, code0, rounding, weights), steps, rounding, seed, teacher.device
    )

    def check() -> tuple[float, TransformCode]:
        """The trained coefficients coded exactly as they would be written, and that code's loss."""
        code = _exact_code(student.coefficients(), code0, budget, rounding, weights)
        return validation_loss(teacher, validation, _decoded_params(teacher, modules, code, seed), cfg), code

    def step_loss(batch, target: _Out) -> torch.Tensor:
        return _step_loss(teacher, batch, target, student.weights(teacher.names), cfg)

    before = validation_loss(teacher, validation, _decoded_params(teacher, modules, code0, seed), cfg)
    run = train_loop(student.parameters(), train, step_loss, check, before, cfg, progress, started=started)
    validation_predictions = sum(t.values.shape[0] for _, t in validation)
    record = {
        **asdict(cfg),
        "initial_fit": initial.method,
        "code": "transform",
        **run.record(validation_predictions),
        "device": str(teacher.device),
    }
    notes = {**initial.notes, "distill": record}
    if run.best_state is None:
        return replace(initial, notes=notes)
    return replace(initial, transform=run.best_state, method="distill", notes=notes)
