"""job queue columns on versions, and API tokens

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the rules at the time of this revision (PostgreSQL `~`, SQLite REGEXP).
NAME_REGEX = r"\A[a-z0-9][a-z0-9._-]{0,63}\Z"
DIGEST_REGEX = r"\A[0-9a-f]{64}\Z"
PUBLIC_ID_REGEX = r"\A[0-9a-f]{12}\Z"
SCOPES = ("read", "write", "admin")
QUEUED = sa.text("status IN ('pending', 'compressing')")


def _matches(column: str, regex: str) -> sa.ColumnElement[bool]:
    return sa.column(column).regexp_match(regex)


def upgrade() -> None:
    # Lookups by task or base model page through names: one index serves filter and order.
    op.drop_index("ix_adapters_task", table_name="adapters")
    op.drop_index("ix_adapters_base_model", table_name="adapters")
    op.create_index("ix_adapters_task_namespace_name", "adapters", ["task", "namespace", "name"])
    op.create_index("ix_adapters_base_model_namespace_name", "adapters", ["base_model", "namespace", "name"])

    with op.batch_alter_table("versions") as batch:
        batch.add_column(sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False))
        batch.add_column(sa.Column("leased_by", sa.String(length=128), nullable=True))
        batch.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True))
    # A version left `compressing` by an older build (no lease) gets an expired one: a worker takes it.
    op.execute(
        sa.text(
            "UPDATE versions SET leased_by = 'unknown (before 0002)', lease_expires_at = CURRENT_TIMESTAMP, "
            "attempts = 1 WHERE status = 'compressing'"
        )
    )
    with op.batch_alter_table("versions") as batch:
        batch.create_check_constraint(op.f("ck_versions_attempts_not_negative"), "attempts >= 0")
        batch.create_check_constraint(
            op.f("ck_versions_compressing_is_leased"),
            "status <> 'compressing' OR (leased_by IS NOT NULL AND lease_expires_at IS NOT NULL)",
        )
    op.create_index("ix_versions_queue", "versions", ["id"], postgresql_where=QUEUED, sqlite_where=QUEUED)

    op.create_table(
        "tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("public_id", sa.String(length=16), nullable=False),
        sa.Column("secret_sha256", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("namespace", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(sa.column("scope").in_(SCOPES), name=op.f("ck_tokens_scope_known")),
        sa.CheckConstraint(_matches("public_id", PUBLIC_ID_REGEX), name=op.f("ck_tokens_public_id_format")),
        sa.CheckConstraint(
            _matches("secret_sha256", DIGEST_REGEX), name=op.f("ck_tokens_secret_sha256_format")
        ),
        sa.CheckConstraint(_matches("name", NAME_REGEX), name=op.f("ck_tokens_name_format")),
        sa.CheckConstraint(
            sa.or_(sa.column("namespace").is_(None), _matches("namespace", NAME_REGEX)),
            name=op.f("ck_tokens_namespace_format"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tokens")),
        sa.UniqueConstraint("public_id", name=op.f("uq_tokens_public_id")),
        sa.UniqueConstraint("secret_sha256", name=op.f("uq_tokens_secret_sha256")),
    )


def downgrade() -> None:
    op.drop_table("tokens")
    op.drop_index("ix_versions_queue", table_name="versions")
    with op.batch_alter_table("versions") as batch:
        batch.drop_constraint(op.f("ck_versions_compressing_is_leased"), type_="check")
        batch.drop_constraint(op.f("ck_versions_attempts_not_negative"), type_="check")
        batch.drop_column("next_attempt_at")
        batch.drop_column("lease_expires_at")
        batch.drop_column("leased_by")
        batch.drop_column("attempts")
    op.drop_index("ix_adapters_base_model_namespace_name", table_name="adapters")
    op.drop_index("ix_adapters_task_namespace_name", table_name="adapters")
    op.create_index("ix_adapters_base_model", "adapters", ["base_model"])
    op.create_index("ix_adapters_task", "adapters", ["task"])
