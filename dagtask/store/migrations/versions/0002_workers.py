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
    with op.batch_alter_table("dagtask_subtask") as batch:
        batch.add_column(
            sa.Column(
                "recovery",
                sa.String(8),
                nullable=False,
                server_default="FAIL",
                comment="what happens when the worker running it is lost: FAIL or RETRY",
            )
        )
        batch.add_column(
            sa.Column(
                "lost_count",
                sa.Integer,
                nullable=False,
                server_default="0",
                comment="attempts recovered from lost workers (caps RETRY recovery)",
            )
        )
    with op.batch_alter_table("dagtask_task") as batch:
        batch.add_column(
            sa.Column(
                "source_task_id",
                BigId,
                nullable=True,
                comment="the task this one reruns or forks (dagtask rerun), if any",
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("dagtask_task") as batch:
        batch.drop_column("source_task_id")
    with op.batch_alter_table("dagtask_subtask") as batch:
        batch.drop_column("lost_count")
        batch.drop_column("recovery")
    op.drop_index("ix_dagtask_host_lock_task", table_name="dagtask_host_lock")
    op.drop_table("dagtask_host_lock")
    op.drop_index("ix_dagtask_task_host_host", table_name="dagtask_task_host")
    op.drop_table("dagtask_task_host")
    op.drop_table("dagtask_worker")
