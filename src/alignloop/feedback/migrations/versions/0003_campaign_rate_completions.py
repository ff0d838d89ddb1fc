"""Campaign setting: rate each completion (Likert 1-7 plus the metadata flags) before ranking it.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # batch mode: SQLite cannot ALTER a table's columns in place; the server default fills old rows
    with op.batch_alter_table("campaigns") as batch:
        batch.add_column(sa.Column("rate_completions", sa.Boolean, nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.drop_column("rate_completions")
