"""Distillation: train the NOLA coefficients so the base model with the NOLA adapter reproduces the
base model with the original adapter.

A weight- or activation-space fit keeps each module close on its own; what matters is the model's
output. Starting from the activation-aware fit, every coefficient is optimised end to end on
KL(original || NOLA) over the output distribution (logits of an LM's tokens or a classifier's texts),
plus the relative MSE of the last hidden states (`hidden_weight`: a classifier's few logits per text
carry little signal, its hidden states one vector per token); a model without a head gets the MSE
alone. The teacher's outputs are computed once and cached; the base model stays frozen; the
coefficients are quantization-aware (straight-through: the forward pass uses the stored values, the
gradient flows to the float ones).

The factors are rebuilt from the coefficients on every step by the bases themselves (`expand`, with
`project` as its exact adjoint for the gradient), so no dense basis matrix is ever held for the whole
model, and they are substituted into the PEFT model with `torch.func.functional_call`.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple

import torch

from .base_models import load_base_model
from .bases import Basis, basis_key, make_basis
from .calibration import token_batches, with_adapter
from .distill_config import DistillConfig
from .distill_loop import train as train_loop
from .errors import CompressError
from .nola_fit import ModuleFit, NolaFit
from .peft_io import LoraCheckpoint
from .protocol import Progress
from .quant import FactorCode, fake_quantize


class _Expand(torch.autograd.Function):
    """P c with P^T as its gradient: the basis never needs to exist as a matrix."""

    @staticmethod
    def forward(ctx, coeffs: torch.Tensor, basis: Basis) -> torch.Tensor:  # type: ignore[override]
        ctx.basis = basis
        return basis.expand(coeffs)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return ctx.basis.project(grad).to(grad.dtype), None


@dataclass
class _Side:
    """One factor side (A or B) of a group of modules sharing n and rank: basis, trainable coefficients."""

    members: list[int]  # indices into the module list
    basis: Basis
    param: torch.nn.Parameter  # [b, r, kmax], unit RMS per module
    scale: torch.Tensor  # [b, 1, 1] RMS of the initial coefficients
    mask: torch.Tensor  # [b, r, kmax]: slot s of row j is used (s < k_j)
    codes: list[FactorCode]  # sizes and formats per row (the values are what gets trained)
    # rows sharing (k, format), for quantizing them together: (k, fmt) -> (module index, row) pairs
    buckets: dict[tuple[int, str], tuple[list[int], list[int]]]


class _Student(torch.nn.Module):
    """Every module's coefficients, and the PEFT weights they stand for."""

    def __init__(self, fit: NolaFit, device: torch.device, group_size: int):
        super().__init__()
        self.fit, self.group_size = fit, group_size
        self.sides: dict[tuple[str, int, int], _Side] = {}
        params = torch.nn.ParameterList()
        for side in ("A", "B"):
            groups: dict[tuple[int, int], list[int]] = defaultdict(list)
            for i, m in enumerate(fit.modules):
                n = m.pair.in_features if side == "A" else m.pair.out_features
                groups[(n, m.pair.rank)].append(i)
            for (n, rank), members in sorted(groups.items()):
                codes = [self._stored(i, side) for i in members]
                kmax = [max(1, c.kmax) for c in codes]
                keys = [basis_key(fit.config.seed, fit.modules[i].pair.module, side) for i in members]
                basis = make_basis(fit.config.basis, n, kmax, keys, device, torch.float32)
                init = torch.stack([c.values(basis.kmax) for c in codes]).to(device)  # [b, r, kmax]
                slots = torch.arange(basis.kmax, device=device)
                ks = torch.tensor([c.ks for c in codes], device=device)
                mask = slots[None, None, :] < ks[:, :, None]
                buckets: dict[tuple[int, str], tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
                for j, code in enumerate(codes):
                    for row, (k, fmt) in enumerate(zip(code.ks, code.fmts)):
                        if k:
                            buckets[(k, fmt)][0].append(j)
                            buckets[(k, fmt)][1].append(row)
                scale = init.pow(2).mean(dim=(1, 2), keepdim=True).sqrt().clamp_min(1e-12)
                param = torch.nn.Parameter(init / scale)
                params.append(param)
                self.sides[(side, n, rank)] = _Side(members, basis, param, scale, mask, codes, dict(buckets))
        self.params = params

    def _stored(self, i: int, side: str) -> FactorCode:
        module = self.fit.modules[i]
        return module.stored_a if side == "A" else module.stored_b

    def coefficients(self, quantized: bool) -> dict[tuple[str, int, int], torch.Tensor]:
        """Per side group: [b, r, kmax] coefficients; quantized ones pass gradients straight through."""
        out = {}
        for key, s in self.sides.items():
            x = s.param * s.scale * s.mask
            if quantized:
                q = torch.zeros_like(x)
                for (k, fmt), (modules, rows) in s.buckets.items():
                    chosen = x[modules, rows, :k].detach().float().cpu()  # [rows in bucket, k]
                    q[modules, rows, :k] = fake_quantize(chosen, fmt, self.group_size).to(x)
                x = x + (q - x).detach()
            out[key] = x
        return out

    def weights(self, names: dict[str, str], quantized: bool) -> dict[str, torch.Tensor]:
        """PEFT parameter name -> rebuilt factor (A [r, in], B [out, r])."""
        out = {}
        for key, coeffs in self.coefficients(quantized).items():
            s = self.sides[key]
            rows = _Expand.apply(coeffs, s.basis)  # [b, r, n]
            for j, i in enumerate(s.members):
                pair = self.fit.modules[i].pair
                if key[0] == "A":
                    out[names[pair.a_key]] = rows[j]
                else:
                    out[names[pair.b_key]] = rows[j].T
        return out

    def export(self) -> list[ModuleFit]:
        """Stored (really quantized) coefficients for every module, with the same sizes and formats."""
        stored: dict[tuple[str, int], FactorCode] = {}
        with torch.no_grad():
            for key, coeffs in self.coefficients(quantized=False).items():
                s = self.sides[key]
                for j, (i, code) in enumerate(zip(s.members, s.codes)):
                    stored[(key[0], i)] = FactorCode.encode(
                        coeffs[j].float().cpu(), code.ks, code.fmts, self.group_size
                    )
        return [
            replace(m, stored_a=stored[("A", i)], stored_b=stored[("B", i)])
            for i, m in enumerate(self.fit.modules)
        ]


class Teacher:
    """The base model with the original adapter: its tokenizer, and its outputs on texts, computed once.

    Candidates (distilled coefficients, a decoded artifact) run on the same model object with their
    LoRA factors substituted through `functional_call`, so only one copy of the base model is loaded.
    """

    def __init__(
        self,
        base_model: str | Path,
        checkpoint: LoraCheckpoint,
        device: torch.device,
        batch_size: int = 16,
        max_length: int = 128,
    ):
        self.device, self.batch_size = device, batch_size
        model, self.tokenizer = load_base_model(base_model, device, adapter=checkpoint)
        self.max_length = min(max_length, _max_positions(model.config, self.tokenizer))
        with tempfile.TemporaryDirectory(prefix="adapters-teacher-") as tmp:
            self.model = with_adapter(model, checkpoint, Path(tmp) / "adapter")
        for p in self.model.parameters():
            p.requires_grad_(False)
        available = dict(self.model.named_parameters())
        self.names: dict[str, str] = {}
        for pair in checkpoint.pairs:
            for key in (pair.a_key, pair.b_key):
                stem, leaf = key.rsplit(".", 1)
                name = f"{stem}.default.{leaf}"
                if name in available:
                    self.names[key] = name

    def _batches(self, texts: Sequence[str], batch_size: int) -> list[dict]:
        return list(
            token_batches(
                self.tokenizer, list(texts), batch_size, self.max_length, self.device, model=self.model
            )
        )

    def outputs(self, texts: Sequence[str], hidden: bool = False) -> Targets:
        """(batch, teacher outputs) for the texts, batch by batch; with `hidden`, the last hidden
        states too."""
        return Targets(self.model, self._batches(texts, self.batch_size), hidden)

    def predictions(self, texts: Sequence[str]) -> list[int]:
        """How many predictions each text gives the held-out measurement: one per token for a
        language model (or token classifier, or hidden states), a fixed number per text otherwise
        (one for a text classifier). Decided by running the longest text, counted by tokenizing."""
        if not texts:
            return []
        encoded = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)
        lengths = [len(ids) for ids in encoded["input_ids"]]
        longest = max(range(len(texts)), key=lengths.__getitem__)
        probe = self._batches([texts[longest]], 1)[0]
        with torch.no_grad():
            per_text = _outputs(self.model, probe, None).values.shape[0]
        if lengths[longest] > 2 and per_text >= lengths[longest] - 1:
            return lengths
        return [per_text] * len(texts)

    def params(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """PEFT parameter names for the LoRA factors among `tensors` (adapter keys)."""
        missing = [k for k in tensors if k not in self.names]
        if missing:
            raise CompressError(f"{missing[0]}: no such LoRA parameter in the model with the adapter applied")
        return {self.names[k]: v.to(self.device, torch.float32) for k, v in tensors.items()}

    @torch.no_grad()
    def agreement(self, data, params: dict[str, torch.Tensor]) -> dict[str, float]:
        """Top-1 agreement and mean KL(original || candidate) per prediction (or hidden-state error)."""
        agree = total = 0
        kl = err = ref = 0.0
        logits = True
        for batch, (teacher, logits, _) in data:
            student, _, _ = _outputs(self.model, batch, params)
            if logits:
                agree += int((student.argmax(-1) == teacher.argmax(-1)).sum())
                kl += float(_loss(student, teacher, True, 1.0)) * teacher.shape[0]
            else:
                err += float(((student - teacher) ** 2).sum())
                ref += float((teacher**2).sum())
            total += teacher.shape[0]
        if logits:
            return {
                "agreement": round(agree / max(total, 1), 6),
                "kl": kl / max(total, 1),
                "predictions": total,
            }
        return {"hidden_rel_error": math.sqrt(err / max(ref, 1e-30)), "predictions": total}


def _max_positions(config, tokenizer) -> int:
    """The longest input the model takes (its position table), or the tokenizer's limit."""
    limits = [
        getattr(config, name, None) for name in ("max_position_embeddings", "n_positions", "max_seq_len")
    ]
    limits.append(getattr(tokenizer, "model_max_length", None))
    usable = [int(x) for x in limits if isinstance(x, int) and 0 < x < 1_000_000]
    return min(usable) if usable else 1 << 30


class Targets:
    """The teacher's outputs for a list of token batches, as (batch, outputs) pairs.

    Outputs are kept while they fit in `max_bytes` and computed again (one forward pass) beyond:
    a language model's logits over a large vocabulary for thousands of texts would not fit in
    memory, a classifier's always do.
    """

    def __init__(self, model, batches: list[dict], hidden: bool, max_bytes: int = 1 << 30):
        self.model, self.batches, self.hidden, self.max_bytes = model, batches, hidden, max_bytes
        self._kept: dict[int, _Out] = {}
        self._bytes = 0

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> tuple[dict, _Out]:
        batch = self.batches[index]
        out = self._kept.get(index)
        if out is None:
            with torch.no_grad():
                out = _outputs(self.model, batch, None, self.hidden)
            size = sum(t.numel() * t.element_size() for t in (out.values, out.hidden) if t is not None)
            if self._bytes + size <= self.max_bytes:
                self._kept[index] = out
                self._bytes += size
        return batch, out

    def __iter__(self):
        return (self[i] for i in range(len(self)))


class _Out(NamedTuple):
    values: torch.Tensor  # [n, d] per prediction: LM tokens, classifier texts, or hidden states
    logits: bool  # values are logits (else hidden states)
    hidden: torch.Tensor | None  # [tokens, d] last hidden states, when asked for beside the logits


def _outputs(
    model, batch: dict[str, torch.Tensor], params: dict[str, torch.Tensor] | None, hidden: bool = False
) -> _Out:
    kwargs = {**batch, "output_hidden_states": True} if hidden else batch
    if params is None:
        out = model(**kwargs)
    else:
        out = torch.func.functional_call(model, params, args=(), kwargs=kwargs, strict=False)
    mask = batch["attention_mask"].bool()
    logits = getattr(out, "logits", None)
    spans = getattr(out, "start_logits", None) is not None
    if logits is None and not spans:
        return _Out(out.last_hidden_state[mask].float(), False, None)
    last = None
    if hidden:
        # An encoder-decoder's decoder reads the text shifted right (calibration.decoder_inputs), so
        # its outputs line up with the attention mask too; its hidden states are the decoder's.
        states = getattr(out, "decoder_hidden_states", None) or out.hidden_states
        last = states[-1][mask].float()
    if spans:
        # Question answering: a start and an end distribution over each text's tokens (two
        # predictions per text); padding gets a logit that no softmax gives weight to.
        ends = torch.cat([out.start_logits, out.end_logits]).float()
        return _Out(ends.masked_fill(~mask.repeat(2, 1), -1e4), True, last)
    return _Out(logits[mask].float() if logits.dim() == 3 else logits.float(), True, last)


def _loss(student: torch.Tensor, teacher: torch.Tensor, logits: bool, temperature: float) -> torch.Tensor:
    if logits:
        log_p = torch.log_softmax(teacher / temperature, dim=-1)
        log_q = torch.log_softmax(student / temperature, dim=-1)
        return (log_p.exp() * (log_p - log_q)).sum(-1).mean() * temperature**2
    return _relative_mse(student, teacher)


def _relative_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return ((student - teacher) ** 2).sum() / (teacher**2).sum().clamp_min(1e-12)


def validation_loss(teacher: Teacher, data, params: dict[str, torch.Tensor], cfg: DistillConfig) -> float:
    """The training loss of the factors `params` (PEFT parameter names) averaged over `data`'s
    predictions."""
    total, count = 0.0, 0
    with torch.no_grad():
        for batch, target in data:
            total += float(_step_loss(teacher, batch, target, params, cfg)) * target.values.shape[0]
            count += target.values.shape[0]
    return total / max(count, 1)


def _step_loss(teacher: Teacher, batch, target: _Out, weights, cfg: DistillConfig) -> torch.Tensor:
    hidden = target.hidden is not None
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=teacher.device.type == "cuda"):
        out = _outputs(teacher.model, batch, weights, hidden)
    loss = _loss(out.values.float(), target.values, target.logits, cfg.temperature)
    if hidden:
        loss = loss + cfg.hidden_weight * _relative_mse(out.hidden.float(), target.hidden)
    return loss


