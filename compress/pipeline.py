"""Compression as a whole: statistics, the size search, fits, distillation, held-out measurement, gate.

    texts --split--> held-out texts (enough predictions for the gate) -> top-1 agreement and KL of each
                     candidate *artifact as a reader decodes it* against the original adapter
                 --> fit texts -> input statistics -> rate-distortion choice + activation-aware fit
                               -> distillation (with a base model), validated on texts of their own

With a gate, the size is searched (search.py): closed-form fits bisect the ladder of whole-file
ratios for the largest that passes; with a base model, distillation then tries the rungs above it,
starting from the closed-form fit of each. The smallest passing artifact is returned; when nothing
passes, the most faithful attempt is returned with the failed verdict, and the caller keeps the
lossless source. Without a gate, one artifact of exactly the asked ratio is made.

Sizes are whole files: the artifact (header, lossless tensors, coefficients) against the source file.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import artifact
from .calibration import collect_stats
from .distill import Teacher, distill
from .distill_config import DistillConfig
from .distill_transform import distill_transform
from .errors import CompressError
from .gate import DEFAULT_PREDICTIONS, Gate
from .nola_config import NolaConfig, resolve_device
from .nola_fit import NolaFit, Prepared, fit_budget, lora_pairs, prepare
from .nola_format import encode, encode_decoded
from .peft_io import LoraCheckpoint
from .protocol import CompressionReport, Progress, canonical_bytes
from .search import Attempt, ladder, largest_passing, refine
from .stats import InputStats

# Distillation runs (minutes each on a CPU) the search spends above the best closed-form size.
MAX_DISTILL_RUNS = 3
# Texts kept for fitting: the held-out set takes at most the rest.
MIN_FIT_FRACTION = 0.5
# Validation texts for distillation's early stopping, taken from the fit texts.
VALIDATION_FRACTION, MAX_VALIDATION_TEXTS = 0.1, 256
# Texts the input statistics are collected over (one forward pass each).
MAX_STATS_TEXTS = 1024
# Bytes left below a size target for the header's measured figures, which vary from fit to fit,
# and how far below the target a fit may land (each refit costs a whole fit).
SIZE_SLACK, SIZE_TOLERANCE = 64, 0.02


@dataclass
class TextSplit:
    fit: list[str]
    validation: list[str]
    held_out: list[str]
    held_out_predictions: int


def split_for_predictions(
    texts: Sequence[str], predictions: Sequence[int], target: int, seed: int = 0
) -> TextSplit:
    """A seeded split of `texts` (each good for `predictions[i]` held-out predictions) into held-out
    texts worth at least `target` predictions (at most half the texts), validation texts for early
    stopping, and the rest for fitting."""
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)  # noqa: S311 - a reproducible split, not a secret
    limit = int(len(texts) * (1 - MIN_FIT_FRACTION))
    held: list[int] = []
    count = 0
    for i in order[:limit]:
        if count >= target:
            break
        held.append(i)
        count += predictions[i]
    rest = order[len(held) :]
    n_val = min(MAX_VALIDATION_TEXTS, round(len(rest) * VALIDATION_FRACTION)) if len(rest) >= 10 else 0
    return TextSplit(
        fit=[texts[i] for i in sorted(rest[n_val:])],
        validation=[texts[i] for i in sorted(rest[:n_val])],
        held_out=[texts[i] for i in sorted(held)],
        held_out_predictions=count,
    )


class _Bar:
    """Maps the phases of a run onto one progress scale of 1000 steps."""

    TOTAL = 1000

    def __init__(self, progress: Progress | None):
        self.progress, self.done = progress, 0

    def phase(self, start: float, end: float) -> Progress:
        def report(done: int, total: int) -> None:
            self.set(start + (end - start) * done / max(total, 1))

        return report

    def set(self, fraction: float) -> None:
        done = max(self.done, min(self.TOTAL, round(fraction * self.TOTAL)))
        if self.progress and done != self.done:
            self.done = done
            self.progress(done, self.TOTAL)


def _method(fit: str, stats, base_model, texts) -> str:
    if fit == "auto":
        if base_model and texts:
            return "distill"
        return "activation" if stats else "weight"
    if fit == "distill" and not (base_model and texts):
        raise CompressError("fit=distill needs a base model and calibration texts")
    return fit


class _Run:
    """One compression: the prepared fit, the teacher and its outputs, and the attempts made."""

    def __init__(
        self,
        checkpoint: LoraCheckpoint,
        prepared: Prepared,
        source_bytes: int,
        gate: Gate | None,
        teacher: Teacher | None = None,
        held: list | None = None,
    ):
        self.checkpoint, self.prepared, self.source_bytes = checkpoint, prepared, source_bytes
        self.gate, self.teacher, self.held = gate, teacher, held
        empty, _ = encode(checkpoint, fit_budget(prepared, 0))
        self.overhead = len(empty)  # header and lossless tensors: what no budget can shrink

    def measure(self, fitted: NolaFit) -> tuple[bytes, CompressionReport]:
        """The artifact of a fit, judged: held-out agreement of the artifact as a reader decodes it,
        on texts the fit never saw, and the gate's verdict, both also recorded in its header (so
        `adapters inspect` shows them, and the size counts them)."""
        data, report, decoded = encode_decoded(self.checkpoint, fitted)
        report.source_bytes = self.source_bytes
        recorded: dict[str, Any] = {}
        if self.teacher is not None and self.held:
            # What a reader rebuilds from `data`: the encoder decoded the artifact's stream already.
            pairs = lora_pairs(self.checkpoint)
            factors = {k: decoded[k] for p in pairs for k in (p.a_key, p.b_key)}
            recorded["held_out"] = self.teacher.agreement(self.held, self.teacher.params(factors))
            report.fidelity["held_out"] = recorded["held_out"]
        if self.gate is not None:
            recorded["gate"] = self.gate.check(report.fidelity)
            report.fidelity["gate"] = recorded["gate"]
            report.fidelity["gate_passed"] = recorded["gate"]["passed"]
        if recorded:
            data = artifact.annotate(data, recorded)
            report.artifact_bytes = len(data)
        return data, report

    def fit_to_size(self, target: int) -> tuple[NolaFit, bytes, CompressionReport] | None:
        """The fit whose whole artifact comes closest below `target` bytes (None: out of reach).
        A fixed k_fraction sets every size itself: the target does not apply."""
        if self.prepared.config.k_fraction is not None:
            fitted = fit_budget(self.prepared, self.prepared.lora_bytes * 4)
            return (fitted, *self.measure(fitted))
        limit = target - SIZE_SLACK // 2
        budget = target - self.overhead - SIZE_SLACK
        best = None
        for _ in range(3):
            if budget <= 0:
                break
            fitted = fit_budget(self.prepared, budget)
            data, report = self.measure(fitted)
            if len(data) <= limit:
                best = (fitted, data, report)
                if limit - len(data) < SIZE_TOLERANCE * target:
                    break
            # The header grows with what is stored: aim again with this fit's own overhead.
            overhead = len(data) - report.fidelity["coefficient_bytes"]
            aim = target - SIZE_SLACK - overhead
            if len(data) > limit:
                aim = min(aim, budget - (len(data) - limit) - 8)
            if aim == budget or (best is not None and aim < budget):
                break
            budget = aim
        return best

    def attempt(
        self, ratio: float, made: tuple[NolaFit, bytes, CompressionReport] | None, how: str
    ) -> Attempt:
        if made is None:
            reason = (
                f"{ratio:g}x ({int(self.source_bytes / ratio)} bytes) is out of reach: the header and "
                f"lossless tensors alone take {self.overhead} bytes"
            )
            return Attempt(ratio, None, how, {"passed": False, "reason": reason})
        fitted, data, report = made
        verdict = report.fidelity.get("gate", {"passed": True})
        return Attempt(ratio, len(data), how, verdict, result=(fitted, data, report))


def run(
    checkpoint: LoraCheckpoint,
    config: NolaConfig,
    *,
    stats: dict[str, InputStats] | None = None,
    base_model: str | Path | None = None,
    texts: Sequence[str] | None = None,
    distill_config: DistillConfig | None = None,
    gate: Gate | None = None,
    source_bytes: int | None = None,
    held_out_predictions: int = DEFAULT_PREDICTIONS,
    progress: Progress | None = None,
) -> tuple[bytes, CompressionReport]:
    """Compress with everything the inputs allow; returns the artifact bytes and the report.

    `config.ratio` is the largest whole-file ratio (`source_bytes`, by default the canonical source
    file's, over the artifact's) that the search tries, or with no gate the exact ratio made.
    config.fit: weight | activation | distill | auto (distill with a base model and texts, activation
    with statistics, else weight).
    """
    source_bytes = source_bytes or len(canonical_bytes(checkpoint))
    method = _method(config.fit, stats, base_model, texts)
    distill_config = distill_config or DistillConfig()
    bar = _Bar(progress)
    teacher = held = split = None
    if base_model and texts:
        teacher = Teacher(base_model, checkpoint, resolve_device(config.device))
        split = split_for_predictions(texts, teacher.predictions(texts), held_out_predictions)
        if not split.fit:
            raise CompressError(f"too few calibration texts ({len(texts)}) to fit and to measure")
        if stats is None and method != "weight":
            modules = [p.module for p in lora_pairs(checkpoint)]
            stats = collect_stats(
                teacher.model,
                teacher.tokenizer,
                split.fit[:MAX_STATS_TEXTS],
                modules,
                max_length=teacher.max_length,
            )
        held = teacher.outputs(split.held_out) if split.held_out else []
    fit_config = replace(config, fit="weight" if method == "weight" else "activation")
    # Distillation starts from the closed-form code of the same fit (under code=auto the transform code:
    # 5.66x against the row code's 4.76x at the default gate on MiniLM, bench/RESULTS.md).
    prepared = prepare(checkpoint, fit_config, stats, bar.phase(0.0, 0.1))
    job = _Run(checkpoint, prepared, source_bytes, gate, teacher, held)
    distilling = method == "distill"
    closed_end = 0.3 if distilling else 1.0
    expected = max(3, len(ladder(config.ratio)).bit_length() + 1)
    step = [0]

    def closed_form(ratio: float) -> Attempt:
        made = job.fit_to_size(int(source_bytes / ratio))
        step[0] += 1
        bar.set(0.1 + (closed_end - 0.1) * min(1.0, step[0] / expected))
        return job.attempt(ratio, made, "activation" if prepared.stats else "weight")

    train = validation = None

    def distilled(ratio: float, start: Attempt | None, share: tuple[float, float]) -> Attempt:
        nonlocal train, validation
        assert teacher is not None and split is not None
        if train is None:
            train = teacher.outputs(split.fit, hidden=distill_config.hidden_weight > 0)
            validation = teacher.outputs(split.validation or split.fit[:1])
        base = start if start is not None and start.result is not None else closed_form(ratio)
        if base.result is None:
            return replace(base, method="distill")
        start = base.result[0]
        if start.transform is not None:  # the transform code trains through its own quantizer
            assert prepared.transform is not None
            fitted = distill_transform(
                teacher, start, prepared.transform, train, validation, distill_config, bar.phase(*share)
            )
        else:
            fitted = distill(teacher, start, train, validation, distill_config, bar.phase(*share))
        made = job.attempt(ratio, (fitted, *job.measure(fitted)), "distill")
        record = fitted.notes.get("distill", {})
        made.distill = {k: record[k] for k in ("steps_run", "stopped", "kept", "seconds") if k in record}
        return made

    if gate is None or config.k_fraction is not None:
        chosen = closed_form(config.ratio)
        if chosen.result is None:
            raise CompressError(chosen.verdict["reason"])
        if distilling:
            chosen = distilled(config.ratio, chosen, (closed_end, 1.0))
        attempts = [chosen]
    else:
        rungs = ladder(config.ratio)
        index, attempts = largest_passing(rungs, closed_form)
        chosen = attempts[[a.ratio for a in attempts].index(rungs[index])] if index is not None else None
        if index is not None and index > 0:  # between rungs: the passing size is known to 9%
            finer, extra = refine(rungs[index], rungs[index - 1], closed_form)
            attempts += extra
            chosen = finer or chosen
        if distilling:
            by_ratio = {a.ratio: a for a in attempts}
            above = range(index - 1 if index is not None else len(rungs) - 1, -1, -1)
            for run_number, i in enumerate(list(above)[:MAX_DISTILL_RUNS]):
                share = (
                    closed_end + (1 - closed_end) * run_number / MAX_DISTILL_RUNS,
                    closed_end + (1 - closed_end) * (run_number + 1) / MAX_DISTILL_RUNS,
                )
                result = distilled(rungs[i], by_ratio.get(rungs[i]), share)
                attempts.append(result)
                if not result.passed:
                    break
                chosen = result
        if chosen is None:  # nothing passed: the most faithful attempt, with its failed verdict
            made = [a for a in attempts if a.result is not None]
            if not made:
                raise CompressError(f"no size passed the fidelity gate: {attempts[-1].verdict['reason']}")
            chosen = min(made, key=lambda a: (a.ratio, a.method != "distill"))
    bar.set(1.0)
    _, data, report = chosen.result
    if split is not None:
        report.fidelity["calibration"] = {
            "texts": len(texts or ()),
            "fit_texts": len(split.fit),
            "validation_texts": len(split.validation),
            "held_out_texts": len(split.held_out),
            "held_out_predictions": split.held_out_predictions,
        }
    if gate is not None:
        report.fidelity["search"] = {
            "max_ratio": config.ratio,
            "attempts": [a.summary() for a in attempts],
            "chosen_ratio": chosen.ratio if chosen.passed else None,
        }
    return data, report
