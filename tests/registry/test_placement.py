"""Jobs that want a base model go to the workers that hold it, on both backends: workers announce their
base models, claims follow them, a job no live worker can serve is compressed without its model after
the wait (and its record says so), and `show` and the metrics tell which jobs wait for what."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from adapters.registry import models, processing, service
from adapters.registry.client import LocalRegistry
from adapters.registry.codecs import CodecEnvironment
from adapters.registry.metrics import RegistryCollector
from adapters.registry.queue_repository import WorkerRepository
from adapters.registry.workers import Presence
from tests.factories import adapter_variants
from tests.registry import jobqueue
from tests.worker import slow_codec  # noqa: F401 - registers the test codecs

MODEL = "tiny-llama"  # the test adapters' base model (their configs name none: pushes give it)
LIVE = 30.0


@pytest.fixture
def variants(adapter_dir, tmp_path):
    return adapter_variants(adapter_dir, tmp_path / "variants", 3)


@pytest.fixture
def models_dir(tmp_path) -> Path:
    """A models directory that holds the test adapters' base model (a config is all a lookup needs)."""
    folder = tmp_path / "models" / MODEL
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return folder.parent


def _push(
    registry: LocalRegistry, path: Path, name: str, tmp_path: Path, codec: str = "test-slow-base"
) -> int:
    pushed = registry.push(
        path,
        name,
        task="t",
        base_model=MODEL,
        codec=codec,
        params={"log": str(tmp_path / "runs.log")},
        process=False,
    ).version
    with registry.db.transaction() as session:
        return service.resolve(session, pushed.ref).id


def _announce(registry: LocalRegistry, worker_id: str, held: tuple[str, ...], *, seen_ago: float = 0) -> None:
    with registry.db.transaction() as session:
        repository = WorkerRepository(session)
        now = repository.now() - dt.timedelta(seconds=seen_ago)
        repository.announce(worker_id, host="h", device="cpu", models=held, now=now)


def _claim(registry: LocalRegistry, worker_id: str, held: tuple[str, ...] = (), *, wait: float = 300):
    return jobqueue.claim(registry, worker_id, held, wait=wait)


# Routing by base model is the job queue's (PostgreSQL); the embedded registry compresses inline.
ON_POSTGRESQL = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)


def _version(registry: LocalRegistry, version_id: int) -> models.Version:
    with registry.db.transaction() as session:
        version = session.get(models.Version, version_id)
        assert version is not None
        return version


def _age(registry: LocalRegistry, version_id: int, seconds: float) -> None:
    """Make a version look pushed `seconds` ago."""
    with registry.db.transaction() as session:
        version = session.get(models.Version, version_id)
        session.execute(
            sa.update(models.Version)
            .where(models.Version.id == version_id)
            .values(created_at=version.created_at - dt.timedelta(seconds=seconds))
        )


# --------------------------------------------------------------------------------------------- claiming


def test_push_records_the_base_model_a_codec_wants(registry, variants, tmp_path):
    wants = _push(registry, variants[0], "acme/p0", tmp_path)
    plain = _push(registry, variants[1], "acme/p1", tmp_path, codec="test-slow")
    assert _version(registry, wants).wants_base_model == MODEL
    assert _version(registry, plain).wants_base_model is None


@ON_POSTGRESQL
def test_a_worker_without_the_base_model_leaves_the_job_to_a_live_worker_with_it(
    registry, variants, tmp_path
):
    version_id = _push(registry, variants[0], "acme/c0", tmp_path)
    _announce(registry, "holder", (MODEL,))
    _announce(registry, "other", ())
    _age(registry, version_id, 3600)  # long past the wait: a live holder still keeps it
    assert _claim(registry, "other") is None
    job = _claim(registry, "holder", (MODEL,))
    assert job is not None and (job.version_id, job.without_model) == (version_id, None)


@ON_POSTGRESQL
def test_jobs_that_want_no_base_model_go_to_anyone_at_once(registry, variants, tmp_path):
    version_id = _push(registry, variants[0], "acme/r0", tmp_path, codec="test-slow")
    _announce(registry, "holder", (MODEL,))
    job = _claim(registry, "other")
    assert job is not None and job.version_id == version_id


@ON_POSTGRESQL
def test_without_a_live_holder_the_job_waits_then_goes_to_anyone(registry, variants, tmp_path):
    version_id = _push(registry, variants[0], "acme/w0", tmp_path)
    _announce(registry, "dead-holder", (MODEL,), seen_ago=LIVE + 5)  # stopped heartbeating: not live
    assert _claim(registry, "other", wait=300) is None  # a capable worker may still start
    _age(registry, version_id, 301)
    job = _claim(registry, "other", wait=300)
    assert job is not None and job.version_id == version_id
    assert job.without_model == f"no live worker holds {MODEL}; compressed without it after 300 s"


