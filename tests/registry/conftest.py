"""Registry fixtures: migrated databases (SQLite and PostgreSQL) and blob stores (folder and S3 over HTTP)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from adapters.registry.db import make_engine, upgrade
from adapters.registry.storage import S3BlobStorage

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture
def fresh_pg_url(pg_url: str) -> Iterator[str]:
    """An empty PostgreSQL schema of its own (first on the search path), dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(pg_url, poolclass=sa.NullPool)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = sa.make_url(pg_url).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def fresh_sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'registry.db'}"


@pytest.fixture(params=BACKENDS)
def fresh_db_url(request: pytest.FixtureRequest) -> str:
    """An empty database of each kind."""
    return request.getfixturevalue(f"fresh_{'pg' if request.param == 'postgresql' else 'sqlite'}_url")


@pytest.fixture(scope="session")
def migrated_engines(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, sa.Engine]]:
    """One database of each kind per test session, migrated to head once."""
    engines = {
        "sqlite": make_engine(f"sqlite:///{tmp_path_factory.mktemp('db') / 'shared.db'}"),
        "postgresql": make_engine(pg_url),
    }
    for engine in engines.values():
        upgrade(engine)
    yield engines
    for engine in engines.values():
        engine.dispose()


@pytest.fixture(params=BACKENDS)
def session(request: pytest.FixtureRequest, migrated_engines: dict[str, sa.Engine]) -> Iterator[Session]:
    """A session inside a transaction that is rolled back after the test (commits become savepoints)."""
    with migrated_engines[request.param].connect() as conn:
        outer = conn.begin()
        with Session(bind=conn, join_transaction_mode="create_savepoint") as db_session:
            yield db_session
        outer.rollback()


@pytest.fixture
def s3_storage(s3_endpoint: str, s3_bucket: str) -> S3BlobStorage:
    return S3BlobStorage(s3_bucket, "blobs/", endpoint_url=s3_endpoint)
