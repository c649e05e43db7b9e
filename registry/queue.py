"""A compression run's hold on its version row: claim, lease, heartbeat, retry, release.

Which version runs where and when is the job queue's business (jobs.py, worker.py); this module keeps
the version row, the domain state, in step. Claiming a version (`claim_for_run` for a queue job,
`claim_version` for an inline run) sets `compressing` with a lease that the claimer renews from a
heartbeat thread (`Lease`) while the codec runs. When the run ends the
claimer records the outcome (`processing.run_job`), gives the job back (`release`, on shutdown), or
reports the error (`fail`): an error that another run could cure (storage, a crash of the codec's
machinery) puts the version back (pending) until `max_attempts` runs were spent, and the queue
retries its job with exponential backoff; input the codec refuses fails at once. An inline claimer
that dies stops renewing; its lease expires and `claim_orphan` lets another process take it over.

Delivery is at least once: two runs of one job can overlap when a lease expires under a live but
stalled worker. That is harmless: outputs are content-addressed blobs, and only the current lease
holder's outcome is recorded.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass
from typing import Any

from . import events
from .db import Database
from .errors import BlobNotFound, RegistryError, StorageError, VersionNotFound, VersionNotReady
from .models import Version, VersionStatus
from .queue_repository import QUEUED, QueueRepository
from .sweep import process_alive
from .workers import Capabilities

log = logging.getLogger("adapters.queue")

MAX_BACKOFF = dt.timedelta(minutes=10)


def worker_id(kind: str = "worker") -> str:
    """A name for this claimer, unique across machines and restarts: kind:host:pid:random."""
    return f"{kind}:{socket.gethostname()[:64]}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class Job:
    """A claimed version: what the codec needs, and the lease that makes it ours."""

    version_id: int
    ref: str
    source: tuple[str, int]  # (sha256, size) of the source blob
    requested: dict[str, Any]
    base_model: str | None  # the adapter's base model id, for codecs that use one
    attempts: int  # including this one
    worker: str
    lease_expires_at: dt.datetime
    # Why this claimer runs a job that wants a base model without holding it (recorded with the
    # outcome when the model is indeed not found here); None when it holds it or the job wants none.
    without_model: str | None = None

    @classmethod
    def of(cls, version: Version, capabilities: Capabilities | None = None) -> Job:
        assert version.leased_by is not None and version.lease_expires_at is not None
        return cls(
            version_id=version.id,
            ref=version.ref,
            source=(version.source_digest, version.source_size),
            requested=dict(version.requested),
            base_model=version.adapter.base_model,
            attempts=version.attempts,
            worker=version.leased_by,
            lease_expires_at=version.lease_expires_at,
            without_model=capabilities.without_model_note(version.wants_base_model) if capabilities else None,
        )


class GaveUp(RegistryError):
    """A version's attempts were spent by runs that stopped without finishing; it is failed now."""


class Interrupted(BaseException):
    """Raised in a worker's main thread to stop the current run and give its job back (shutdown).
    A BaseException, so codecs' `except Exception` blocks let it through."""


def _seconds(value: float) -> dt.timedelta:
    return dt.timedelta(seconds=value)


def claim_for_run(
    db: Database,
    version_id: int,
    worker: str,
    *,
    lease_seconds: float,
    max_attempts: int,
    capabilities: Capabilities | None = None,
) -> Job | None:
    """Take the version a queue job names for a run by `worker`: a pending one, or one left
    `compressing` by a run that stopped (the queue hands a job out again only when its worker stopped
    heartbeating, or gave it back). None when there is nothing to run: the version is settled (a
    run finished it and died before the queue heard), a live inline run holds it, or it is gone. A
    version whose attempts are spent is failed here, with the reason, instead of running again
    (`GaveUp` says so)."""
    with db.transaction() as session:
        queue = QueueRepository(session)
        version = session.get(Version, version_id, with_for_update={"of": Version}, populate_existing=True)
        if version is None or version.status not in QUEUED:
            return None
        now = queue.now()
        if (
            version.status == VersionStatus.COMPRESSING.value
            and str(version.leased_by).startswith("inline:")
            and version.lease_expires_at is not None
            and version.lease_expires_at > now
        ):
            return None  # an inline run (`process`) holds it and is alive: it records the outcome
        if version.status == VersionStatus.COMPRESSING.value and version.attempts >= max_attempts:
            log.warning("giving up on %s: its run stopped on attempt %d", version.ref, version.attempts)
            error = (
                f"gave up after {version.attempts} attempts: the last run stopped without "
                f"finishing ({version.leased_by} stopped)"
            )
            queue.fail(version.id, str(version.leased_by), error=error, now=now)
            gave_up = GaveUp(f"{version.ref}: {error}")
        else:
            return Job.of(queue.lease(version_id, worker, now + _seconds(lease_seconds)), capabilities)
    raise gave_up  # after the commit that recorded it


def claim_version(db: Database, version_id: int, worker: str, *, lease_seconds: float) -> Job:
    """Claim one given pending version now (inline compression), whatever its retry time."""
    with db.transaction() as session:
        queue = QueueRepository(session)
        version = session.get(Version, version_id, with_for_update={"of": Version}, populate_existing=True)
        if version is None:
            raise VersionNotFound(f"no version with id {version_id}")
        if version.status != VersionStatus.PENDING.value:
            raise VersionNotReady(f"{version.ref} is {version.status}, not pending")
        return Job.of(queue.lease(version_id, worker, queue.now() + _seconds(lease_seconds)))


