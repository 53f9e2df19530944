"""Many workers: worker heartbeats, host locks, per-subtask recovery policy, task lineage.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 12:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "dagtask_worker",
        sa.Column("name", sa.String(256), primary_key=True),
        sa.Column("host", sa.String(256), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("concurrency", sa.Integer, nullable=False),
        sa.Column("lease_seconds", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False, comment="ACTIVE, STOPPED or LOST"),
        sa.Column("started_at", Timestamp, nullable=False),
        sa.Column("heartbeat_at", Timestamp, nullable=False, comment="database time (UTC)"),
        sa.Column("stopped_at", Timestamp, nullable=True),
    )
    op.create_table(
        "dagtask_task_host",
        sa.Column("task_id", BigId, primary_key=True, autoincrement=False),
        sa.Column("host_id", sa.BigInteger, primary_key=True, autoincrement=False),
    )
    op.create_index(
        "ix_dagtask_task_host_host", "dagtask_task_host", ["host_id", "task_id"], unique=False
    )
    op.create_table(
        "dagtask_host_lock",
        sa.Column("host_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("task_id", BigId, nullable=False),
        sa.Column("since", Timestamp, nullable=False),
    )
    op.create_index("ix_dagtask_host_lock_task", "dagtask_host_lock", ["task_id"], unique=False)
    # Plain ADD COLUMN, not batch mode: on SQLite batch mode may copy a table and drop the
    # original, and dropping dagtask_task cascades to every subtask (foreign keys are on).
    op.add_column(
        "dagtask_subtask",
        sa.Column(
            "recovery",
            sa.String(8),
            nullable=False,
            server_default="FAIL",
            comment="what happens when the worker running it is lost: FAIL or RETRY",
        ),
    )
    op.add_column(
        "dagtask_subtask",
        sa.Column(
            "lost_count",
            sa.Integer,
            nullable=False,
            server_default="0",
            comment="attempts recovered from lost workers (caps RETRY recovery)",
        ),
    )
    op.add_column(
        "dagtask_task",
        sa.Column(
            "source_task_id",
            BigId,
            nullable=True,
            comment="the task this one reruns or forks (dagtask rerun), if any",
        ),
    )


def downgrade() -> None:
    columns = {"dagtask_task": ["source_task_id"], "dagtask_subtask": ["lost_count", "recovery"]}
    sqlite = op.get_bind().dialect.name == "sqlite"
    for table, names in columns.items():
        for name in names:
            if sqlite:  # in place (SQLite 3.35+): batch mode's table copy would cascade
                op.execute(f"ALTER TABLE {table} DROP COLUMN {name}")
            else:
                op.drop_column(table, name)
    op.drop_index("ix_dagtask_host_lock_task", table_name="dagtask_host_lock")
    op.drop_table("dagtask_host_lock")
    op.drop_index("ix_dagtask_task_host_host", table_name="dagtask_task_host")
    op.drop_table("dagtask_task_host")
    op.drop_table("dagtask_worker")
