"""The API served by uvicorn on a loopback port, on a fresh PostgreSQL schema and an S3 bucket behind
moto's HTTP server; clients call it over HTTP."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import uvicorn

from adapters.api.app import create_app
from adapters.registry.cache import ReconstructionCache
from adapters.registry.client import LocalRegistry
from adapters.registry.db import Database
from adapters.registry.remote import RemoteRegistry
from adapters.registry.s3_storage import S3BlobStorage
from adapters.registry.settings import Settings
from tests.conftest import free_port, make_bucket, pg_schema


@contextmanager
def uvicorn_thread(app: Any) -> Iterator[str]:
    """Serve `app` with uvicorn in a thread on a free loopback port; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


@dataclass
class Service:
    """A running API and what the tests need to reach behind it."""

    url: str
    settings: Settings
    registry: LocalRegistry  # the server's own (same database and store), for setup and checks
    admin: str  # an admin token
    bucket: str
    endpoint: str

    def token(self, scope: str, namespace: str | None = None, name: str = "test") -> str:
        return self.registry.create_token(name, scope, namespace=namespace).secret

    def client(self, token: str | None = None) -> RemoteRegistry:
        return RemoteRegistry(self.url, self.admin if token is None else token)

    def http(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def stored_keys(self) -> list[str]:
        storage = self.registry.storage
        assert isinstance(storage, S3BlobStorage)
        listing = storage._client.list_objects_v2(Bucket=storage.bucket)
        return sorted(obj["Key"] for obj in listing.get("Contents", []))

    def env(self) -> dict[str, str]:
        """Environment for a worker process on this service's database and store."""
        return {
            "ADAPTERS_DATABASE_URL": self.settings.database_url,
            "ADAPTERS_STORAGE_URL": self.settings.storage_url,
            "AWS_ENDPOINT_URL": self.endpoint,
        }


@contextmanager
def running_service(
    pg_url: str,
    endpoint: str,
    home: Path,
    *,
    route: Callable[[str], str] | None = None,
    **overrides: Any,
) -> Iterator[Service]:
    """An API on a fresh schema and bucket; `route` maps the schema's URL to the one the API uses
    (e.g. through a proxy that a test cuts)."""
    with pg_schema(pg_url) as schema_url:
        database_url = route(schema_url) if route is not None else schema_url
        bucket = make_bucket(endpoint)
        options: dict[str, Any] = {
            "home": home,
            "database_url": database_url,
            "storage_url": f"s3://{bucket}/registry",
            "compression": "inline",
            "max_upload_bytes": 1024 * 1024,
            "log_format": "text",
        }
        settings = Settings(**(options | overrides))
        Database(schema_url, poolclass=sa.NullPool).upgrade()
        database = Database(database_url, pool_size=10, max_overflow=10)
        registry = LocalRegistry(
            database,
            S3BlobStorage(bucket, "registry", endpoint_url=endpoint),
            max_upload_bytes=settings.max_upload_bytes,
            inline=settings.inline_compression,
            cache=ReconstructionCache(home / "cache", settings.cache_max_bytes),
            lease_seconds=settings.worker_lease_seconds,
            user="test-admin",
            default_codec=settings.default_codec,
            tmp_dir=settings.tmp_dir,
            sweep_after=settings.sweep_after_seconds,
            worker_live_seconds=settings.worker_live_seconds,
            capability_wait_seconds=settings.worker_capability_wait_seconds,
        )
        admin = registry.create_token("admin", "admin").secret
        with uvicorn_thread(create_app(settings, registry=registry)) as url:
            yield Service(url, settings, registry, admin, bucket, endpoint)


@pytest.fixture(scope="module")
def service(pg_url, s3_endpoint, tmp_path_factory) -> Iterator[Service]:
    """One API for a whole test module (tests use distinct adapter names)."""
    with running_service(pg_url, s3_endpoint, tmp_path_factory.mktemp("home")) as running:
        yield running


@pytest.fixture
def fresh_service(pg_url, s3_endpoint, tmp_path) -> Iterator[Service]:
    """An API on an empty registry, for one test."""
    with running_service(pg_url, s3_endpoint, tmp_path / "home") as running:
        yield running
