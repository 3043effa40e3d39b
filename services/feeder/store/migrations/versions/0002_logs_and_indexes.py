"""Logs table; host/source/resource/throttled columns; (column, ts_ns, id) indexes for paging.

Revision ID: 0002
Revises: 0001
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_OLD = ("ts_ns", "namespace", "pod", "container", "policy", "operation", "action", "severity", "type", "result")
ALERT_INDEXED = ("namespace", "pod", "container", "policy", "operation", "action", "type")
LOG_INDEXED = ("namespace", "pod", "operation", "type")


def upgrade() -> None:
    for col in _OLD:
        op.drop_index(f"ix_alerts_{col}", table_name="alerts")
    op.add_column("alerts", sa.Column("host", sa.String(253), nullable=False, server_default=""))
    op.add_column("alerts", sa.Column("source", sa.Text, nullable=False, server_default=""))
    op.add_column("alerts", sa.Column("resource", sa.Text, nullable=False, server_default=""))
    op.add_column("alerts", sa.Column("throttled", sa.Boolean, nullable=False, server_default=sa.false()))
    for col in ALERT_INDEXED:
        op.create_index(f"ix_alerts_{col}_ts", "alerts", [col, "ts_ns", "id"])
    op.create_table(
        "logs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(128), nullable=False, unique=True),
        sa.Column("ts_ns", sa.BigInteger, nullable=False),
        *(sa.Column(c, sa.String(253), nullable=False) for c in ("namespace", "pod", "container")),
        sa.Column("host", sa.String(253), nullable=False, server_default=""),
        sa.Column("policy", sa.String(253), nullable=False),
        sa.Column("operation", sa.String(32), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("severity", sa.String(8), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("result", sa.String(64), nullable=False),
        sa.Column("source", sa.Text, nullable=False, server_default=""),
        sa.Column("resource", sa.Text, nullable=False, server_default=""),
        sa.Column("throttled", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("body", sa.Text, nullable=False),
    )
    op.create_index("ix_logs_ts_id", "logs", ["ts_ns", "id"])
    for col in LOG_INDEXED:
        op.create_index(f"ix_logs_{col}_ts", "logs", [col, "ts_ns", "id"])


def downgrade() -> None:
    op.drop_table("logs")
    for col in ALERT_INDEXED:
        op.drop_index(f"ix_alerts_{col}_ts", table_name="alerts")
    with op.batch_alter_table("alerts") as batch:
        for col in ("host", "source", "resource", "throttled"):
            batch.drop_column(col)
    for col in _OLD:
        op.create_index(f"ix_alerts_{col}", "alerts", [col])
