"""Repository queries, each test inside a transaction that is rolled back (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from adapters.registry.adapter_repository import AdapterRepository
from adapters.registry.models import Adapter, Version
from adapters.registry.refs import AdapterName
from adapters.registry.version_repository import AliasRepository, BlobRepository, VersionRepository

ACME = AdapterName("acme", "x")


def _adapter(session, name=ACME, **kw) -> Adapter:
    return AdapterRepository(session).ensure(
        name, task=kw.get("task", "t"), base_model=kw.get("base_model"), description=None
    )


def _version(session, adapter, digest_char: str, *, status="ready", **kw) -> Version:
    digest = digest_char * 64
    BlobRepository(session).ensure(digest, 10)
    number = AdapterRepository(session).next_version_number(adapter)
    extra = {"artifact_digest": digest, "artifact_size": 10, "codec": "raw"} if status == "ready" else {}
    return VersionRepository(session).add(
        Version(
            adapter_id=adapter.id,
            number=number,
            status=status,
            source_digest=digest,
            source_size=10,
            requested={},
            peft_config={},
            **extra,
            **kw,
        )
    )


def test_ensure_creates_once_and_keeps_the_first_fields(session):
    first = _adapter(session, task="support", base_model="llama")
    again = _adapter(session, task="other", base_model="mistral")
    assert again.id == first.id
    assert (again.task, again.base_model) == ("support", "llama")
    assert session.scalar(sa.select(sa.func.count()).select_from(Adapter)) == 1


def test_version_numbers_count_up_per_adapter(session):
    one, two = _adapter(session), _adapter(session, AdapterName("acme", "y"))
    adapters = AdapterRepository(session)
    assert [adapters.next_version_number(one) for _ in range(3)] == [1, 2, 3]
    assert adapters.next_version_number(two) == 1
    assert one.last_version == 3


def test_latest_is_the_newest_ready_unyanked_version(session):
    adapter = _adapter(session)
    versions = VersionRepository(session)
    assert versions.latest_ready(adapter) is None
    v1 = _version(session, adapter, "1")
    v2 = _version(session, adapter, "2")
    _version(session, adapter, "3", status="pending")
    _version(session, adapter, "4", status="failed", error="boom")
    assert versions.latest_ready(adapter).id == v2.id
    v2.yanked_at = dt.datetime.now(dt.timezone.utc)
    session.flush()
    assert versions.latest_ready(adapter).id == v1.id
    assert versions.summary([adapter.id]) == {adapter.id: (4, 1)}


def test_digest_lookup_prefers_ready_then_newest(session):
    adapter = _adapter(session)
    failed = _version(session, adapter, "a", status="failed", error="boom")
    assert VersionRepository(session).by_digest(adapter, "a" * 64).id == failed.id
    ready = _version(session, adapter, "a")
    assert VersionRepository(session).by_digest(adapter, "a" * 64).id == ready.id
    assert VersionRepository(session).live_by_content(adapter, "a" * 64).id == ready.id
    assert VersionRepository(session).by_digest(adapter, "b" * 64) is None


def test_aliases_are_upserted_and_listed_by_adapter(session):
    adapter = _adapter(session)
    v1, v2 = _version(session, adapter, "1"), _version(session, adapter, "2")
    aliases = AliasRepository(session)
    aliases.set(adapter, "prod", v1, by="ana")
    moved = aliases.set(adapter, "prod", v2, by="bo")
    assert (moved.version_id, moved.updated_by) == (v2.id, "bo")
    aliases.set(adapter, "canary", v1, by=None)
    assert aliases.by_adapter_ids([adapter.id]) == {adapter.id: {"canary": 1, "prod": 2}}
    aliases.delete(aliases.get(adapter, "canary"))
    assert [a.name for a in aliases.for_adapter(adapter)] == ["prod"]


def test_search_combines_filters(session):
    a = _adapter(session, AdapterName("acme", "a"), task="support", base_model="llama")
    _adapter(session, AdapterName("acme", "b"), task="support", base_model="mistral")
    c = _adapter(session, AdapterName("beta", "c"), task="qa", base_model="llama")
    repo = AdapterRepository(session)
    repo.add_tags(a, ["en", "prod-ready"])
    repo.add_tags(a, ["en"])  # idempotent
    repo.add_tags(c, ["en"])
    assert [t.tag for t in a.tags] == ["en", "prod-ready"]
    assert [x.name for x in repo.search(tag="en")] == ["a", "c"]
    assert [x.name for x in repo.search(tag="en", base_model="llama", task="support")] == ["a"]
    assert [x.name for x in repo.search(namespace="acme")] == ["a", "b"]


def test_a_pooled_connection_that_died_while_idle_is_replaced(pg_url, monkeypatch):
    from adapters.registry import db as db_module
    from adapters.registry.db import Database

    monkeypatch.setattr(db_module, "IDLE_PING_SECONDS", 0.0)
    database = Database(pg_url, pool_size=1, max_overflow=0)
    with database.transaction() as session:
        pid = session.scalar(sa.text("SELECT pg_backend_pid()"))
    admin = sa.create_engine(pg_url, poolclass=sa.NullPool)
    with admin.begin() as conn:
        assert conn.scalar(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    admin.dispose()
    with database.reading() as session:  # the dead connection is pinged, dropped and replaced
        assert session.scalar(sa.text("SELECT pg_backend_pid()")) != pid
    database.dispose()
