"""longer base model names (local paths): up to 2,048 characters wherever a base model id is kept

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# (table, column, nullable): every place a base model id is kept.
COLUMNS = (
    ("adapters", "base_model", True),
    ("versions", "wants_base_model", True),
    ("worker_base_models", "base_model", False),
)


def upgrade() -> None:
    for table, column, nullable in COLUMNS:
        with op.batch_alter_table(table) as batch:
            batch.alter_column(
                column, existing_type=sa.String(length=256), type_=sa.String(length=2048), nullable=nullable
            )


def downgrade() -> None:
    # Names longer than the old columns are cut to fit: a downgrade must not fail on the data it meets.
    op.execute(sa.text("DELETE FROM worker_base_models WHERE length(base_model) > 256"))  # re-announced
    for table, column, nullable in COLUMNS:
        op.execute(
            sa.text(f"UPDATE {table} SET {column} = substr({column}, 1, 256) WHERE length({column}) > 256")  # noqa: S608
        )
        with op.batch_alter_table(table) as batch:
            batch.alter_column(
                column, existing_type=sa.String(length=2048), type_=sa.String(length=256), nullable=nullable
            )
