"""Compression runs and their version rows on both backends (claims, leases, retries with backoff,
release) and, on PostgreSQL, the job queue that hands them out (order, stalled jobs, races)."""

from __future__ import annotations

import datetime as dt
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from adapters.registry import models, processing, queue, service
from adapters.registry.client import LocalRegistry
from adapters.registry.db import Database
from adapters.registry.errors import StorageError, VersionNotReady
from adapters.registry.processing import Outcome
from adapters.registry.worker import CompressionFailed, GivenBack, RetryLater, retry_policy
from tests.conftest import RAW_BY_DEFAULT
from tests.factories import adapter_variants
from tests.registry import jobqueue


def _pending(registry: LocalRegistry, dirs) -> list[int]:
    ids = []
    for i, path in enumerate(dirs):
        pushed = registry.push(path, f"acme/q{i}", task="t", process=False).version
        assert pushed.status == "pending"
        with registry.db.transaction() as session:
            ids.append(service.resolve(session, pushed.ref).id)
    return ids


def _version(registry: LocalRegistry, version_id: int) -> models.Version:
    with registry.db.transaction() as session:
        version = session.get(models.Version, version_id)
        assert version is not None
        return version


@pytest.fixture
def variants(adapter_dir, tmp_path):
    return adapter_variants(adapter_dir, tmp_path, 3)


# Handing out jobs is the job queue's (PostgreSQL); the embedded registry compresses inline.
ON_POSTGRESQL = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)


@ON_POSTGRESQL
def test_claims_take_the_oldest_job_once(registry, variants):
    ids = _pending(registry, variants)
    first = jobqueue.claim(registry, "w1", lease_seconds=60, max_attempts=3)
    second = jobqueue.claim(registry, "w2", lease_seconds=60, max_attempts=3)
    assert (first.version_id, second.version_id) == (ids[0], ids[1])
    assert first.attempts == 1 and first.worker == "w1"
    claimed = _version(registry, ids[0])
    assert claimed.status == "compressing" and claimed.leased_by == "w1" and claimed.lease_expires_at
    third = jobqueue.claim(registry, "w3", lease_seconds=60, max_attempts=3)
    assert third.version_id == ids[2]
    assert jobqueue.claim(registry, "w4", lease_seconds=60, max_attempts=3) is None


def test_a_job_runs_records_and_clears_its_lease(registry, variants):
    (version_id,) = _pending(registry, variants[:1])
    job = jobqueue.claim(registry, "w1", lease_seconds=60, max_attempts=3)
    assert processing.run_job(registry.db, registry.storage, job, lease_seconds=60) == "ready"
    done = _version(registry, version_id)
    assert (done.status, done.leased_by, done.lease_expires_at, done.attempts) == ("ready", None, None, 1)


@ON_POSTGRESQL
def test_a_stalled_job_is_claimed_again_and_the_old_holder_records_nothing(registry, variants):
    (version_id,) = _pending(registry, variants[:1])
    stale = jobqueue.claim(registry, "w1", lease_seconds=60, max_attempts=3)
    assert jobqueue.claim(registry, "w2", lease_seconds=60, max_attempts=3) is None  # running
    assert len(jobqueue.recover(registry.db)) == 1  # w1 stopped heartbeating
    fresh = jobqueue.claim(registry, "w2", lease_seconds=60, max_attempts=3)
    assert (fresh.version_id, fresh.attempts, fresh.worker) == (version_id, 2, "w2")
    assert not queue.renew(registry.db, stale, lease_seconds=60)
    assert queue.renew(registry.db, fresh, lease_seconds=60)
    outcome = Outcome("raw", {}, {}, artifact=stale.source)
    with registry.db.transaction() as session:
        assert processing._record_outcome(session, stale, outcome) == "lost"
    assert queue.fail(registry.db, stale, RuntimeError("late"), max_attempts=3) == "lost"
    assert _version(registry, version_id).status == "compressing"
    assert processing.run_job(registry.db, registry.storage, fresh, lease_seconds=60) == "ready"


@ON_POSTGRESQL
def test_a_stalled_job_on_its_last_attempt_fails_the_version(registry, variants):
    (version_id,) = _pending(registry, variants[:1])
    for attempt in (1, 2):
        job = jobqueue.claim(registry, f"w{attempt}", lease_seconds=60, max_attempts=2)
        assert job.attempts == attempt
        assert len(jobqueue.recover(registry.db)) == 1
    with pytest.raises(queue.GaveUp, match="gave up after 2 attempts"):
        jobqueue.claim(registry, "w3", lease_seconds=60, max_attempts=2)
    failed = _version(registry, version_id)
    assert failed.status == "failed" and failed.leased_by is None
    assert "gave up after 2 attempts" in failed.error and "w2" in failed.error