def distill(
    teacher: Teacher,
    initial: NolaFit,
    train: list,
    validation: list,
    cfg: DistillConfig | None = None,
    progress: Progress | None = None,
) -> NolaFit:
    """Distill `initial` (usually the activation-aware fit) on the teacher's outputs `train`
    (`Teacher.outputs(texts, hidden=cfg.hidden_weight > 0)`), stopping early when the loss on
    `validation` (texts the training never sees, and not the gate's held-out texts) stops improving,
    or when the time budget is spent. The coefficients with the lowest validation loss are kept, or
    the initial ones if distillation did not lower it; notes["distill"] records the settings, the
    losses, the steps run, why it stopped and the time taken.
    """
    cfg = cfg or DistillConfig()
    if initial.transform is not None:
        raise CompressError("a transform-code fit is distilled by distill_transform.distill_transform")
    if not train or not validation:
        raise CompressError("distillation needs calibration texts to train on and to validate with")
    started = time.perf_counter()
    student = _Student(initial, teacher.device, initial.config.group_size)

    def check() -> tuple[float, list[torch.Tensor]]:
        """The loss of the stored (quantized) coefficients, and the float ones that give it."""
        with torch.no_grad():
            weights = student.weights(teacher.names, quantized=True)
        loss = validation_loss(teacher, validation, weights, cfg)
        return loss, [p.detach().clone() for p in student.parameters()]

    def step_loss(batch, target: _Out) -> torch.Tensor:
        return _step_loss(teacher, batch, target, student.weights(teacher.names, quantized=cfg.qat), cfg)

    before, _ = check()
    run = train_loop(student.parameters(), train, step_loss, check, before, cfg, progress, started=started)
    if run.best_state is not None:
        with torch.no_grad():
            for param, value in zip(student.parameters(), run.best_state):
                param.copy_(value)
    validation_predictions = sum(t.values.shape[0] for _, t in validation)
    record = {
        **asdict(cfg),
        "initial_fit": initial.method,
        **run.record(validation_predictions),
        "device": str(teacher.device),
    }
    if not run.improved:
        return replace(initial, notes={**initial.notes, "distill": record})
    return replace(
        initial, modules=student.export(), method="distill", notes={**initial.notes, "distill": record}
    )
