"""Shared fixtures: a real PostgreSQL database and a real S3 endpoint over HTTP, both made per session."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from tests.factories import make_adapter

# Tests run two pytest workers on two cores with tiny models: one torch thread each. More threads
# than cores make OpenMP spin against itself, which slows tiny forward passes a hundredfold.
torch.set_num_threads(1)

PG_ADMIN_URL = os.environ.get("ADAPTERS_TEST_PG_URL", "postgresql+psycopg://127.0.0.1:5432/test")

# Pushes compress with NOLA by default, a size search that costs seconds per push. Most tests are
# about the registry, not compression, so their registries (and the CLI and servers they start)
# store pushes losslessly unless a test asks otherwise; the tests of compression on push set it back.
RAW_BY_DEFAULT = "raw"
os.environ.setdefault("ADAPTERS_DEFAULT_CODEC", RAW_BY_DEFAULT)


@pytest.fixture(scope="session", autouse=True)
def empty_hf_cache(tmp_path_factory) -> Iterator[Path]:
    """Base models are also looked up in the Hugging Face cache: tests see an empty one of their own,
    never this machine's (tests that need one set HF_HUB_CACHE themselves)."""
    old = os.environ.get("HF_HUB_CACHE")
    os.environ["HF_HUB_CACHE"] = str(tmp_path_factory.mktemp("hf-hub"))
    yield Path(os.environ["HF_HUB_CACHE"])
    if old is None:
        os.environ.pop("HF_HUB_CACHE", None)
    else:
        os.environ["HF_HUB_CACHE"] = old


@pytest.fixture(autouse=True)
def own_download_cache(tmp_path_factory, monkeypatch) -> Path:
    """The CLI's download cache ($XDG_CACHE_HOME/adapters) is each test's own, never this machine's."""
    root = tmp_path_factory.mktemp("xdg-cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(root))
    return root / "adapters"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test session (dropped afterwards)."""
    import sqlalchemy as sa

    name = f"adapters_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 API over HTTP on loopback (moto's server mode), for the whole session."""
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A new, empty bucket on the session's S3 endpoint."""
    return make_bucket(s3_endpoint)


@contextmanager
def pg_schema(pg_url: str) -> Iterator[str]:
    """An empty PostgreSQL schema of its own (first on the search path), dropped afterwards."""
    import sqlalchemy as sa

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


def make_bucket(endpoint: str) -> str:
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small PEFT LoRA adapter (r=4 on q_proj and v_proj of a tiny Llama)."""
    return make_adapter(tmp_path_factory.mktemp("adapter") / "adapter", seed=0)


@pytest.fixture(scope="session")
def other_adapter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same shapes as `adapter_dir`, other weights."""
    return make_adapter(tmp_path_factory.mktemp("adapter") / "adapter", seed=7)
