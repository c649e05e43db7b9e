"""The training loop both distillations share (distill.py for the row code, distill_transform.py for
the transform code).

Adam over the trainable coefficients with a linear warm-up and a cosine decay, the training batches in
a seeded order, and every `eval_every` steps (and after the last) a check of the loss on validation
texts: the best state by that loss is kept, and the loop stops after `patience` checks without a better
one or once the time budget is spent. What a step's loss and a check's state are is each
distillation's own: the loop only orders, steps and compares.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch

from .distill_config import DistillConfig
from .protocol import Progress

State = TypeVar("State")


def warmup_cosine(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over the first 5% of `steps`, then a cosine decay to zero."""
    warmup = max(1, steps // 20)

    def factor(step: int) -> float:
        cosine = 0.5 * (1 + math.cos(math.pi * min(step, steps) / max(steps, 1)))
        return min(1.0, (step + 1) / warmup) * cosine

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class TrainingRun(Generic[State]):
    """What the loop did: the best state (None when no check beat the starting validation loss), the
    losses, and why it stopped."""

    best_state: State | None
    before: float  # validation loss of the start
    best: float  # the lowest validation loss seen (`before` when nothing beat it)
    losses: list[float]  # training loss of every step run
    steps_run: int
    stopped: str
    started: float  # time.perf_counter() when the distillation began

    @property
    def improved(self) -> bool:
        return self.best_state is not None

    def record(self, validation_predictions: int) -> dict[str, Any]:
        """The run's part of notes["distill"]: steps, why it stopped, losses, what was kept, time."""
        window = max(1, len(self.losses) // 10)
        return {
            "steps_run": self.steps_run,
            "stopped": self.stopped,
            "loss_first": round(sum(self.losses[:window]) / window, 6) if self.losses else None,
            "loss_last": round(sum(self.losses[-window:]) / window, 6) if self.losses else None,
            "validation_before": round(self.before, 6),
            "validation_best": round(self.best, 6),
            "validation_predictions": validation_predictions,
            "kept": "distilled" if self.improved else "initial",
            "seconds": round(time.perf_counter() - self.started, 1),
        }


def train(
    parameters: Iterable[torch.nn.Parameter],
    batches: Sequence[tuple[Any, Any]],
    step_loss: Callable[[Any, Any], torch.Tensor],
    validate: Callable[[], tuple[float, State]],
    before: float,
    cfg: DistillConfig,
    progress: Progress | None = None,
    *,
    started: float,
) -> TrainingRun[State]:
    """Train `parameters` on `step_loss(batch, target)` over `batches` ((batch, target) pairs) for at
    most cfg.steps steps. `validate()` gives the validation loss of the current parameters and the
    state to keep if it is the best so far; `before` is the start's validation loss, which a check
    must beat. `started` (time.perf_counter()) is when the time budget began."""
    params = list(parameters)
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    schedule = warmup_cosine(optimizer, cfg.steps)
    order = torch.randperm(len(batches), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    best, best_state = before, None
    losses: list[float] = []
    stale, stopped, steps = 0, "steps", 0
    for step in range(cfg.steps):
        batch, target = batches[order[step % len(order)]]
        loss = step_loss(batch, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        steps = step + 1
        if progress:
            progress(steps, cfg.steps)
        if steps % cfg.eval_every and steps != cfg.steps:
            continue
        current, state = validate()
        if current < best:
            best, best_state, stale = current, state, 0
        else:
            stale += 1
        if stale >= cfg.patience:
            stopped = "early stop: validation loss stopped improving"
            break
        if time.perf_counter() - started > cfg.max_seconds:
            stopped = f"time budget of {cfg.max_seconds:g} s"
            break
    return TrainingRun(best_state, before, best, losses, steps, stopped, started)