@ON_POSTGRESQL
def test_the_record_says_which_worker_compressed_and_why_without_the_model(
    registry, variants, tmp_path, models_dir
):
    without = _push(registry, variants[0], "acme/d0", tmp_path)
    job = _claim(registry, "worker:a:1:x", wait=0)
    assert processing.run_job(registry.db, registry.storage, job, device="cpu", lease_seconds=60) == "ready"
    setup = _version(registry, without).fidelity["setup"]
    assert setup["worker"] == "worker:a:1:x" and setup["device"] == "cpu"
    assert setup["base_model_found"] is False
    assert setup["without_model"] == f"no live worker holds {MODEL}; compressed without it after 0 s"

    with_model = _push(registry, variants[1], "acme/d1", tmp_path)
    _announce(registry, "worker:b:2:y", (MODEL,))
    job = _claim(registry, "worker:b:2:y", (MODEL,))
    environment = CodecEnvironment(models_dir)
    assert (
        processing.run_job(
            registry.db, registry.storage, job, device="cuda:1", environment=environment, lease_seconds=60
        )
        == "ready"
    )
    version = _version(registry, with_model)
    assert version.fidelity["base_model_dir"] == str(models_dir / MODEL)
    setup = version.fidelity["setup"]
    assert (setup["worker"], setup["device"], setup["base_model_found"]) == ("worker:b:2:y", "cuda:1", True)
    assert "without_model" not in setup


# ------------------------------------------------------------------------------------------ presence


def test_presence_announces_refreshes_and_removes_its_row(registry, models_dir):
    held: list[str] = []
    presence = Presence(registry.db, "worker:p:1:z", device="cpu", models=lambda: held, live_seconds=LIVE)
    with presence:
        assert [(w.id, w.base_models) for w in registry.workers()] == [("worker:p:1:z", [])]
        held.append(MODEL)  # a model downloaded while the worker runs
        presence.beat()
        assert registry.workers()[0].base_models == [MODEL] and presence.models == (MODEL,)
        with registry.db.transaction() as session:  # pruned by another worker while out of touch
            WorkerRepository(session).remove("worker:p:1:z")
        presence.beat()
        assert [(w.id, w.base_models) for w in registry.workers()] == [("worker:p:1:z", [MODEL])]
    assert registry.workers() == []


def test_stale_workers_are_not_listed_and_get_pruned(registry):
    _announce(registry, "gone", (MODEL,), seen_ago=LIVE + 5)
    _announce(registry, "here", ())
    assert [w.id for w in registry.workers()] == ["here"]
    with Presence(registry.db, "new", device="cpu", models=list, live_seconds=LIVE):
        with registry.db.transaction() as session:
            ids = session.scalars(sa.select(models.WorkerRecord.id).order_by(models.WorkerRecord.id)).all()
        assert ids == ["here", "new"]


# --------------------------------------------------------------------------------------- visibility


@ON_POSTGRESQL
def test_show_says_what_a_pending_version_waits_for(registry, variants, tmp_path):
    version_id = _push(registry, variants[0], "acme/s0", tmp_path)
    view = registry.show("acme/s0:1").version
    assert view.wants_base_model == MODEL
    assert view.waiting.live_workers == 0
    assert view.waiting.without_model_from == _version(registry, version_id).created_at + dt.timedelta(
        seconds=300
    )
    _announce(registry, "holder", (MODEL,))
    assert registry.resolve("acme/s0:1").waiting.live_workers == 1
    job = _claim(registry, "holder", (MODEL,))
    compressing = registry.versions("acme/s0")[0]
    assert (compressing.status, compressing.worker, compressing.device) == ("compressing", "holder", "cpu")
    assert compressing.waiting is None
    processing.run_job(registry.db, registry.storage, job, device="cpu", lease_seconds=60)
    done = registry.resolve("acme/s0:1")
    assert (done.status, done.worker, done.device, done.waiting) == ("ready", "holder", "cpu", None)


def _samples(registry: LocalRegistry) -> dict[tuple[str, tuple], float]:
    metrics = CollectorRegistry()
    metrics.register(RegistryCollector(registry.db, live_seconds=LIVE))
    text = generate_latest(metrics).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_count_jobs_waiting_for_a_base_model_and_live_workers(registry, variants, tmp_path):
    for i, path in enumerate(variants[:2]):
        _push(registry, path, f"acme/m{i}", tmp_path)
    _push(registry, variants[2], "acme/m2", tmp_path, codec="test-slow")
    samples = _samples(registry)
    assert samples[("adapters_queue_jobs_waiting_for_capability", ())] == 2
    assert samples[("adapters_queue_jobs_waiting_for_base_model", (("base_model", MODEL),))] == 2
    assert not any(name == "adapters_workers_live" for name, _ in samples)

    _announce(registry, "holder", (MODEL,))
    _announce(registry, "gpu", ())
    samples = _samples(registry)
    assert samples[("adapters_queue_jobs_waiting_for_capability", ())] == 0  # a live worker holds it
    assert samples[("adapters_workers_live", (("device", "cpu"),))] == 2


def test_metrics_name_at_most_a_bounded_number_of_models(registry, variants, tmp_path, monkeypatch):
    from adapters.registry import metrics

    monkeypatch.setattr(metrics, "MAX_MODEL_LABELS", 1)
    for i, (path, base_model) in enumerate(zip(variants, ["a/x", "a/x", "b/y"], strict=True)):
        registry.push(
            path,
            f"acme/b{i}",
            task="t",
            base_model=base_model,
            codec="test-slow-base",
            params={"log": str(tmp_path / "runs.log")},
            process=False,
        )
    samples = _samples(registry)
    waiting = {k[1]: v for k, v in samples.items() if k[0] == "adapters_queue_jobs_waiting_for_base_model"}
    assert waiting == {(("base_model", "a/x"),): 2, (("base_model", "other"),): 1}
    assert samples[("adapters_queue_jobs_waiting_for_capability", ())] == 3
