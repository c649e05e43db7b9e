"""whole adapter folders: the files each version holds beside the LoRA weights (README, tokenizer,
new embeddings) in `version_files`, and a content digest over all of them that makes a version's
identity

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A frozen copy of the rule at the time of this revision (PostgreSQL `~`, SQLite REGEXP).
DIGEST_REGEX = r"\A[0-9a-f]{64}\Z"


def upgrade() -> None:
    with op.batch_alter_table("versions") as batch:
        batch.add_column(sa.Column("content_digest", sa.String(length=64), nullable=True))
    # A version without other files is its LoRA source: its content digest is the source's, so the
    # commit ids and `@sha256:` refs of versions pushed before stay what they were.
    op.execute("UPDATE versions SET content_digest = source_digest")
    op.drop_index("uq_versions_adapter_id_source_digest_live", table_name="versions")
    with op.batch_alter_table("versions") as batch:
        batch.alter_column("content_digest", existing_type=sa.String(length=64), nullable=False)
        batch.create_check_constraint(
            op.f("ck_versions_content_digest_format"), sa.column("content_digest").regexp_match(DIGEST_REGEX)
        )
    op.create_index(
        "uq_versions_adapter_id_content_digest_live",
        "versions",
        ["adapter_id", "content_digest"],
        unique=True,
        postgresql_where=sa.text("status <> 'failed'"),
        sqlite_where=sa.text("status <> 'failed'"),
    )
    op.create_table(
        "version_files",
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("size >= 0", name=op.f("ck_version_files_size_not_negative")),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["versions.id"],
            name=op.f("fk_version_files_version_id_versions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(["sha256"], ["blobs.sha256"], name=op.f("fk_version_files_sha256_blobs")),
        sa.PrimaryKeyConstraint("version_id", "name", name=op.f("pk_version_files")),
    )
    op.create_index(op.f("ix_version_files_sha256"), "version_files", ["sha256"])


def downgrade() -> None:
    # Versions that differ only in their other files share a source: the older schema cannot hold
    # two live ones, so all but the newest of each are marked failed (their rows stay).
    op.execute(
        "UPDATE versions SET status = 'failed', yanked_at = NULL, yank_reason = NULL, "
        "error = 'downgraded: same source as a newer version' "
        "WHERE status <> 'failed' AND EXISTS (SELECT 1 FROM versions AS newer "
        "WHERE newer.adapter_id = versions.adapter_id AND newer.source_digest = versions.source_digest "
        "AND newer.status <> 'failed' AND newer.number > versions.number)"
    )
    op.drop_index(op.f("ix_version_files_sha256"), table_name="version_files")
    op.drop_table("version_files")
    op.drop_index("uq_versions_adapter_id_content_digest_live", table_name="versions")
    op.create_index(
        "uq_versions_adapter_id_source_digest_live",
        "versions",
        ["adapter_id", "source_digest"],
        unique=True,
        postgresql_where=sa.text("status <> 'failed'"),
        sqlite_where=sa.text("status <> 'failed'"),
    )
    with op.batch_alter_table("versions") as batch:
        batch.drop_constraint(op.f("ck_versions_content_digest_format"), type_="check")
        batch.drop_column("content_digest")
