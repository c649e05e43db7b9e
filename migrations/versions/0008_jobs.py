"""the job queue's schema (Procrastinate): jobs, workers, events and their functions; PostgreSQL only
(the embedded SQLite registry compresses inline and has no queue)

Pending versions get their compression job from `adapters worker` (its reconciler defers a job for
every pending version that has none), so nothing is copied here.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = (
    "procrastinate_events",
    "procrastinate_periodic_defers",
    "procrastinate_jobs",
    "procrastinate_workers",
)
TYPES = ("procrastinate_job_to_defer_v1", "procrastinate_job_event_type", "procrastinate_job_status")


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    from procrastinate.schema import SchemaManager

    # The schema the installed library ships (its own `procrastinate schema --apply` runs the same
    # text); a later library version that changes it comes with a migration of ours.
    # On the driver's own cursor, in Alembic's transaction: without parameters psycopg leaves the
    # text's `%` signs alone (SQLAlchemy would read them as placeholders).
    with bind.connection.driver_connection.cursor() as cursor:
        cursor.execute(SchemaManager.get_schema())


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    for table in TABLES:
        bind.exec_driver_sql(f"DROP TABLE IF EXISTS {table} CASCADE")
    bind.exec_driver_sql(
        """
        DO $$
        DECLARE f record;
        BEGIN
            FOR f IN SELECT oid::regprocedure AS signature FROM pg_proc
                      WHERE starts_with(proname, 'procrastinate_')
            LOOP
                EXECUTE 'DROP FUNCTION ' || f.signature || ' CASCADE';
            END LOOP;
        END $$
        """
    )
    for type_ in TYPES:
        bind.exec_driver_sql(f"DROP TYPE IF EXISTS {type_} CASCADE")
