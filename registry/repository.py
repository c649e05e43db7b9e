"""What the registry's repositories share. A repository builds and runs the queries over one kind of
row, reading and writing through the caller's session; it never commits: the caller owns the
transaction (one per CLI command or API request).

The repositories, by the rows they hold: adapter_repository.py (adapters, their tags, listings),
version_repository.py (versions, aliases, blobs), queue_repository.py (compression leases and the
workers that take them), token_repository.py (API tokens).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from .db import utcnow


def dialect_insert(session: Session, model: Any) -> Any:
    """INSERT with ON CONFLICT support for the session's dialect."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - make_engine accepts only these two
        raise NotImplementedError(dialect)
    return insert(model)


def db_now(session: Session) -> dt.datetime:
    """The database's clock on PostgreSQL (one clock for every process), this machine's on SQLite."""
    if session.get_bind().dialect.name == "postgresql":
        now = session.scalar(sa.select(sa.func.now()))
        assert now is not None
        return now
    return utcnow()
