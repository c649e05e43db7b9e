"""Queries of the compression queue's domain state: a run's lease on its version (`QueueRepository`)
and the workers that announced themselves with the base models they hold (`WorkerRepository`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from .models import Version, VersionStatus, WorkerBaseModel, WorkerRecord
from .repository import db_now, dialect_insert

QUEUED = (VersionStatus.PENDING.value, VersionStatus.COMPRESSING.value)  # waiting for or in a run


def held_by_live_worker(model: sa.ColumnElement[str | None], live_since: dt.datetime) -> sa.Exists:
    """Whether some worker seen since `live_since` holds the base model `model`."""
    return sa.exists().where(
        WorkerBaseModel.base_model == model,
        WorkerRecord.id == WorkerBaseModel.worker_id,
        WorkerRecord.last_seen >= live_since,
    )


class QueueRepository:
    """A compression run's hold on its version: the run sets `compressing` with a lease (`leased_by`,
    `lease_expires_at`) that it renews while it works (the job queue, jobs.py, decides who runs what).
    Every write checks who holds the lease."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def now(self) -> dt.datetime:
        return db_now(self.session)

    def lease(self, version_id: int, worker: str, until: dt.datetime) -> Version:
        """Mark a locked job `compressing` for `worker` until `until`, counting the attempt."""
        self.session.execute(
            sa.update(Version)
            .where(Version.id == version_id)
            .values(
                status=VersionStatus.COMPRESSING.value,
                attempts=Version.attempts + 1,
                leased_by=worker,
                lease_expires_at=until,
                next_attempt_at=None,
            )
            .execution_options(synchronize_session=False)
        )
        version = self.session.scalar(
            sa.select(Version).where(Version.id == version_id).execution_options(populate_existing=True)
        )
        assert version is not None
        return version

    def _held(self, version_id: int, worker: str) -> sa.Update:
        return (
            sa.update(Version)
            .where(
                Version.id == version_id,
                Version.status == VersionStatus.COMPRESSING.value,
                Version.leased_by == worker,
            )
            .execution_options(synchronize_session=False)
        )

    def renew(self, version_id: int, worker: str, until: dt.datetime) -> bool:
        """Extend a lease; False when `worker` no longer holds it."""
        return (
            self.session.execute(self._held(version_id, worker).values(lease_expires_at=until)).rowcount == 1
        )

    def requeue(
        self, version_id: int, worker: str, *, at: dt.datetime | None, error: str | None, count_attempt: bool
    ) -> bool:
        """Give a held job back to the queue (to be claimed from `at`); False if not held."""
        values: dict[str, Any] = {
            "status": VersionStatus.PENDING.value,
            "leased_by": None,
            "lease_expires_at": None,
            "next_attempt_at": at,
        }
        if error is not None:
            values["error"] = error
        if not count_attempt:
            values["attempts"] = Version.attempts - 1
        return self.session.execute(self._held(version_id, worker).values(**values)).rowcount == 1

    def fail(self, version_id: int, worker: str, *, error: str, now: dt.datetime) -> bool:
        """Mark a held job failed for good; False if not held."""
        values = {
            "status": VersionStatus.FAILED.value,
            "error": error,
            "processed_at": now,
            "leased_by": None,
            "lease_expires_at": None,
            "next_attempt_at": None,
        }
        return self.session.execute(self._held(version_id, worker).values(**values)).rowcount == 1


class WorkerRepository:
    """The workers that announced themselves, and the base models each holds."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def now(self) -> dt.datetime:
        return db_now(self.session)

    def announce(
        self, worker_id: str, *, host: str, device: str, models: Sequence[str], now: dt.datetime
    ) -> None:
        """Insert or refresh a worker's row, with exactly these base models."""
        self.session.execute(
            dialect_insert(self.session, WorkerRecord)
            .values(id=worker_id, host=host, device=device, started_at=now, last_seen=now)
            .on_conflict_do_update(
                index_elements=["id"], set_={"host": host, "device": device, "last_seen": now}
            )
        )
        self.session.execute(sa.delete(WorkerBaseModel).where(WorkerBaseModel.worker_id == worker_id))
        if models:
            self.session.execute(
                sa.insert(WorkerBaseModel),
                [{"worker_id": worker_id, "base_model": model} for model in sorted(set(models))],
            )

    def touch(self, worker_id: str, now: dt.datetime) -> bool:
        """Mark a worker seen now; False when its row is gone (pruned while it was out of touch)."""
        result = self.session.execute(
            sa.update(WorkerRecord)
            .where(WorkerRecord.id == worker_id)
            .values(last_seen=now)
            .execution_options(synchronize_session=False)
        )
        return result.rowcount == 1

    def remove(self, worker_id: str) -> None:
        self.session.execute(sa.delete(WorkerRecord).where(WorkerRecord.id == worker_id))

    def prune(self, live_since: dt.datetime) -> int:
        """Delete the rows of workers not seen since `live_since` (they died without saying so)."""
        result = self.session.execute(sa.delete(WorkerRecord).where(WorkerRecord.last_seen < live_since))
        return result.rowcount

    def live(self, live_since: dt.datetime) -> Sequence[WorkerRecord]:
        """The workers seen since `live_since`, oldest first, with their base models."""
        return self.session.scalars(
            sa.select(WorkerRecord)
            .where(WorkerRecord.last_seen >= live_since)
            .order_by(WorkerRecord.started_at, WorkerRecord.id)
        ).all()

    def holders(self, models: Sequence[str], live_since: dt.datetime) -> dict[str, int]:
        """Per base model: how many live workers hold it (models none holds are left out)."""
        if not models:
            return {}
        rows = self.session.execute(
            sa.select(WorkerBaseModel.base_model, sa.func.count())
            .join(WorkerRecord, WorkerRecord.id == WorkerBaseModel.worker_id)
            .where(WorkerBaseModel.base_model.in_(sorted(set(models))), WorkerRecord.last_seen >= live_since)
            .group_by(WorkerBaseModel.base_model)
        )
        return {str(model): int(count) for model, count in rows}

    def waiting(self, live_since: dt.datetime) -> dict[str, int]:
        """Per base model: pending versions that want it while no live worker holds it."""
        wanted = Version.wants_base_model
        rows = self.session.execute(
            sa.select(wanted, sa.func.count())
            .where(
                Version.status.in_(QUEUED),  # the partial index's predicate
                Version.status == VersionStatus.PENDING.value,
                wanted.is_not(None),
                ~held_by_live_worker(wanted, live_since),
            )
            .group_by(wanted)
        )
        return {str(model): int(count) for model, count in rows}
