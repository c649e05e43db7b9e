"""Alembic environment: runs on a connection handed in by the caller, or on ADAPTERS_DATABASE_URL."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from adapters.registry import models  # noqa: F401 - registers the tables on the metadata
from adapters.registry.db import Base, make_engine, ours
from adapters.registry.settings import get_settings

config = context.config
target_metadata = Base.metadata


def _configure(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # ALTER via table copies on SQLite
        compare_type=True,
        include_name=ours,  # the job queue's tables belong to its library (migration 0007)
    )


def _check_sqlite_foreign_keys(connection: sa.Connection) -> None:
    if connection.dialect.name == "sqlite":
        broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
        if broken:
            raise RuntimeError(f"migration left rows that break foreign keys: {broken[:5]}")


def run_migrations_offline() -> None:
    url = config.get_main_option("sqlalchemy.url") or get_settings().database_url
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
            _check_sqlite_foreign_keys(connection)
        return
    url = config.get_main_option("sqlalchemy.url") or get_settings().database_url
    engine = make_engine(url, foreign_keys=False, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            _configure(conn)
            with context.begin_transaction():
                context.run_migrations()
                _check_sqlite_foreign_keys(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
