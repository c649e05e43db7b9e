"""Concurrent pushes on PostgreSQL: numbers are handed out without gaps or duplicates."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import sqlalchemy as sa

from adapters.compress.peft_io import LoraCheckpoint, read_adapter, write_adapter
from adapters.registry import models
from adapters.registry.client import LocalRegistry
from adapters.registry.db import Database
from tests.conftest import RAW_BY_DEFAULT

PUSHES = 20


def _run_together(n: int, work):
    barrier = threading.Barrier(n)

    def task(i: int):
        barrier.wait()
        return work(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(task, range(n)))


def _registry(url: str, storage) -> LocalRegistry:
    database = Database(url, pool_size=PUSHES, max_overflow=0)
    database.upgrade()
    return LocalRegistry(database, storage, default_codec=RAW_BY_DEFAULT)


def test_concurrent_pushes_to_one_name_get_versions_1_to_n(fresh_pg_url, s3_storage, adapter_dir, tmp_path):
    base = read_adapter(adapter_dir)
    dirs = []
    for i in range(PUSHES):  # distinct content for each push
        tensors = {k: v * (1 + i / 64) for k, v in base.tensors.items()}
        dirs.append(write_adapter(LoraCheckpoint(base.config, tensors), tmp_path / f"adapter-{i}"))
    with _registry(fresh_pg_url, s3_storage) as registry:
        results = _run_together(PUSHES, lambda i: registry.push(dirs[i], "acme/busy", task="t"))
        assert all(r.created and r.version.status == "ready" for r in results)
        assert sorted(r.version.number for r in results) == list(range(1, PUSHES + 1))
        assert len({r.version.source_digest for r in results}) == PUSHES
        with registry.db.transaction() as session:
            numbers = session.scalars(sa.select(models.Version.number).order_by(models.Version.number)).all()
            last = session.scalar(sa.select(models.Adapter.last_version))
        assert numbers == list(range(1, PUSHES + 1))
        assert last == PUSHES
        assert registry.resolve("acme/busy").number == PUSHES


def test_concurrent_pushes_of_the_same_content_make_one_version(fresh_pg_url, s3_storage, adapter_dir):
    n = 8
    with _registry(fresh_pg_url, s3_storage) as registry:
        results = _run_together(n, lambda i: registry.push(adapter_dir, "acme/same", task="t"))
        assert sum(r.created for r in results) == 1
        assert {r.version.number for r in results} == {1}
        assert [a.versions for a in registry.list()] == [1]
