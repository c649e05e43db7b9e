"""Compression jobs on the Procrastinate queue (PostgreSQL): routing, fairness, enqueueing, and the
operator's view (list, retry, cancel, metrics). The worker that runs them is worker.py.

The version row stays the domain state (status, lease holder, attempts, error); the job only says
"compress version N" and carries the scheduling: its queue, priority and locks.

- Routing by capability: a version whose codec wants a base model is deferred to the queue
  `compress:<digest of the model id>`, which only workers holding that model listen on; every worker
  listens on `compress`. A job that waited `worker_capability_wait_seconds` on a model queue while no
  live worker holds the model is moved to `compress` (`move_waiting`) and compressed without it.
- Fairness: the priority of a new job is minus the number of versions of its namespace already
  waiting, so one namespace pushing 500 adapters does not starve the others: their first job goes
  ahead of its second (the queue runs the highest priority first, oldest first among equals).
- Exactly one job per version at a time: the job's `queueing_lock` and `lock` are the version's.
- Enqueueing is transactional: `defer_in` runs the library's defer on the connection of the
  transaction that inserts the version. `reconcile` defers a job for any pending version that has
  none (versions from before this queue, a job deleted by hand) and for a version an inline run
  left compressing when its process died.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from . import events
from .db import Database
from .errors import InvalidRequest, NotFound
from .job_views import JobView
from .models import Adapter, Version, VersionStatus
from .queue_repository import QUEUED, WorkerRepository
from .workers import live_since

log = logging.getLogger("adapters.jobs")

COMPRESS_TASK = "compress"
RECOMPRESS_TASK = "recompress"  # recompress.py: re-encode a ready version from its source
DATA_FREE_QUEUE = "compress"
MODEL_QUEUE_PREFIX = "compress:"
MIN_PRIORITY = -1000  # fairness priorities stop here: beyond that, oldest first
KEEP_SUCCEEDED_HOURS = 24 * 7  # succeeded jobs older than this are deleted by workers
JOB_STATES = ("todo", "doing", "succeeded", "failed", "cancelled", "aborting", "aborted")


def model_queue(model: str) -> str:
    """The queue of jobs that want `model`. A digest: PostgreSQL channel names (LISTEN/NOTIFY per
    queue) are limited to 63 bytes, base model ids are not."""
    return MODEL_QUEUE_PREFIX + hashlib.sha256(model.encode()).hexdigest()[:16]


def queues_for(models: Sequence[str]) -> list[str]:
    """The queues a worker holding `models` listens on."""
    return [DATA_FREE_QUEUE, *sorted({model_queue(m) for m in models})]


def queue_of(version: Version) -> str:
    return model_queue(version.wants_base_model) if version.wants_base_model else DATA_FREE_QUEUE


def conninfo(db: Database) -> str:
    """The database URL as libpq reads it (without SQLAlchemy's driver name)."""
    return db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


def make_app(db: Database, *, asynchronous: bool = False) -> Any:
    """A Procrastinate app on the registry's database: asynchronous for a worker, else synchronous."""
    import procrastinate

    connector = (
        procrastinate.PsycopgConnector(conninfo=conninfo(db))
        if asynchronous
        else procrastinate.SyncPsycopgConnector(conninfo=conninfo(db))
    )
    return procrastinate.App(connector=connector)


def _driver(session: Session) -> Any:
    """The psycopg connection under the session's transaction."""
    return session.connection().connection.driver_connection


def _waiting_in_namespace(session: Session, namespace: str, but: int) -> int:
    return int(
        session.scalar(
            sa.select(sa.func.count())
            .select_from(Version)
            .join(Adapter, Adapter.id == Version.adapter_id)
            .where(
                Adapter.namespace == namespace,
                Version.status == VersionStatus.PENDING.value,
                Version.id != but,
            )
        )
        or 0
    )


def defer_in(session: Session, version: Version) -> int:
    """Defer the compression of `version` in the session's transaction; returns the job id."""
    namespace = session.get(Adapter, version.adapter_id).namespace  # type: ignore[union-attr]
    priority = max(-_waiting_in_namespace(session, namespace, version.id), MIN_PRIORITY)
    job_id = defer(
        session,
        task_name=COMPRESS_TASK,
        queue=queue_of(version),
        priority=priority,
        lock=f"version:{version.id}",
        queueing_lock=f"version:{version.id}",
        task_kwargs={"version_id": version.id},
    )
    log.debug("deferred", extra={"version": version.ref, "queue": queue_of(version), "priority": priority})
    return job_id


def defer(
    session: Session,
    *,
    task_name: str,
    queue: str,
    priority: int,
    lock: str,
    queueing_lock: str,
    task_kwargs: dict[str, Any],
) -> int:
    """The library's defer, on the session's connection: the job exists iff the transaction commits.
    procrastinate's AlreadyEnqueued when a job with `queueing_lock` is waiting already."""
    from procrastinate import jobs as pjobs
    from procrastinate import manager, sync_psycopg_connector

    job = pjobs.Job(
        id=None,
        queue=queue,
        priority=priority,
        lock=lock,
        queueing_lock=queueing_lock,
        task_name=task_name,
        task_kwargs=task_kwargs,
    )
    jobs = manager.JobManager(sync_psycopg_connector.SyncPsycopgConnector())
    deferred = jobs.defer_job(job, connection=_driver(session))
    assert deferred.id is not None
    return deferred.id


_WITHOUT_JOB = sa.text(
    """
    SELECT v.id FROM versions v
     WHERE v.status IN ('pending', 'compressing')
       AND (v.status = 'pending' AND v.created_at < :before
            OR v.status = 'compressing' AND v.lease_expires_at < now())
       AND NOT EXISTS (
           SELECT 1 FROM procrastinate_jobs j
            WHERE j.task_name = :task AND j.status IN ('todo', 'doing')
              AND (j.args->>'version_id')::bigint = v.id)
     ORDER BY v.id LIMIT 500
    """
)


def reconcile(db: Database, *, older_than: float) -> list[int]:
    """Defer a job for each version that waits with no job waiting or running: pending (pushed more
    than `older_than` seconds ago, so a push whose process compresses inline is left alone), or left
    compressing by an inline run whose lease expired (its process died)."""
    from procrastinate.exceptions import AlreadyEnqueued

    deferred = []
    with db.transaction() as session:
        now = session.scalar(sa.select(sa.func.now()))
        before = now - dt.timedelta(seconds=older_than)
        for version_id in session.scalars(_WITHOUT_JOB, {"before": before, "task": COMPRESS_TASK}):
            version = session.get(Version, version_id, with_for_update={"skip_locked": True})
            if version is None or version.status not in QUEUED:
                continue
            with session.begin_nested():  # a job deferred meanwhile (its queueing lock) skips this one
                try:
                    defer_in(session, version)
                except AlreadyEnqueued as exc:
                    log.info("not re-deferring %s: %s", version.ref, exc)
                    continue
            deferred.append(version_id)
    if deferred:
        log.warning("deferred jobs for pending versions that had none", extra={"versions": deferred})
    return deferred


_MOVABLE = sa.text(
    """
    SELECT j.id, v.wants_base_model FROM procrastinate_jobs j
      JOIN versions v ON v.id = (j.args->>'version_id')::bigint
     WHERE j.task_name IN (:task, :recompress) AND j.status = 'todo' AND j.queue_name LIKE 'compress:%'
       AND v.created_at < :before
     FOR UPDATE OF j SKIP LOCKED
    """
)


def move_waiting(db: Database, *, wait_seconds: float, live_seconds: float) -> list[int]:
    """Move the jobs that waited `wait_seconds` for a base model no live worker holds to the
    data-free queue (any worker compresses them without the model). Returns their ids."""
    moved = []
    with db.transaction() as session:
        workers = WorkerRepository(session)
        now = workers.now()
        before = now - dt.timedelta(seconds=wait_seconds)
        rows = session.execute(
            _MOVABLE, {"task": COMPRESS_TASK, "recompress": RECOMPRESS_TASK, "before": before}
        )
        waiting = [(job_id, model) for job_id, model in rows if model]
        held = workers.holders([model for _, model in waiting], live_since(now, live_seconds))
        for job_id, model in waiting:
            if held.get(model):
                continue
            # The library has no call that moves a waiting job; its queue is plain data.
            session.execute(
                sa.text("UPDATE procrastinate_jobs SET queue_name = :q WHERE id = :id AND status = 'todo'"),
                {"q": DATA_FREE_QUEUE, "id": job_id},
            )
            moved.append(job_id)
    if moved:
        log.info("moved to the data-free queue", extra={"jobs": moved})
    return moved


async def retry_stalled(
    app: Any, *, seconds_since_heartbeat: float, task_name: str = COMPRESS_TASK
) -> list[int]:
    """Put the compression jobs of workers that stopped heartbeating back in their queue (the
    library's stalled-job recovery); the next run counts the attempt, or fails the version when its
    attempts are spent. Returns the job ids."""
    from procrastinate.exceptions import ConnectorException

    retried = []
    stalled = await app.job_manager.get_stalled_jobs(
        task_name=task_name, seconds_since_heartbeat=seconds_since_heartbeat
    )
    for job in stalled:
        try:
            await app.job_manager.retry_job(job)
        except ConnectorException as exc:  # another worker retried it first
            log.info("job %s not retried: %s", job.id, exc)
            continue
        log.warning("retrying the job of a stopped worker", extra={"job": job.id})
        retried.append(job.id)
    return retried


# ------------------------------------------------------------------------------ operator's view


_LIST = """
    SELECT j.id, j.queue_name, j.task_name, j.status::text AS status, j.priority, j.attempts,
           j.scheduled_at, a.namespace || '/' || a.name || ':' || v.number AS ref, v.status AS version_status
      FROM procrastinate_jobs j
      LEFT JOIN versions v ON v.id = (j.args->>'version_id')::bigint
      LEFT JOIN adapters a ON a.id = v.adapter_id
     WHERE (CAST(:queue AS text) IS NULL OR j.queue_name = :queue)
       AND (CAST(:status AS text) IS NULL OR j.status::text = :status)
       AND (CAST(:id AS bigint) IS NULL OR j.id = :id)
     ORDER BY j.id DESC LIMIT :limit
"""


def _view(row: Any) -> JobView:
    return JobView(
        id=row.id,
        queue=row.queue_name,
        task=row.task_name,
        status=row.status,
        priority=row.priority,
        attempts=row.attempts,
        version=row.ref,
        version_status=row.version_status,
        scheduled_at=row.scheduled_at,
    )


def require_queue(db: Database) -> None:
    if db.dialect != "postgresql":
        raise InvalidRequest("jobs exist on PostgreSQL registries only (this one compresses inline)")


def list_jobs(
    session: Session, *, queue: str | None = None, status: str | None = None, limit: int = 100
) -> list[JobView]:
    """The newest jobs first, with the version each compresses."""
    if status is not None and status not in JOB_STATES:
        raise InvalidRequest(f"unknown job status {status!r}: one of {', '.join(JOB_STATES)}")
    rows = session.execute(sa.text(_LIST), {"queue": queue, "status": status, "id": None, "limit": limit})
    return [_view(row) for row in rows]


def get_job(session: Session, job_id: int) -> JobView:
    row = session.execute(sa.text(_LIST), {"queue": None, "status": None, "id": job_id, "limit": 1}).first()
    if row is None:
        raise NotFound(f"no job {job_id}")
    return _view(row)


def _version_of(session: Session, job_id: int) -> Version | None:
    version_id = session.scalar(
        sa.text("SELECT (args->>'version_id')::bigint FROM procrastinate_jobs WHERE id = :id"), {"id": job_id}
    )
    if version_id is None:
        return None
    return session.get(Version, version_id, with_for_update={"of": Version}, populate_existing=True)


def retry(session: Session, job_id: int) -> JobView:
    """Run a failed or cancelled compression again: its version pending (attempts from zero), and
    the job waiting again (a cancelled one is replaced by a new job), in one transaction."""
    from procrastinate import sql

    job = get_job(session, job_id)
    if job.status not in ("failed", "cancelled", "aborted"):
        raise InvalidRequest(f"job {job_id} is {job.status}: only failed or cancelled jobs are retried")
    version = _version_of(session, job_id)
    if version is not None and version.status in (VersionStatus.FAILED.value, VersionStatus.PENDING.value):
        version.status, version.error, version.attempts = VersionStatus.PENDING.value, None, 0
        version.leased_by = version.lease_expires_at = version.next_attempt_at = None
        session.flush()
    if job.status == "failed":
        with _driver(session).cursor() as cursor:
            cursor.execute(
                sql.queries["retry_job"],
                {"job_id": job_id, "retry_at": None}
                | {"new_priority": None, "new_queue_name": None, "new_lock": None},
            )
        return get_job(session, job_id)
    if version is None or version.status != VersionStatus.PENDING.value:
        raise InvalidRequest(f"job {job_id}'s version is not waiting for compression")
    return get_job(session, defer_in(session, version))


def cancel(session: Session, job_id: int, *, by: str | None = None) -> JobView:
    """Cancel a waiting compression: the job `cancelled`, its version failed with the reason."""
    from procrastinate import manager, sync_psycopg_connector

    job = get_job(session, job_id)
    if job.status != "todo":
        raise InvalidRequest(f"job {job_id} is {job.status}: only waiting jobs are cancelled")
    version = _version_of(session, job_id)
    jobs = manager.JobManager(sync_psycopg_connector.SyncPsycopgConnector())
    if not jobs.cancel_job_by_id(job_id, connection=_driver(session)):
        raise InvalidRequest(f"job {job_id} started meanwhile: only waiting jobs are cancelled")
    if version is not None and version.status == VersionStatus.PENDING.value:
        version.status = VersionStatus.FAILED.value
        version.error = f"compression cancelled by {by or 'an admin'} (job {job_id})"
        version.next_attempt_at = None
        session.flush()
        events.version_status(session, version)
    return get_job(session, job_id)


@dataclass(frozen=True)
class QueueStats:
    counts: dict[tuple[str, str], int]  # (queue, status) -> jobs
    oldest_waiting_seconds: float  # of the jobs due now and not started; 0 when none


def stats(session: Session) -> QueueStats:
    counts = {
        (queue, status): n
        for queue, status, n in session.execute(
            sa.text("SELECT queue_name, status::text, count(*) FROM procrastinate_jobs GROUP BY 1, 2")
        )
    }
    # A job's age: since it was deferred (its first event), or since the retry it waits for is due.
    oldest = session.scalar(
        sa.text(
            """
            SELECT EXTRACT(EPOCH FROM now() - min(GREATEST(e.at, COALESCE(j.scheduled_at, e.at))))
              FROM procrastinate_jobs j JOIN procrastinate_events e ON e.job_id = j.id AND e.type = 'deferred'
             WHERE j.status = 'todo' AND (j.scheduled_at IS NULL OR j.scheduled_at <= now())
            """
        )
    )
    return QueueStats(counts=counts, oldest_waiting_seconds=max(float(oldest or 0), 0.0))
