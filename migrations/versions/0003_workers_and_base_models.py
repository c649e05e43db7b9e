"""workers and the base models they hold; the base model a queued version wants

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copy of the codecs that use a base model at the time of this revision.
CODECS_WITH_BASE_MODEL = ("nola",)


def _document(value: object) -> dict:
    """A JSON column's value: decoded already (psycopg) or text (SQLite)."""
    decoded = json.loads(value) if isinstance(value, str) else value
    return decoded if isinstance(decoded, dict) else {}


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("device", sa.String(length=64), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workers")),
    )
    op.create_index(op.f("ix_workers_last_seen"), "workers", ["last_seen"])
    op.create_table(
        "worker_base_models",
        sa.Column("worker_id", sa.String(length=128), nullable=False),
        sa.Column("base_model", sa.String(length=256), nullable=False),
        sa.ForeignKeyConstraint(
            ["worker_id"],
            ["workers.id"],
            name=op.f("fk_worker_base_models_worker_id_workers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("worker_id", "base_model", name=op.f("pk_worker_base_models")),
    )
    op.create_index(op.f("ix_worker_base_models_base_model"), "worker_base_models", ["base_model"])
    with op.batch_alter_table("versions") as batch:
        batch.add_column(sa.Column("wants_base_model", sa.String(length=256), nullable=True))

    # Versions still queued keep their claim on a base model (a handful of rows: read them here, since
    # JSON operators differ between the two databases).
    bind = op.get_bind()
    queued = bind.execute(
        sa.text(
            "SELECT v.id, v.requested, v.peft_config, a.base_model FROM versions v "
            "JOIN adapters a ON a.id = v.adapter_id WHERE v.status IN ('pending', 'compressing')"
        )
    ).all()
    for version_id, requested_json, config_json, adapter_base_model in queued:
        requested, config = _document(requested_json), _document(config_json)
        wanted = adapter_base_model or config.get("base_model_name_or_path") or None
        if requested.get("codec") in CODECS_WITH_BASE_MODEL and wanted:
            bind.execute(
                sa.text("UPDATE versions SET wants_base_model = :model WHERE id = :id"),
                {"model": str(wanted)[:256], "id": version_id},
            )


def downgrade() -> None:
    with op.batch_alter_table("versions") as batch:
        batch.drop_column("wants_base_model")
    op.drop_index(op.f("ix_worker_base_models_base_model"), table_name="worker_base_models")
    op.drop_table("worker_base_models")
    op.drop_index(op.f("ix_workers_last_seen"), table_name="workers")
    op.drop_table("workers")
