"""initial schema: adapters, tags, blobs, versions, aliases

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the rules at the time of this revision (PostgreSQL `~`, SQLite REGEXP).
NAME_REGEX = r"\A[a-z0-9][a-z0-9._-]{0,63}\Z"
DIGEST_REGEX = r"\A[0-9a-f]{64}\Z"
STATUSES = ("pending", "compressing", "ready", "rejected", "failed")


def _json() -> sa.types.TypeEngine:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _timestamp(name: str, *, default: bool = True) -> sa.Column:
    if default:
        return sa.Column(name, sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False)
    return sa.Column(name, sa.DateTime(timezone=True), nullable=True)


def _matches(table: str, column: str, regex: str, name: str) -> sa.CheckConstraint:
    return sa.CheckConstraint(sa.column(column).regexp_match(regex), name=op.f(f"ck_{table}_{name}"))


def upgrade() -> None:
    op.create_table(
        "adapters",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("namespace", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("task", sa.String(length=64), nullable=False),
        sa.Column("base_model", sa.String(length=256), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("last_version", sa.Integer(), server_default=sa.text("0"), nullable=False),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        _matches("adapters", "namespace", NAME_REGEX, "namespace_format"),
        _matches("adapters", "name", NAME_REGEX, "name_format"),
        _matches("adapters", "task", NAME_REGEX, "task_format"),
        sa.CheckConstraint(
            "base_model IS NULL OR length(base_model) > 0", name=op.f("ck_adapters_base_model_not_empty")
        ),
        sa.CheckConstraint("last_version >= 0", name=op.f("ck_adapters_last_version_not_negative")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_adapters")),
        sa.UniqueConstraint("namespace", "name", name=op.f("uq_adapters_namespace_name")),
    )
    op.create_index(op.f("ix_adapters_base_model"), "adapters", ["base_model"])
    op.create_index(op.f("ix_adapters_task"), "adapters", ["task"])

    op.create_table(
        "adapter_tags",
        sa.Column("adapter_id", sa.Integer(), nullable=False),
        sa.Column("tag", sa.String(length=64), nullable=False),
        _matches("adapter_tags", "tag", NAME_REGEX, "tag_format"),
        sa.ForeignKeyConstraint(
            ["adapter_id"],
            ["adapters.id"],
            name=op.f("fk_adapter_tags_adapter_id_adapters"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("adapter_id", "tag", name=op.f("pk_adapter_tags")),
    )
    op.create_index(op.f("ix_adapter_tags_tag"), "adapter_tags", ["tag"])

    op.create_table(
        "blobs",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        _timestamp("created_at"),
        _matches("blobs", "sha256", DIGEST_REGEX, "sha256_format"),
        sa.CheckConstraint("size >= 0", name=op.f("ck_blobs_size_not_negative")),
        sa.PrimaryKeyConstraint("sha256", name=op.f("pk_blobs")),
    )

    op.create_table(
        "versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("adapter_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="pending", nullable=False),
        sa.Column("source_digest", sa.String(length=64), nullable=False),
        sa.Column("source_size", sa.BigInteger(), nullable=False),
        sa.Column("requested", _json(), nullable=False),
        sa.Column("artifact_digest", sa.String(length=64), nullable=True),
        sa.Column("artifact_size", sa.BigInteger(), nullable=True),
        sa.Column("codec", sa.String(length=32), nullable=True),
        sa.Column("codec_params", _json(), nullable=True),
        sa.Column("fidelity", _json(), nullable=True),
        sa.Column("peft_config", _json(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        _timestamp("yanked_at", default=False),
        sa.Column("yank_reason", sa.Text(), nullable=True),
        _timestamp("created_at"),
        sa.Column("created_by", sa.String(length=128), nullable=True),
        _timestamp("processed_at", default=False),
        sa.CheckConstraint("number >= 1", name=op.f("ck_versions_number_positive")),
        sa.CheckConstraint(sa.column("status").in_(STATUSES), name=op.f("ck_versions_status_known")),
        sa.CheckConstraint(
            "source_size >= 0 AND (artifact_size IS NULL OR artifact_size >= 0)",
            name=op.f("ck_versions_sizes"),
        ),
        sa.CheckConstraint(
            "status <> 'ready' OR (artifact_digest IS NOT NULL AND artifact_size IS NOT NULL "
            "AND codec IS NOT NULL)",
            name=op.f("ck_versions_ready_has_artifact"),
        ),
        sa.CheckConstraint(
            "yanked_at IS NULL OR status = 'ready'", name=op.f("ck_versions_only_ready_yanked")
        ),
        sa.ForeignKeyConstraint(
            ["adapter_id"], ["adapters.id"], name=op.f("fk_versions_adapter_id_adapters"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["source_digest"], ["blobs.sha256"], name=op.f("fk_versions_source_digest_blobs")
        ),
        sa.ForeignKeyConstraint(
            ["artifact_digest"], ["blobs.sha256"], name=op.f("fk_versions_artifact_digest_blobs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_versions")),
        sa.UniqueConstraint("adapter_id", "number", name=op.f("uq_versions_adapter_id_number")),
        sa.UniqueConstraint("adapter_id", "id", name=op.f("uq_versions_adapter_id_id")),
    )
    op.create_index(op.f("ix_versions_artifact_digest"), "versions", ["artifact_digest"])
    op.create_index(
        "uq_versions_adapter_id_source_digest_live",
        "versions",
        ["adapter_id", "source_digest"],
        unique=True,
        postgresql_where=sa.text("status <> 'failed'"),
        sqlite_where=sa.text("status <> 'failed'"),
    )

    op.create_table(
        "aliases",
        sa.Column("adapter_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        _timestamp("updated_at"),
        sa.Column("updated_by", sa.String(length=128), nullable=True),
        _matches("aliases", "name", NAME_REGEX, "name_format"),
        sa.CheckConstraint("name <> 'latest'", name=op.f("ck_aliases_name_not_reserved")),
        sa.ForeignKeyConstraint(
            ["adapter_id"], ["adapters.id"], name=op.f("fk_aliases_adapter_id_adapters"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["adapter_id", "version_id"],
            ["versions.adapter_id", "versions.id"],
            name="fk_aliases_adapter_id_version_id_versions",
        ),
        sa.PrimaryKeyConstraint("adapter_id", "name", name=op.f("pk_aliases")),
    )
    op.create_index(op.f("ix_aliases_version_id"), "aliases", ["version_id"])


def downgrade() -> None:
    op.drop_table("aliases")
    op.drop_table("versions")
    op.drop_table("blobs")
    op.drop_table("adapter_tags")
    op.drop_table("adapters")
