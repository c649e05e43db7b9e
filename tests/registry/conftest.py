"""Registry fixtures: migrated databases (SQLite and PostgreSQL), blob stores (folder and S3 over
HTTP), and whole registries on the two backends the product runs on."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from adapters.registry.client import LocalRegistry
from adapters.registry.db import Database, make_engine, upgrade
from adapters.registry.s3_storage import S3BlobStorage
from adapters.registry.storage import BlobStorage, LocalBlobStorage
from tests.conftest import RAW_BY_DEFAULT, pg_schema

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture
def fresh_pg_url(pg_url: str) -> Iterator[str]:
    """An empty PostgreSQL schema of its own (first on the search path), dropped afterwards."""
    with pg_schema(pg_url) as url:
        yield url


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


@dataclass
class Backend:
    kind: str
    database_url: str
    storage_url: str
    storage: BlobStorage

    def env(self) -> dict[str, str]:
        # No workers run here: PostgreSQL registries compress inline too (the setting for deployments
        # without workers).
        return {
            "ADAPTERS_DATABASE_URL": self.database_url,
            "ADAPTERS_STORAGE_URL": self.storage_url,
            "ADAPTERS_COMPRESSION": "inline",
        }


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """A migrated, empty registry backend: SQLite + a folder, or PostgreSQL + S3 over HTTP."""
    if request.param == "sqlite":
        url = request.getfixturevalue("fresh_sqlite_url")
        storage: BlobStorage = LocalBlobStorage(tmp_path / "blobs")
        storage_url = str(tmp_path / "blobs")
    else:
        url = request.getfixturevalue("fresh_pg_url")
        endpoint = request.getfixturevalue("s3_endpoint")
        bucket = request.getfixturevalue("s3_bucket")
        storage = S3BlobStorage(bucket, "registry", endpoint_url=endpoint)
        storage_url = f"s3://{bucket}/registry"
        request.getfixturevalue("monkeypatch").setenv("AWS_ENDPOINT_URL", endpoint)
    database = Database(url)
    database.upgrade()
    database.dispose()
    return Backend(request.param, url, storage_url, storage)


@pytest.fixture
def registry(backend: Backend) -> Iterator[LocalRegistry]:
    with LocalRegistry(
        Database(backend.database_url), backend.storage, max_upload_bytes=10**8, default_codec=RAW_BY_DEFAULT
    ) as reg:
        yield reg


@pytest.fixture
def cli_env(backend, tmp_path, monkeypatch):
    """The environment of `adapters ...` run in-process against the backend (tests may add to it)."""
    monkeypatch.setenv("ADAPTERS_HOME", str(tmp_path / "home"))
    for key, value in backend.env().items():
        monkeypatch.setenv(key, value)
    return monkeypatch


@pytest.fixture
def cli(cli_env):
    """Run `adapters ...` in-process against the backend; returns the click result."""
    from click.testing import CliRunner

    from adapters.cli import main
    from adapters.registry.settings import reset_settings

    reset_settings()

    def run(*args, code: int = 0):
        reset_settings()  # the environment as the test left it
        result = CliRunner().invoke(main, [str(a) for a in args])
        assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
        return result

    yield run
    reset_settings()
