"""longer base model names (local paths): adapters.base_model up to 2,048 characters

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("adapters") as batch:
        batch.alter_column(
            "base_model", existing_type=sa.String(length=256), type_=sa.String(length=2048), nullable=True
        )


def downgrade() -> None:
    # Names longer than the old column are cut to fit: a downgrade must not fail on the data it meets.
    op.execute(
        sa.text("UPDATE adapters SET base_model = substr(base_model, 1, 256) WHERE length(base_model) > 256")
    )
    with op.batch_alter_table("adapters") as batch:
        batch.alter_column(
            "base_model", existing_type=sa.String(length=2048), type_=sa.String(length=256), nullable=True
        )
