"""Database plumbing: the declarative base, portable column types, engines, transactions, migrations.

The schema is made only by Alembic (`adapters.migrations`), on PostgreSQL and SQLite alike. SQLite
connections get foreign keys on, a busy timeout, WAL, and real transactions (SQLAlchemy emits BEGIN
IMMEDIATE itself instead of relying on the sqlite3 module's legacy transaction handling), so the
same code behaves the same on both.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import select
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from .errors import ConfigurationError, DatabaseUnavailable, SchemaOutdated

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# JSON documents: JSONB on PostgreSQL, JSON (text) on SQLite.
JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


class UTCDateTime(sa.TypeDecorator[dt.datetime]):
    """A timezone-aware UTC timestamp on both dialects (SQLite stores it naive; this reattaches UTC)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: sa.Dialect) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime: pass an aware UTC datetime")
        if value is not None and dialect.name == "sqlite":
            return value.astimezone(dt.timezone.utc).replace(tzinfo=None)
        return value

    def process_result_value(self, value: dt.datetime | None, dialect: sa.Dialect) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=dt.timezone.utc)
        return value


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _sqlite_connect(dbapi_connection: Any, _record: Any, *, foreign_keys: bool) -> None:
    # Take transaction control away from the sqlite3 module; `_sqlite_begin` emits BEGIN itself.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA foreign_keys = {'ON' if foreign_keys else 'OFF'}")
    cursor.execute("PRAGMA busy_timeout = 30000")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    # IMMEDIATE takes the write lock up front: two writers wait for each other (busy_timeout)
    # instead of failing when a read lock cannot be upgraded.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str | sa.URL, *, foreign_keys: bool = True, **kwargs: Any) -> Engine:
    """An engine for PostgreSQL (psycopg 3) or SQLite with this project's connection settings."""
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        raise ConfigurationError(f"invalid database URL {str(url)!r}") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(parsed, **kwargs)
        event.listen(engine, "connect", lambda c, r: _sqlite_connect(c, r, foreign_keys=foreign_keys))
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    if parsed.get_backend_name() != "postgresql":
        raise ConfigurationError(
            f"unsupported database {parsed.get_backend_name()!r}: use postgresql:// or sqlite:///"
        )
    if "connect_timeout" not in parsed.query:  # an unreachable host fails in seconds, not minutes
        kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_SECONDS} | kwargs.get("connect_args", {})
    engine = sa.create_engine(parsed, **kwargs)
    if not kwargs.get("pool_pre_ping") and kwargs.get("poolclass") is not sa.NullPool:
        event.listen(engine, "checkin", _mark_checkin)
        event.listen(engine, "checkout", lambda c, r, p: _ping_if_suspect(engine, c, r))
    return engine


CONNECT_TIMEOUT_SECONDS = 10

# A pooled connection is pinged before it is handed out when it sat unused for this long (the server
# may have restarted, or a proxy dropped it meanwhile) or when the server sent it something while it
# was idle (see `_has_input`). A busy, healthy pool pays one poll() per checkout: pinging every
# checkout (`pool_pre_ping`) costs two round trips per transaction, a large part of a short lookup.
IDLE_PING_SECONDS = 10.0


def _mark_checkin(_dbapi_connection: Any, record: Any) -> None:
    record.info["checked_in_at"] = time.monotonic()


def _has_input(dbapi_connection: Any) -> bool:
    """Whether the server sent anything to this idle connection. With no query in flight that is the
    server closing it (a restart, `pg_terminate_backend`, an idle timeout: an error message and the
    end of the stream) or, rarely, a notice; worth a ping either way. No round trip: one poll()."""
    try:
        fd = dbapi_connection.fileno()
    except Exception:  # noqa: BLE001 - whatever the driver raises: a closed connection has no socket
        return True
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
        return bool(poller.poll(0))
    return bool(select.select([fd], [], [], 0)[0])  # pragma: no cover - platforms without poll()


def _ping_if_suspect(engine: Engine, dbapi_connection: Any, record: Any) -> None:
    checked_in = record.info.get("checked_in_at")
    if checked_in is None:
        return  # a new connection
    if time.monotonic() - checked_in < IDLE_PING_SECONDS and not _has_input(dbapi_connection):
        return  # in use a moment ago, and the server has not closed it since
    try:
        engine.dialect.do_ping(dbapi_connection)
        dbapi_connection.rollback()  # end the transaction the ping opened
    except Exception as exc:  # the connection is dead: the pool replaces it and checks out again
        raise sa.exc.DisconnectionError(str(exc)) from exc


# Server-side reasons (SQLSTATE) that end or refuse a session: shutdown, crash, restart, overload.
CONNECTION_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "57P04", "57P05", "53300"})


