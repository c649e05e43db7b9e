"""adapters db: the registry's database schema."""

from __future__ import annotations

import click
import sqlalchemy as sa

from .context import AppContext, json_option, pass_app


def _where(app: AppContext) -> str:
    return sa.make_url(app.settings.database_url).render_as_string(hide_password=True)


@click.group()
def db() -> None:
    """Create or upgrade the registry's database schema (Alembic migrations).

    \b
    Example:
      ADAPTERS_DATABASE_URL=postgresql://registry@db/registry adapters db upgrade
    """


@db.command()
@click.option("--revision", default="head", show_default=True, help="The migration to upgrade to.")
@json_option
@pass_app
def upgrade(app: AppContext, revision: str) -> None:
    """Migrate the database to REVISION (the newest by default); safe to run again.

    \b
    Example:
      adapters db upgrade
    """
    from adapters.registry.db import Database

    app.require_local("adapters db")
    database = Database(app.settings.database_url)
    try:
        current = database.upgrade(revision)
    finally:
        database.dispose()
    payload = {"database": _where(app), "revision": current}
    app.emit(payload, lambda: click.echo(f"{_where(app)} is at revision {current}"))


@db.command()
@json_option
@pass_app
def current(app: AppContext) -> None:
    """Print the database's revision and the newest this version of adapters knows.

    \b
    Example:
      adapters db current
    """
    from adapters.registry.db import Database, current_revision, head_revision

    app.require_local("adapters db")
    database = Database(app.settings.database_url)
    try:
        revision = current_revision(database.engine)
    finally:
        database.dispose()
    head = head_revision()
    payload = {"database": _where(app), "revision": revision, "head": head}
    app.emit(payload, lambda: click.echo(f"{_where(app)}: revision {revision or 'none'} (newest: {head})"))
