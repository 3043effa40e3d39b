"""The first feeder schema: one ``alerts`` table with single-column indexes.

Revision ID: 0001
Revises:
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_INDEXED = ("ts_ns", "namespace", "pod", "container", "policy", "operation", "action", "severity", "type", "result")


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(128), nullable=False, unique=True),
        sa.Column("ts_ns", sa.BigInteger, nullable=False),
        sa.Column("namespace", sa.String(253), nullable=False),
        sa.Column("pod", sa.String(253), nullable=False),
        sa.Column("container", sa.String(253), nullable=False),
        sa.Column("policy", sa.String(253), nullable=False),
        sa.Column("operation", sa.String(32), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("severity", sa.String(8), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("result", sa.String(64), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
    )
    for col in _INDEXED:
        op.create_index(f"ix_alerts_{col}", "alerts", [col])
    op.create_index("ix_alerts_ts_id", "alerts", ["ts_ns", "id"])


def downgrade() -> None:
    op.drop_table("alerts")