def is_connection_error(exc: BaseException) -> bool:
    """Whether a database error means the connection is gone or cannot be made (the server is down,
    restarting, unreachable, overloaded, or ended the session), as opposed to an error of the
    statement. Such errors are worth retrying later; the others are not."""
    if isinstance(exc, (sa.exc.DisconnectionError, sa.exc.TimeoutError)):
        return True  # a dead pooled connection; no connection free in the pool in time
    if isinstance(exc, sa.exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        exc = exc.orig
    try:
        import psycopg
    except ImportError:  # pragma: no cover - SQLite-only installs
        return False
    if isinstance(exc, psycopg.OperationalError):
        # No SQLSTATE: the client library's own failure (connection refused, closed, timed out).
        sqlstate = getattr(exc, "sqlstate", None)
        return sqlstate is None or sqlstate.startswith("08") or sqlstate in CONNECTION_SQLSTATES
    return False


def _short_reason(exc: BaseException) -> str:
    """The gist of a connection error, without the server's address: "Connection refused", ..."""
    cause = exc.orig if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None else exc
    lines = str(cause).strip().splitlines()
    first = lines[0] if lines else type(cause).__name__
    return first.rsplit(" failed: ", 1)[-1].strip() or type(cause).__name__


def unavailable(exc: BaseException) -> DatabaseUnavailable:
    """The domain error for a connection error (see `is_connection_error`)."""
    return DatabaseUnavailable(f"the database is unavailable: {_short_reason(exc)}")


@contextmanager
def connection_errors() -> Iterator[None]:
    """Raise DatabaseUnavailable for errors that mean the database cannot be reached."""
    try:
        yield
    except (sa.exc.DBAPIError, sa.exc.DisconnectionError, sa.exc.TimeoutError) as exc:
        if not is_connection_error(exc):
            raise
        raise unavailable(exc) from exc


R = TypeVar("R", bound=Callable[..., Any])
log = logging.getLogger("adapters.registry")


def retry_read(method: R) -> R:
    """Run an idempotent read once more when the database dropped its connection. The pool replaces
    dead connections as it meets them, so the second try gets a fresh one (after a restart, or
    `pg_terminate_backend`); if the database is down, it fails the same way a moment later."""

    @functools.wraps(method)
    def read(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except DatabaseUnavailable as exc:
            log.info("retrying a read on a fresh connection: %s", exc)
            return method(*args, **kwargs)

    return read  # type: ignore[return-value]


class Database:
    """An engine and its sessions. `transaction()` is the unit of work: commit on success, else roll back.
    Losing the database raises DatabaseUnavailable (see `is_connection_error`)."""

    def __init__(self, url: str | sa.URL | Engine, **engine_kwargs: Any) -> None:
        self.engine = url if isinstance(url, Engine) else make_engine(url, **engine_kwargs)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        with connection_errors(), self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A session for a read that needs no transaction: one statement, or statements that need not
        see one snapshot. On PostgreSQL it runs in autocommit (no BEGIN and COMMIT round trips, which
        are most of a short lookup's cost); elsewhere it is a transaction. Writes through it commit
        statement by statement."""
        if self.dialect != "postgresql":
            with self.transaction() as session:
                yield session
            return
        with (
            connection_errors(),
            self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn,
            Session(bind=conn, expire_on_commit=False) as session,
        ):
            yield session

    def upgrade(self, revision: str = "head") -> str | None:
        """Migrate the schema to `revision`; returns the revision the database is at afterwards."""
        with connection_errors():
            upgrade(self.engine, revision)
            return current_revision(self.engine)

    def at_head(self) -> bool:
        with connection_errors():
            return current_revision(self.engine) == head_revision()

    def check_schema(self) -> None:
        """Raise SchemaOutdated unless the database is at the newest migration."""
        with connection_errors():
            current = current_revision(self.engine)
        head = head_revision()
        if current != head:
            raise SchemaOutdated(
                f"the database schema is at revision {current or 'none (empty database)'} but this "
                f"version of adapters needs {head}: run `adapters db upgrade`"
            )

    def dispose(self) -> None:
        self.engine.dispose()


def ours(name: str | None, _type: str, _parents: object) -> bool:
    """Whether a database object is the registry's to compare with its models: the job queue's
    (`procrastinate_*`, created by migration 0007 from the library's schema) is not."""
    return not (name or "").startswith("procrastinate_")


def alembic_config(connection: Connection | None = None) -> Any:
    """An Alembic config pointing at the installed migrations (no alembic.ini needed)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(resources.files("adapters.migrations")))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@functools.cache  # the migrations ship with the package: read them once, not on every /readyz
def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(bind: Engine | Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    if isinstance(bind, Engine):
        with bind.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    return MigrationContext.configure(bind).get_current_revision()


def upgrade(bind: Engine | Connection, revision: str = "head") -> None:
    """Run `alembic upgrade <revision>` on an engine or an open connection."""
    from alembic import command

    if isinstance(bind, Connection):
        command.upgrade(alembic_config(bind), revision)
        return
    # Migrations run with SQLite foreign keys off (batch mode copies tables); env.py checks them after.
    engine = make_engine(bind.url, foreign_keys=False, poolclass=sa.NullPool) if _is_sqlite(bind) else bind
    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), revision)
    finally:
        if engine is not bind:
            engine.dispose()


def downgrade(bind: Engine, revision: str) -> None:
    """Run `alembic downgrade <revision>` on an engine, SQLite foreign keys off as for upgrades."""
    from alembic import command

    engine = make_engine(bind.url, foreign_keys=False, poolclass=sa.NullPool) if _is_sqlite(bind) else bind
    try:
        with engine.begin() as conn:
            command.downgrade(alembic_config(conn), revision)
    finally:
        if engine is not bind:
            engine.dispose()


def _is_sqlite(bind: Engine | Connection) -> bool:
    return bind.dialect.name == "sqlite"