def dead_local_owner(owner: str | None) -> bool:
    """Whether a lease holder (see `worker_id`) was a process on this machine that no longer runs."""
    parts = (owner or "").split(":")  # kind:host:pid:random
    if len(parts) != 4 or not parts[2].isdigit():
        return False
    _kind, host, pid, _random = parts
    return host == socket.gethostname()[:64] and not process_alive(int(pid))


def orphaned(version: Version, now: dt.datetime, *, unclaimed_after: dt.timedelta) -> str | None:
    """Why nobody is working on a queued version any more, or None while someone may be: its lease
    expired, its holder was a process here that is gone, or (pending) nobody claimed it within
    `unclaimed_after` of the push (the pushing process died before it could)."""
    if version.status == VersionStatus.COMPRESSING.value:
        if version.lease_expires_at is not None and version.lease_expires_at < now:
            return f"the lease of {version.leased_by} expired"
        if dead_local_owner(version.leased_by):
            return f"{version.leased_by} no longer runs"
        return None
    if (
        version.status == VersionStatus.PENDING.value
        and version.next_attempt_at is None
        and version.created_at < now - unclaimed_after
    ):
        return f"nobody claimed it since {version.created_at:%Y-%m-%d %H:%M:%S} UTC"
    return None


def claim_orphan(
    db: Database, version_id: int, worker: str, *, lease_seconds: float
) -> tuple[Job, str, str] | None:
    """Claim a queued version whose run was abandoned (see `orphaned`; a pending version counts after
    one lease period) for `worker`: the job, the status it was left in, and why it was taken over.
    None when someone may still be working on it, or it is not queued."""
    with db.transaction() as session:
        queue = QueueRepository(session)
        version = session.get(Version, version_id, with_for_update={"of": Version}, populate_existing=True)
        if version is None:
            return None
        now = queue.now()
        reason = orphaned(version, now, unclaimed_after=_seconds(lease_seconds))
        if reason is None:
            return None
        status = version.status
        return Job.of(queue.lease(version_id, worker, now + _seconds(lease_seconds))), status, reason


def renew(db: Database, job: Job, *, lease_seconds: float) -> bool:
    """Extend the job's lease; False when it is no longer ours."""
    with db.transaction() as session:
        queue = QueueRepository(session)
        return queue.renew(job.version_id, job.worker, queue.now() + _seconds(lease_seconds))


def release(db: Database, job: Job) -> bool:
    """Give the job back untouched (shutdown): pending again, this attempt not counted."""
    with db.transaction() as session:
        return QueueRepository(session).requeue(
            job.version_id, job.worker, at=None, error=None, count_attempt=False
        )


def is_permanent(exc: BaseException) -> bool:
    """Whether another run of the same job would fail the same way (bad input, refused parameters).
    Storage trouble and crashes of the machinery (CUDA out of memory, a killed subprocess) are not."""
    if isinstance(exc, (StorageError, BlobNotFound)):
        return False
    # The compression library's errors are ValueErrors: they describe its input.
    return isinstance(exc, (RegistryError, ValueError, TypeError))


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, RegistryError):
        return str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return f"{type(exc).__name__}: {exc}"


def backoff(attempts: int, base_seconds: float) -> dt.timedelta:
    """Wait before the retry that follows run number `attempts`: base * 2**(attempts-1), capped."""
    return min(_seconds(base_seconds * 2 ** max(attempts - 1, 0)), MAX_BACKOFF)


def fail(
    db: Database,
    job: Job,
    exc: BaseException,
    *,
    max_attempts: int = 1,
    backoff_seconds: float = 0,
) -> str:
    """Record that the run failed: retry later while attempts remain and the error is transient,
    else mark the version failed. Returns what happened: "retry", "failed" or "lost" (the lease
    was no longer ours, so nothing was written)."""
    error = describe_error(exc)
    with db.transaction() as session:
        queue = QueueRepository(session)
        now = queue.now()
        if job.attempts < max_attempts and not is_permanent(exc):
            wait = backoff(job.attempts, backoff_seconds)
            message = f"attempt {job.attempts} of {max_attempts} failed, retrying: {error}"
            if queue.requeue(job.version_id, job.worker, at=now + wait, error=message, count_attempt=True):
                return "retry"
            return "lost"
        if max_attempts > 1 and not is_permanent(exc):
            error = f"gave up after {job.attempts} attempts: {error}"
        if not queue.fail(job.version_id, job.worker, error=error, now=now):
            return "lost"
        events.version_failed(session, job.version_id)
        return "failed"


class Lease:
    """Renews a job's lease from a background thread every third of the lease while the `with` body
    runs. If the lease is lost (it expired and another worker took the job), `lost` is set; the
    outcome of this run will then not be recorded."""

    def __init__(self, db: Database, job: Job, *, lease_seconds: float) -> None:
        self.db = db
        self.job = job
        self.lease_seconds = lease_seconds
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job.version_id}", daemon=True)

    def _run(self) -> None:
        interval = self.lease_seconds / 3
        while not self._stop.wait(interval):
            try:
                if not renew(self.db, self.job, lease_seconds=self.lease_seconds):
                    log.warning("lost the lease on %s", self.job.ref)
                    self.lost.set()
                    return
            except Exception:  # a database hiccup: try again next beat, the lease may still hold
                log.exception("could not renew the lease on %s", self.job.ref)

    def __enter__(self) -> Lease:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
