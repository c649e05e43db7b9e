"""lifecycle and lineage: version labels, the base model's revision, alias history and protection,
per-adapter retention, and when a blob was released (garbage collection's grace period)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copy of limits.LABEL_KEY_REGEX at the time of this revision.
LABEL_KEY_REGEX = r"\A[a-z0-9][a-z0-9._/-]{0,63}\Z"


def upgrade() -> None:
    with op.batch_alter_table("adapters") as batch:
        batch.add_column(sa.Column("keep_versions", sa.Integer(), nullable=True))
        batch.create_check_constraint(
            op.f("ck_adapters_keep_versions_positive"), "keep_versions IS NULL OR keep_versions >= 1"
        )
    with op.batch_alter_table("blobs") as batch:
        batch.add_column(sa.Column("released_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("versions") as batch:
        batch.add_column(sa.Column("base_model_revision", sa.String(length=128), nullable=True))
    with op.batch_alter_table("aliases") as batch:
        batch.add_column(sa.Column("protected", sa.Boolean(), server_default=sa.false(), nullable=False))
    op.create_table(
        "version_labels",
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=512), nullable=False),
        sa.CheckConstraint(
            sa.column("key").regexp_match(LABEL_KEY_REGEX), name=op.f("ck_version_labels_key_format")
        ),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["versions.id"],
            name=op.f("fk_version_labels_version_id_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("version_id", "key", name=op.f("pk_version_labels")),
    )
    op.create_index("ix_version_labels_key_value", "version_labels", ["key", "value"])
    op.create_table(
        "alias_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("adapter_id", sa.Integer(), nullable=False),
        sa.Column("alias", sa.String(length=64), nullable=False),
        sa.Column("from_number", sa.Integer(), nullable=True),
        sa.Column("to_number", sa.Integer(), nullable=True),
        sa.Column("actor", sa.String(length=128), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint(
            "from_number IS NOT NULL OR to_number IS NOT NULL", name=op.f("ck_alias_events_from_or_to")
        ),
        sa.ForeignKeyConstraint(
            ["adapter_id"],
            ["adapters.id"],
            name=op.f("fk_alias_events_adapter_id_adapters"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alias_events")),
    )
    op.create_index("ix_alias_events_adapter_id_alias_id", "alias_events", ["adapter_id", "alias", "id"])


def downgrade() -> None:
    op.drop_index("ix_alias_events_adapter_id_alias_id", table_name="alias_events")
    op.drop_table("alias_events")
    op.drop_index("ix_version_labels_key_value", table_name="version_labels")
    op.drop_table("version_labels")
    with op.batch_alter_table("aliases") as batch:
        batch.drop_column("protected")
    with op.batch_alter_table("versions") as batch:
        batch.drop_column("base_model_revision")
    with op.batch_alter_table("blobs") as batch:
        batch.drop_column("released_at")
    with op.batch_alter_table("adapters") as batch:
        batch.drop_constraint(op.f("ck_adapters_keep_versions_positive"), type_="check")
        batch.drop_column("keep_versions")
