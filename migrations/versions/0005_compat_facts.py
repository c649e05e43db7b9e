"""compatibility facts per version (rank, alpha, targets, DoRA, modules_to_save, bias, embeddings,
dtypes): what serving engines need to know, computed at push; null for versions pushed before

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Old rows keep NULL: their facts are unknown (computing them would mean reading every blob).
    with op.batch_alter_table("versions") as batch:
        batch.add_column(
            sa.Column("compat", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("versions") as batch:
        batch.drop_column("compat")