def test_transient_errors_retry_with_backoff_then_fail(registry, variants):
    (version_id,) = _pending(registry, variants[:1])
    job = jobqueue.claim(registry, "w1", lease_seconds=60, max_attempts=2)
    assert (
        queue.fail(registry.db, job, StorageError("s3 is down"), max_attempts=2, backoff_seconds=300)
        == "retry"
    )
    waiting = _version(registry, version_id)
    assert waiting.status == "pending" and waiting.leased_by is None
    assert "attempt 1 of 2 failed, retrying: s3 is down" in waiting.error
    assert waiting.next_attempt_at > dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=4)
    job = queue.claim_for_run(registry.db, version_id, "w2", lease_seconds=60, max_attempts=2)
    assert job.attempts == 2
    assert queue.fail(registry.db, job, StorageError("still down"), max_attempts=2) == "failed"
    failed = _version(registry, version_id)
    assert failed.status == "failed" and failed.error == "gave up after 2 attempts: still down"


def test_errors_about_the_input_fail_at_once(registry, variants):
    (version_id,) = _pending(registry, variants[:1])
    job = jobqueue.claim(registry, "w1", lease_seconds=60, max_attempts=5)
    assert queue.fail(registry.db, job, ValueError("bad params"), max_attempts=5) == "failed"
    assert _version(registry, version_id).error == "ValueError: bad params"


def test_backoff_doubles_and_is_capped():
    assert [queue.backoff(n, 10).total_seconds() for n in (1, 2, 3)] == [10, 20, 40]
    assert queue.backoff(30, 10) == queue.MAX_BACKOFF


def test_release_gives_the_job_back_without_counting_the_attempt(registry, variants):
    (version_id,) = _pending(registry, variants[:1])
    job = jobqueue.claim(registry, "w1", lease_seconds=60, max_attempts=3)
    assert queue.release(registry.db, job)
    released = _version(registry, version_id)
    assert (released.status, released.attempts, released.leased_by) == ("pending", 0, None)
    assert not queue.release(registry.db, job)  # no longer ours


def test_an_interrupted_run_releases_its_job(registry, variants, monkeypatch):
    (version_id,) = _pending(registry, variants[:1])
    job = jobqueue.claim(registry, "w1", lease_seconds=60, max_attempts=3)

    def interrupted(*args, **kwargs):
        raise queue.Interrupted

    monkeypatch.setattr(processing, "run_codec", interrupted)
    with pytest.raises(queue.Interrupted):
        processing.run_job(registry.db, registry.storage, job, lease_seconds=60)
    assert _version(registry, version_id).status == "pending"


def test_the_heartbeat_keeps_a_short_lease_alive(registry, variants):
    (version_id,) = _pending(registry, variants[:1])
    job = jobqueue.claim(registry, "w1", lease_seconds=1.5, max_attempts=3)
    with queue.Lease(registry.db, job, lease_seconds=1.5) as lease:
        threading.Event().wait(3.5)  # longer than the lease: only the heartbeat keeps it ours
        assert jobqueue.claim(registry, "w2", lease_seconds=60, max_attempts=3) is None
    assert not lease.lost.is_set()
    assert _version(registry, version_id).leased_by == "w1"


def test_inline_processing_refuses_a_version_that_is_not_pending(registry, variants):
    (version_id,) = _pending(registry, variants[:1])
    jobqueue.claim(registry, "w1", lease_seconds=60, max_attempts=3)
    with pytest.raises(VersionNotReady, match="is compressing, not pending"):
        processing.process_version(registry.db, registry.storage, version_id)


def test_the_retry_policy_waits_the_backoff_and_gives_back_at_once():
    from procrastinate.jobs import Job as QueueJob

    job = QueueJob(id=1, queue="compress", lock=None, queueing_lock=None, task_name="compress")
    policy = retry_policy()
    now = dt.datetime.now(dt.timezone.utc)
    later = policy.get_retry_exception(RetryLater("s3 is down", 300), job).retry_decision.retry_at
    assert now + dt.timedelta(seconds=299) < later < now + dt.timedelta(seconds=310)
    back = policy.get_retry_exception(GivenBack("acme/x:1"), job).retry_decision.retry_at
    assert back < now + dt.timedelta(seconds=5)
    assert policy.get_retry_exception(CompressionFailed("acme/x:1"), job) is None
    assert policy.get_retry_exception(ValueError("bad params"), job) is None


def test_concurrent_claims_on_postgresql_never_share_a_job(fresh_pg_url, s3_storage, adapter_dir, tmp_path):
    n_jobs, n_threads = 12, 6
    database = Database(fresh_pg_url, pool_size=n_threads + 2)
    database.upgrade()
    with LocalRegistry(database, s3_storage, default_codec=RAW_BY_DEFAULT) as registry:
        ids = _pending(registry, adapter_variants(adapter_dir, tmp_path, n_jobs))
        barrier = threading.Barrier(n_threads)

        def drain(worker: int) -> list[int]:
            barrier.wait()
            got = []
            while (
                job := jobqueue.claim(registry, f"w{worker}", lease_seconds=60, max_attempts=3)
            ) is not None:
                got.append(job.version_id)
            return got

        with ThreadPoolExecutor(n_threads) as pool:
            claimed = [i for got in pool.map(drain, range(n_threads)) for i in got]
        assert sorted(claimed) == sorted(ids)
