"""Claiming as a worker does, in-process: the job queue (Procrastinate, on PostgreSQL) hands out a job
from the queues a worker with `held` base models listens on, and the run takes the version it names.
On SQLite, which has no queue, the oldest pending version stands in for the job."""

from __future__ import annotations

import asyncio
from typing import Any

import sqlalchemy as sa

from adapters.registry import jobs, models, queue
from adapters.registry.client import LocalRegistry
from adapters.registry.db import Database
from adapters.registry.workers import Capabilities

LIVE = 30.0


def fetch(db: Database, queues: list[str]) -> Any:
    """The next job for a worker on `queues` (left `doing`, as a worker's would be), or None."""

    async def go() -> Any:
        app = jobs.make_app(db, asynchronous=True)
        async with app.open_async():
            worker_id = await app.job_manager.register_worker()
            return await app.job_manager.fetch_job(queues=queues, worker_id=worker_id)

    return asyncio.run(go())


def recover(db: Database, *, seconds_since_heartbeat: float = 0) -> list[int]:
    """A worker's recovery of stalled jobs (by default: every fetched job counts as stalled)."""

    async def go() -> list[int]:
        app = jobs.make_app(db, asynchronous=True)
        async with app.open_async():
            return await jobs.retry_stalled(app, seconds_since_heartbeat=seconds_since_heartbeat)

    return asyncio.run(go())


def claim(
    registry: LocalRegistry,
    worker: str,
    held: tuple[str, ...] = (),
    *,
    wait: float = 300,
    lease_seconds: float = 60,
    max_attempts: int = 3,
) -> queue.Job | None:
    """Move jobs that waited `wait` s for a model no live worker holds, fetch the next job for a worker
    holding `held`, and claim its version for `worker`; None when no job is due."""
    db = registry.db
    if db.dialect == "postgresql":
        jobs.move_waiting(db, wait_seconds=wait, live_seconds=LIVE)
        job = fetch(db, jobs.queues_for(held))
        if job is None:
            return None
        version_id = int(job.task_kwargs["version_id"])
    else:
        with db.transaction() as session:
            version_id = session.scalar(
                sa.select(sa.func.min(models.Version.id)).where(models.Version.status == "pending")
            )
        if version_id is None:
            return None
    capabilities = Capabilities(held, live_seconds=LIVE, wait_seconds=wait)
    return queue.claim_for_run(
        db,
        version_id,
        worker,
        lease_seconds=lease_seconds,
        max_attempts=max_attempts,
        capabilities=capabilities,
    )
