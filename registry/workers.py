"""Workers announce themselves and the base models they hold, so that jobs that want a base model go to
workers that have it.

A worker writes its row in `workers` (host, device, the base models its machine can load) when it starts,
refreshes it from a heartbeat thread every third of `worker_live_seconds` (re-reading which models it has,
so a model downloaded meanwhile counts), and deletes it when it stops. A row not refreshed for
`worker_live_seconds` belongs to a worker that died: it is ignored, and pruned by the next heartbeat.

The job queue (jobs.py) then routes by three rules:
- a version whose codec uses no base model (raw), or whose adapter names none, goes to any worker at once
  (queue `compress`);
- a version whose base model some live worker holds goes only to such a worker (its model's queue);
- a version whose base model no live worker holds moves to `compress` once it has waited
  `worker_capability_wait_seconds` since it was pushed, and is compressed without the model (data-free);
  its record says so.
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from .db import Database
from .models import Version, VersionStatus
from .queue_repository import WorkerRepository
from .schemas import WaitingView, WorkerView

log = logging.getLogger("adapters.workers")


@dataclass(frozen=True)
class Capabilities:
    """What a claimer holds and the rules it claims by: its base models, how recently a worker must have
    been seen to count as live, and how long a job waits for a worker that holds its base model."""

    models: tuple[str, ...] = ()
    live_seconds: float = 30.0
    wait_seconds: float = 300.0

    def without_model_note(self, model: str | None) -> str | None:
        """Why a job that wants `model` runs on this claimer without it (None when it holds it, or the
        job wants none): by the claiming rules, no live worker held it after the wait."""
        if model is None or model in self.models:
            return None
        return f"no live worker holds {model}; compressed without it after {self.wait_seconds:g} s"


def live_since(now: dt.datetime, live_seconds: float) -> dt.datetime:
    return now - dt.timedelta(seconds=live_seconds)


class Presence:
    """A worker's row in `workers`, kept fresh from a background thread while the `with` body runs and
    deleted at its end. `models()` is called at every beat; `models` holds the list last announced."""

    def __init__(
        self,
        db: Database,
        worker_id: str,
        *,
        device: str,
        models: Callable[[], Sequence[str]],
        live_seconds: float,
    ) -> None:
        self.db = db
        self.worker_id = worker_id
        self.device = device
        self.host = socket.gethostname()[:255]
        self.live_seconds = live_seconds
        self._models = models
        self.models: tuple[str, ...] = ()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"presence-{worker_id}", daemon=True)

    def beat(self) -> None:
        """Refresh the row (rewriting it when the models changed or it was pruned) and prune dead rows."""
        models = tuple(sorted(set(self._models())))
        with self.db.transaction() as session:
            workers = WorkerRepository(session)
            now = workers.now()
            workers.prune(live_since(now, self.live_seconds))
            if models != self.models or not workers.touch(self.worker_id, now):
                workers.announce(self.worker_id, host=self.host, device=self.device, models=models, now=now)
        if models != self.models:
            log.info("base models", extra={"worker": self.worker_id, "models": list(models)})
        self.models = models

    def _run(self) -> None:
        while not self._stop.wait(self.live_seconds / 3):
            try:
                self.beat()
            except Exception:  # a database hiccup: the next beat tries again
                log.exception("could not refresh the presence of %s", self.worker_id)

    def __enter__(self) -> Presence:
        self.beat()  # announced before the first claim
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        try:
            with self.db.transaction() as session:
                WorkerRepository(session).remove(self.worker_id)
        except Exception:  # the row goes stale and is pruned
            log.exception("could not remove the presence of %s", self.worker_id)


@dataclass(frozen=True)
class QueueState:
    """What the workers table says about a queued version (see VersionView)."""

    waiting: WaitingView | None = None
    device: str | None = None  # of the worker compressing it


def queue_states(
    session: Session, versions: Sequence[Version], *, live_seconds: float, wait_seconds: float
) -> dict[int, QueueState]:
    """For the pending versions that want a base model, who may take them; for the compressing ones,
    the device of their worker. Versions in neither state are left out (and cost no query)."""
    pending = [v for v in versions if v.status == VersionStatus.PENDING.value and v.wants_base_model]
    compressing = [v for v in versions if v.status == VersionStatus.COMPRESSING.value and v.leased_by]
    if not pending and not compressing:
        return {}
    workers = WorkerRepository(session)
    since = live_since(workers.now(), live_seconds)
    states: dict[int, QueueState] = {}
    holders = workers.holders([str(v.wants_base_model) for v in pending], since)
    wait = dt.timedelta(seconds=wait_seconds)
    for version in pending:
        model = str(version.wants_base_model)
        live = holders.get(model, 0)
        states[version.id] = QueueState(
            waiting=WaitingView(
                base_model=model,
                live_workers=live,
                without_model_from=None if live else version.created_at + wait,
            )
        )
    if compressing:
        devices = {w.id: w.device for w in workers.live(since)}
        for version in compressing:
            states[version.id] = QueueState(device=devices.get(str(version.leased_by)))
    return states


def live_workers(session: Session, *, live_seconds: float) -> list[WorkerView]:
    workers = WorkerRepository(session)
    return [WorkerView.of(w) for w in workers.live(live_since(workers.now(), live_seconds))]
