"""The training loop both distillations share, on a problem small enough to know its answer: one
parameter pulled towards training targets, checked against a validation target."""

from __future__ import annotations

import time
from itertools import pairwise

import pytest
import torch

from adapters.compress.distill_config import DistillConfig
from adapters.compress.distill_loop import train, warmup_cosine


def _problem(valid_at: float):
    x = torch.nn.Parameter(torch.zeros(()))
    batches = [(None, torch.tensor(1.0)), (None, torch.tensor(2.0))]

    def step_loss(_, target):
        return (x - target) ** 2

    def validate():
        value = float(x.detach())
        return (value - valid_at) ** 2, value

    return x, batches, step_loss, validate


def test_it_keeps_the_state_of_the_best_check():
    # The training targets pull x past the validation target: the best check is not the last.
    x, batches, step_loss, validate = _problem(valid_at=0.6)
    seen: list[tuple[int, int]] = []
    checks: list[tuple[float, float]] = []

    def recording():
        checks.append(validate())
        return checks[-1]

    cfg = DistillConfig(steps=40, lr=0.1, eval_every=10, patience=10)
    progress = lambda done, total: seen.append((done, total))  # noqa: E731
    run = train([x], batches, step_loss, recording, validate()[0], cfg, progress, started=time.perf_counter())
    assert run.steps_run == 40 and run.stopped == "steps" and len(run.losses) == 40
    assert len(checks) == 4 and checks[-1] != min(checks) and seen == [(s, 40) for s in range(1, 41)]
    best_loss, best_value = min(checks)
    assert run.improved and run.best == best_loss < run.before and run.best_state == best_value
    record = run.record(validation_predictions=7)
    assert record["kept"] == "distilled" and record["validation_predictions"] == 7
    assert record["validation_best"] == round(best_loss, 6) and record["steps_run"] == 40


def test_it_stops_after_patience_checks_without_a_better_loss():
    x, batches, step_loss, validate = _problem(valid_at=0.0)  # the start is already the best
    cfg = DistillConfig(steps=500, lr=0.1, eval_every=3, patience=2)
    run = train([x], batches, step_loss, validate, validate()[0], cfg, started=time.perf_counter())
    assert run.steps_run == 6 and run.stopped.startswith("early stop")
    assert not run.improved and run.best_state is None and run.best == run.before == 0.0
    assert run.record(1)["kept"] == "initial"


def test_it_keeps_to_its_time_budget():
    x, batches, step_loss, validate = _problem(valid_at=1.5)
    cfg = DistillConfig(steps=500, lr=0.1, eval_every=4, max_seconds=1e-3)
    run = train([x], batches, step_loss, validate, validate()[0], cfg, started=time.perf_counter() - 1)
    assert run.steps_run == 4 and run.stopped == "time budget of 0.001 s"


def test_the_batch_order_follows_the_seed():
    def order(seed: int) -> list[float]:
        x, batches, _, validate = _problem(valid_at=1.5)
        batches = [(None, torch.tensor(float(i))) for i in range(8)]
        used: list[float] = []

        def step_loss(_, target):
            used.append(float(target))
            return (x - target) ** 2

        cfg = DistillConfig(steps=8, lr=0.1, seed=seed)
        train([x], batches, step_loss, validate, 0.0, cfg, started=time.perf_counter())
        return used

    assert order(0) == order(0) and sorted(order(0)) == [float(i) for i in range(8)]
    assert order(0) != order(1)


def test_the_schedule_warms_up_then_decays_to_zero():
    x = torch.nn.Parameter(torch.zeros(()))
    optimizer = torch.optim.SGD([x], lr=1.0)
    schedule = warmup_cosine(optimizer, 100)
    rates = []
    for _ in range(100):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates[0] == pytest.approx(0.2) and rates[4] == pytest.approx(max(rates), rel=1e-3)
    assert all(a >= b for a, b in pairwise(rates[4:])) and rates[-1] < 1e-3
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
