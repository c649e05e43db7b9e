"""Prometheus metrics shared by the API and the workers. Each process builds its own
`CollectorRegistry` (several apps can live in one test process); nothing uses the global one."""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterator

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session

from .db import Database
from .models import Blob, Version
from .queue_repository import QUEUED, WorkerRepository
from .workers import live_since

log = logging.getLogger("adapters.metrics")

JOB_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


# Base models named as label values of the waiting-jobs gauge: the ones with most jobs; the rest are
# summed under "other", so a queue that wants many models cannot blow up the series count.
MAX_MODEL_LABELS = 20


class RegistryCollector(Collector):
    """Gauges read from the database at scrape time: the queue, versions by status, stored bytes, live
    workers, and jobs waiting for a worker that holds their base model."""

    def __init__(self, db: Database, *, live_seconds: float = 30.0) -> None:
        self.db = db
        self.live_seconds = live_seconds

    def collect(self) -> Iterator[GaugeMetricFamily]:
        queue = GaugeMetricFamily(
            "adapters_queue_jobs", "Versions waiting for or under compression", labels=["status"]
        )
        versions = GaugeMetricFamily("adapters_versions", "Versions by status", labels=["status"])
        stored = GaugeMetricFamily("adapters_blob_bytes", "Bytes of blobs the registry stores")
        blobs = GaugeMetricFamily("adapters_blobs", "Blobs the registry stores")
        workers = GaugeMetricFamily("adapters_workers_live", "Live compression workers", labels=["device"])
        waiting = GaugeMetricFamily(
            "adapters_queue_jobs_waiting_for_capability",
            "Pending versions that want a base model no live worker holds",
        )
        waiting_by_model = GaugeMetricFamily(
            "adapters_queue_jobs_waiting_for_base_model",
            f"Pending versions that want a base model no live worker holds, by model (the "
            f"{MAX_MODEL_LABELS} with most jobs; the rest as 'other')",
            labels=["base_model"],
        )
        families: list[GaugeMetricFamily] = []
        try:
            with self.db.transaction() as session:
                if self.db.dialect == "postgresql":
                    families = _queue_families(session)
                rows = session.execute(sa.select(Version.status, sa.func.count()).group_by(Version.status))
                by_status = {str(status): int(count) for status, count in rows}
                for status, count in by_status.items():
                    versions.add_metric([status], count)
                for status in QUEUED:  # the queue's statuses, zero included
                    queue.add_metric([status], by_status.get(status, 0))
                count, total = session.execute(sa.select(sa.func.count(), sa.func.sum(Blob.size))).one()
                blobs.add_metric([], int(count or 0))
                stored.add_metric([], int(total or 0))
                repository = WorkerRepository(session)
                since = live_since(repository.now(), self.live_seconds)
                devices = collections.Counter(worker.device for worker in repository.live(since))
                for device, live in sorted(devices.items()):
                    workers.add_metric([device], live)
                by_model = sorted(repository.waiting(since).items(), key=lambda item: (-item[1], item[0]))
                waiting.add_metric([], sum(jobs for _, jobs in by_model))
                for model, jobs in by_model[:MAX_MODEL_LABELS]:
                    waiting_by_model.add_metric([model], jobs)
                if len(by_model) > MAX_MODEL_LABELS:
                    waiting_by_model.add_metric(
                        ["other"], sum(jobs for _, jobs in by_model[MAX_MODEL_LABELS:])
                    )
        except Exception:  # a scrape must not fail because the database is down; /readyz says so
            log.exception("could not read registry metrics")
            return
        yield from (queue, versions, stored, blobs, workers, waiting, waiting_by_model, *families)


def _queue_families(session: Session) -> list[GaugeMetricFamily]:
    """The job queue (PostgreSQL): jobs by queue and state, and how long the oldest due job waits."""
    from . import jobs

    stats = jobs.stats(session)
    by_queue = GaugeMetricFamily("adapters_jobs", "Queue jobs by queue and state", labels=["queue", "state"])
    for (queue_name, state), count in sorted(stats.counts.items()):
        by_queue.add_metric([queue_name, state], count)
    oldest = GaugeMetricFamily(
        "adapters_jobs_oldest_waiting_seconds", "Age of the oldest job that is due and not started (0: none)"
    )
    oldest.add_metric([], stats.oldest_waiting_seconds)
    return [by_queue, oldest]


class JobMetrics:
    """Codec runs: how many, how they ended, how long they took."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.duration = Histogram(
            "adapters_job_duration_seconds",
            "Time from claim to recorded outcome of a compression job",
            ["codec", "outcome"],
            buckets=JOB_BUCKETS,
            registry=registry,
        )
        self.jobs = Counter(
            "adapters_jobs", "Compression jobs by outcome", ["codec", "outcome"], registry=registry
        )

    def observe(self, codec: str, outcome: str, seconds: float) -> None:
        self.duration.labels(codec, outcome).observe(seconds)
        self.jobs.labels(codec, outcome).inc()
