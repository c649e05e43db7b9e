"""Compression as a whole: statistics, fit, distillation, held-out measurement and the fidelity gate.

    texts --split--> fit texts -> input statistics -> rate-distortion choice + activation-aware fit
                                                   -> distillation (with a base model)
                     held-out texts -> top-1 agreement and KL of the *encoded artifact* against the
                                       original adapter -> the gate

Without a base model only weight/activation fits run, and the gate falls back to the weight error
(which is a poor proxy for behaviour, so its default threshold is strict); the record says which.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .calibration import collect_stats, split_texts
from .codec import CompressionReport, Progress, decode_artifact
from .distill import DistillConfig, Teacher, distill
from .errors import CompressError
from .nola import NolaConfig, encode, fit_adapter, lora_pairs, resolve_device
from .peft_io import LoraCheckpoint
from .stats import InputStats
from .stfile import loads


@dataclass
class Gate:
    """Thresholds a compressed version must meet to be served instead of its lossless source."""

    min_agreement: float | None = 0.99  # top-1 agreement with the original adapter, held-out texts
    max_kl: float | None = None  # mean KL(original || compressed) per prediction
    max_weight_error: float | None = 0.05  # only when no held-out measurement is possible

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value is not None and not (isinstance(value, (int, float)) and value >= 0):
                raise ValueError(f"gate threshold {name} must be a non-negative number or None")
        if self.min_agreement is not None and self.min_agreement > 1:
            raise ValueError("min_agreement is a fraction in [0, 1]")

    def check(self, fidelity: dict[str, Any]) -> dict[str, Any]:
        held = fidelity.get("held_out") or {}
        failures: list[str] = []
        if "agreement" in held:
            basis = "held-out agreement"
            if self.min_agreement is not None and held["agreement"] < self.min_agreement:
                failures.append(f"agreement {held['agreement']:.4f} < {self.min_agreement}")
            if self.max_kl is not None and held["kl"] > self.max_kl:
                failures.append(f"KL {held['kl']:.4g} > {self.max_kl}")
        else:
            basis = "weight error (no base model to measure behaviour)"
            err = fidelity.get("weight_rel_error", 1.0)
            if self.max_weight_error is not None and err > self.max_weight_error:
                failures.append(f"weight error {err:.4f} > {self.max_weight_error}")
        return {
            "passed": not failures,
            "basis": basis,
            "thresholds": asdict(self),
            "reason": "; ".join(failures) if failures else "within thresholds",
        }


def run(
    checkpoint: LoraCheckpoint,
    config: NolaConfig,
    *,
    stats: dict[str, InputStats] | None = None,
    base_model: str | Path | None = None,
    texts: Sequence[str] | None = None,
    distill_config: DistillConfig | None = None,
    gate: Gate | None = None,
    held_out: float = 0.2,
    progress: Progress | None = None,
) -> tuple[bytes, CompressionReport]:
    """Compress with everything the inputs allow; returns the artifact bytes and the report.

    config.fit: weight | activation | distill | auto (distill with a base model and texts, activation
    with statistics, else weight).
    """
    method = config.fit
    if method == "auto":
        method = (
            "distill"
            if base_model and texts
            else ("activation" if stats or (base_model and texts) else "weight")
        )
    if method == "distill" and not (base_model and texts):
        raise CompressError("fit=distill needs a base model and calibration texts")
    teacher = fit_texts = held_texts = None
    if base_model and texts:
        fit_texts, held_texts = split_texts(list(texts), held_out)
        device = resolve_device(config.device)
        teacher = Teacher(base_model, checkpoint, device)
        if stats is None and method != "weight":
            modules = [p.module for p in lora_pairs(checkpoint)]
            stats = collect_stats(teacher.model, teacher.tokenizer, fit_texts, modules)
    fit_config = NolaConfig(**{**asdict(config), "fit": "weight" if method == "weight" else "activation"})
    fitted = fit_adapter(checkpoint, fit_config, stats, progress)
    if method == "distill":
        fitted = distill(teacher, fitted, fit_texts, held_texts, distill_config, progress)
    if fit_texts is not None:
        fitted.notes["calibration"] = {"fit_texts": len(fit_texts), "held_out_texts": len(held_texts)}
    data, report = encode(checkpoint, fitted)
    if teacher is not None:
        # Measure what a reader gets: the artifact decoded, on texts the fit never saw.
        tensors, metadata = loads(data)
        decoded = decode_artifact(tensors, metadata)
        factors = {k: decoded.tensors[k] for p in lora_pairs(checkpoint) for k in (p.a_key, p.b_key)}
        report.fidelity["held_out"] = teacher.agreement(teacher.outputs(held_texts), teacher.params(factors))
    if gate is not None:
        verdict = gate.check(report.fidelity)
        report.fidelity["gate"] = verdict
        report.fidelity["gate_passed"] = verdict["passed"]
    return data, report
