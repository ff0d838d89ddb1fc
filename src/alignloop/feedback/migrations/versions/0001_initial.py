"""Initial schema: users, groups, tokens, campaigns, items, assignments, labels.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _ts() -> sa.Column:
    return sa.Column("created_at", sa.DateTime(timezone=True), nullable=False)


def upgrade() -> None:
    op.create_table(
        "server_secrets",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(128), nullable=False),
    )
    op.create_table(
        "labeler_groups",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("held_out", sa.Boolean, nullable=False),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("username", sa.String(64), nullable=False, unique=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("password_hash", sa.String(256), nullable=True),
        sa.Column("group_id", sa.Integer, sa.ForeignKey("labeler_groups.id"), nullable=True),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("qualified", sa.Boolean, nullable=True),
        sa.Column("screening_score", sa.Float, nullable=True),
        _ts(),
    )
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("revoked", sa.Boolean, nullable=False),
        _ts(),
    )
    op.create_table(
        "campaigns",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("task_type", sa.String(32), nullable=False),
        sa.Column("guidelines", sa.Text, nullable=False),
        sa.Column("overlap", sa.Integer, nullable=False),
        sa.Column("allow_ties", sa.Boolean, nullable=False),
        sa.Column("rules", sa.JSON, nullable=False),
        sa.Column("screening", sa.Boolean, nullable=False),
        sa.Column("screened_only", sa.Boolean, nullable=False),
        _ts(),
    )
    op.create_table(
        "items",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("campaign_id", sa.Integer, sa.ForeignKey("campaigns.id"), nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("prompt_id", sa.String(128), nullable=False),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("category", sa.String(32), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("completions", sa.JSON, nullable=False),
        sa.Column("sources", sa.JSON, nullable=True),
        sa.Column("gold", sa.JSON, nullable=True),
        _ts(),
        sa.UniqueConstraint("campaign_id", "key", name="uq_items_campaign_key"),
    )
    op.create_index("ix_items_campaign_id", "items", ["campaign_id"])
    op.create_table(
        "assignments",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("item_id", sa.Integer, sa.ForeignKey("items.id"), nullable=False),
        sa.Column("labeler_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        _ts(),
        sa.UniqueConstraint("item_id", "labeler_id", name="uq_assignments_item_labeler"),
    )
    op.create_index("ix_assignments_item_id", "assignments", ["item_id"])
    op.create_index("ix_assignments_labeler_id", "assignments", ["labeler_id"])
    op.create_table(
        "labels",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("assignment_id", sa.Integer, sa.ForeignKey("assignments.id"), nullable=False, unique=True),
        sa.Column("item_id", sa.Integer, sa.ForeignKey("items.id"), nullable=False),
        sa.Column("labeler_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("payload", sa.JSON, nullable=True),
        sa.Column("skip_reason", sa.String(256), nullable=True),
        sa.Column("idempotency_key", sa.String(128), nullable=True),
        _ts(),
    )
    op.create_index("ix_labels_item_id", "labels", ["item_id"])


def downgrade() -> None:
    for index, table in (
        ("ix_labels_item_id", "labels"),
        ("ix_assignments_labeler_id", "assignments"),
        ("ix_assignments_item_id", "assignments"),
        ("ix_items_campaign_id", "items"),
    ):
        op.drop_index(index, table_name=table)
    for table in ("labels", "assignments", "items", "campaigns", "api_tokens", "users", "labeler_groups"):
        op.drop_table(table)
    op.drop_table("server_secrets")
