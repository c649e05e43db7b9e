"""The compression job queue on PostgreSQL: a push defers its job in the same transaction, fairness
between namespaces, the reconciler, operators' retry and cancel (CLI, with its errors), and metrics."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from adapters.registry import jobs, models, push, queue, service
from adapters.registry.client import LocalRegistry
from adapters.registry.errors import InvalidRequest, NotFound
from adapters.registry.metrics import RegistryCollector
from adapters.registry.refs import AdapterName
from adapters.registry.settings import get_settings
from adapters.registry.worker import Worker
from tests.factories import adapter_variants
from tests.worker import slow_codec  # noqa: F401 - registers the test codecs

ON_POSTGRESQL = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)


def _push(registry: LocalRegistry, path, name: str, **kwargs) -> int:
    pushed = registry.push(path, name, task="t", process=False, **kwargs).version
    with registry.db.transaction() as session:
        return service.resolve(session, pushed.ref).id


def _version(registry: LocalRegistry, version_id: int) -> models.Version:
    with registry.db.transaction() as session:
        version = session.get(models.Version, version_id)
        assert version is not None
        return version


def _worker(registry: LocalRegistry, **settings) -> Worker:
    update = {"worker_poll_seconds": 0.05, "device": "cpu", "worker_backoff_seconds": 0} | settings
    return Worker(get_settings().model_copy(update=update), registry=registry)


@ON_POSTGRESQL
def test_a_push_defers_its_job_with_the_version(registry, adapter_dir, tmp_path):
    version_id = _push(registry, adapter_dir, "acme/j")
    (job,) = registry.list_jobs()
    assert (job.queue, job.status, job.version, job.version_status) == (
        "compress",
        "todo",
        "acme/j:1",
        "pending",
    )
    with pytest.raises(InvalidRequest, match="unknown job status"):
        registry.list_jobs(status="stuck")
    # A push that fails after the version row was written leaves neither the row nor a job.
    with registry.db.transaction() as session:
        jobs_before = session.scalar(sa.text("SELECT count(*) FROM procrastinate_jobs"))

    def refuse(session, version):
        jobs.defer_in(session, version)
        raise InvalidRequest("refused after the job was deferred")

    with pytest.raises(InvalidRequest):
        push.push(
            registry.db,
            registry.storage,
            push.PushRequest(
                path=adapter_variants(adapter_dir, tmp_path, 2)[1],
                name=AdapterName.parse("acme/j"),
                codec="raw",
            ),
            enqueue=refuse,
        )
    with registry.db.transaction() as session:
        assert session.scalar(sa.text("SELECT count(*) FROM procrastinate_jobs")) == jobs_before
    assert [v.number for v in registry.versions("acme/j")] == [1]
    assert _worker(registry).run(once=True) == 1
    assert _version(registry, version_id).status == "ready"
    assert [(j.status, j.version_status) for j in registry.list_jobs()] == [("succeeded", "ready")]


@ON_POSTGRESQL
def test_a_namespace_that_pushes_many_does_not_starve_the_others(registry, adapter_dir, tmp_path):
    dirs = adapter_variants(adapter_dir, tmp_path, 52)
    big = [_push(registry, d, f"big/a{i}") for i, d in enumerate(dirs[:50])]
    small = [_push(registry, d, f"small/b{i}") for i, d in enumerate(dirs[50:])]
    assert _worker(registry).run(once=True) == 52
    finished = sorted(big + small, key=lambda version_id: _version(registry, version_id).processed_at)
    ranks = [finished.index(version_id) for version_id in small]
    # Pushed last, they are done among the first few: by the namespace's load at push time, not by age.
    assert max(ranks) < 5, ranks


@ON_POSTGRESQL
def test_the_reconciler_defers_a_job_for_a_pending_version_that_has_none(registry, adapter_dir):
    version_id = _push(registry, adapter_dir, "acme/r")
    with registry.db.transaction() as session:
        session.execute(sa.text("DELETE FROM procrastinate_jobs"))
    assert registry.list_jobs() == []
    assert jobs.reconcile(registry.db, older_than=3600) == []  # too recent: its pusher may be on it
    assert jobs.reconcile(registry.db, older_than=0) == [version_id]
    assert jobs.reconcile(registry.db, older_than=0) == []  # it has one now
    assert [j.status for j in registry.list_jobs()] == ["todo"]


@ON_POSTGRESQL
def test_a_version_a_dead_inline_run_left_compressing_gets_a_job(registry, adapter_dir):
    version_id = _push(registry, adapter_dir, "acme/i")
    with registry.db.transaction() as session:
        session.execute(sa.text("DELETE FROM procrastinate_jobs"))
    job = queue.claim_version(registry.db, version_id, "inline:elsewhere:4242:abcdef", lease_seconds=60)
    assert jobs.reconcile(registry.db, older_than=0) == []  # its run may be alive: the lease holds
    with registry.db.transaction() as session:
        session.execute(
            sa.update(models.Version)
            .where(models.Version.id == version_id)
            .values(lease_expires_at=sa.func.now() - sa.text("interval '1 minute'"))
        )
    assert jobs.reconcile(registry.db, older_than=3600) == [version_id]
    assert _worker(registry).run(once=True) == 1
    done = _version(registry, version_id)
    assert (done.status, done.attempts) == ("ready", 2) and done.leased_by is None
    assert job.worker != done.fidelity["setup"]["worker"]


@ON_POSTGRESQL
def test_operators_cancel_a_waiting_job_and_retry_a_failed_one(registry, adapter_dir, tmp_path):
    dirs = adapter_variants(adapter_dir, tmp_path, 2)
    waiting = _push(registry, dirs[0], "acme/c")
    (job,) = registry.list_jobs()
    cancelled = registry.cancel_job(job.id)
    assert cancelled.status == "cancelled"
    assert (
        _version(registry, waiting).error
        == f"compression cancelled by {registry.principal.name} (job {job.id})"
    )
    with pytest.raises(InvalidRequest, match="only waiting jobs are cancelled"):
        registry.cancel_job(job.id)
    again = registry.retry_job(job.id)  # a cancelled job is replaced by a new one
    assert again.id != job.id and (again.status, again.version_status) == ("todo", "pending")
    with pytest.raises(NotFound):
        registry.retry_job(10**9)

    log = tmp_path / "runs.log"
    failing = _push(
        registry, dirs[1], "acme/f", codec="test-slow", params={"log": str(log), "fail": "GPU gone"}
    )
    assert _worker(registry, worker_max_attempts=1).run(once=True) == 2  # acme/c ready, acme/f failed
    assert _version(registry, failing).status == "failed"
    (failed_job,) = registry.list_jobs(status="failed")
    assert failed_job.version_status == "failed"
    retried = registry.retry_job(failed_job.id)  # the same job, waiting again
    assert (retried.id, retried.status, retried.version_status) == (failed_job.id, "todo", "pending")
    assert _version(registry, failing).attempts == 0
    with pytest.raises(InvalidRequest, match="only failed or cancelled jobs are retried"):
        registry.retry_job(failed_job.id)


def _samples(registry: LocalRegistry) -> dict[tuple[str, tuple], float]:
    metrics = CollectorRegistry()
    metrics.register(RegistryCollector(registry.db))
    text = generate_latest(metrics).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@ON_POSTGRESQL
def test_metrics_count_jobs_by_queue_and_state_and_age_the_oldest(registry, adapter_dir):
    _push(registry, adapter_dir, "acme/m")
    with registry.db.transaction() as session:  # deferred an hour ago
        session.execute(sa.text("UPDATE procrastinate_events SET at = at - interval '1 hour'"))
    samples = _samples(registry)
    assert samples[("adapters_jobs", (("queue", "compress"), ("state", "todo")))] == 1
    assert 3600 <= samples[("adapters_jobs_oldest_waiting_seconds", ())] < 3600 + 600
    assert _worker(registry).run(once=True) == 1
    samples = _samples(registry)
    assert samples[("adapters_jobs", (("queue", "compress"), ("state", "succeeded")))] == 1
    assert samples[("adapters_jobs_oldest_waiting_seconds", ())] == 0


def test_jobs_on_the_cli(cli, cli_env, backend, adapter_dir):
    cli_env.setenv("ADAPTERS_COMPRESSION", "queue")  # pushes wait, pending, for a worker
    if backend.kind == "sqlite":
        failed = cli("jobs", "ls", code=1)
        assert "jobs exist on PostgreSQL registries only" in failed.stderr
        assert len(failed.stderr.strip().splitlines()) == 1
        return
    cli("push", adapter_dir, "--name", "acme/cli", "--task", "t")
    listed = json.loads(cli("jobs", "ls", "--json").stdout)["jobs"]
    assert [(j["status"], j["version"]) for j in listed] == [("todo", "acme/cli:1")]
    assert "acme/cli:1" in cli("jobs", "ls", "--status", "todo").stdout
    assert "no jobs" in cli("jobs", "ls", "--status", "failed").stderr
    cancelled = json.loads(cli("jobs", "cancel", str(listed[0]["id"]), "--json").stdout)["job"]
    assert cancelled["status"] == "cancelled"
    again = cli("jobs", "cancel", str(listed[0]["id"]), code=1)
    assert "only waiting jobs are cancelled" in again.stderr
    assert "todo" in cli("jobs", "retry", str(listed[0]["id"])).stdout
