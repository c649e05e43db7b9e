"""Prometheus metrics shared by the API and the workers. Each process builds its own
`CollectorRegistry` (several apps can live in one test process); nothing uses the global one."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .db import Database
from .models import Blob, Version
from .repository import QUEUED

log = logging.getLogger("adapters.metrics")

JOB_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class RegistryCollector(Collector):
    """Gauges read from the database at scrape time: the queue, versions by status, stored bytes."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def collect(self) -> Iterator[GaugeMetricFamily]:
        queue = GaugeMetricFamily(
            "adapters_queue_jobs", "Versions waiting for or under compression", labels=["status"]
        )
        versions = GaugeMetricFamily("adapters_versions", "Versions by status", labels=["status"])
        stored = GaugeMetricFamily("adapters_blob_bytes", "Bytes of blobs the registry stores")
        blobs = GaugeMetricFamily("adapters_blobs", "Blobs the registry stores")
        try:
            with self.db.transaction() as session:
                rows = session.execute(sa.select(Version.status, sa.func.count()).group_by(Version.status))
                by_status = {str(status): int(count) for status, count in rows}
                for status, count in by_status.items():
                    versions.add_metric([status], count)
                for status in QUEUED:  # the queue's statuses, zero included
                    queue.add_metric([status], by_status.get(status, 0))
                count, total = session.execute(sa.select(sa.func.count(), sa.func.sum(Blob.size))).one()
                blobs.add_metric([], int(count or 0))
                stored.add_metric([], int(total or 0))
        except Exception:  # a scrape must not fail because the database is down; /readyz says so
            log.exception("could not read registry metrics")
            return
        yield from (queue, versions, stored, blobs)


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
