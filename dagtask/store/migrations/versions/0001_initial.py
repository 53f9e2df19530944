"""Initial schema: templates, tasks, subtasks, edges, logs, events, hosts, id blocks.

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-28 09:40:07.177606
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "dagtask_event",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("task_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "subtask_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column(
            "time",
            sa.DateTime()
            .with_variant(mysql.DATETIME(fsp=6), "mariadb")
            .with_variant(mysql.DATETIME(fsp=6), "mysql"),
            nullable=False,
        ),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("old_status", sa.String(length=16), nullable=True),
        sa.Column("new_status", sa.String(length=16), nullable=True),
        sa.Column("old_operation", sa.String(length=16), nullable=True),
        sa.Column("new_operation", sa.String(length=16), nullable=True),
        sa.Column("run_time", sa.Integer(), nullable=True),
        sa.Column("executor", sa.String(length=256), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_dagtask_event_task", "dagtask_event", ["task_id", "id"], unique=False)
    op.create_table(
        "dagtask_host",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("inner_ip", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("agent_status", sa.String(length=32), nullable=False),
        sa.Column("agent_home", sa.String(length=1024), nullable=False),
        sa.Column("connector", sa.String(length=64), nullable=False),
        sa.Column(
            "create_time",
            sa.DateTime()
            .with_variant(mysql.DATETIME(fsp=6), "mariadb")
            .with_variant(mysql.DATETIME(fsp=6), "mysql"),
            nullable=False,
        ),
        sa.Column(
            "update_time",
            sa.DateTime()
            .with_variant(mysql.DATETIME(fsp=6), "mariadb")
            .with_variant(mysql.DATETIME(fsp=6), "mysql"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    id_sequence = op.create_table(
        "dagtask_id_sequence",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("next_value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    # Seeded here so concurrent first submitters never race to create the rows.
    op.bulk_insert(
        id_sequence, [{"name": "task", "next_value": 1}, {"name": "subtask", "next_value": 1}]
    )
    op.create_table(
        "dagtask_subtask_log",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column(
            "subtask_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("run_time", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column(
            "create_time",
            sa.DateTime()
            .with_variant(mysql.DATETIME(fsp=6), "mariadb")
            .with_variant(mysql.DATETIME(fsp=6), "mysql"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_dagtask_log_subtask",
        "dagtask_subtask_log",
        ["subtask_id", "run_time", "id"],
        unique=False,
    )
    op.create_table(
        "dagtask_template",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("definition", sa.JSON(), nullable=False),
        sa.Column(
            "create_time",
            sa.DateTime()
            .with_variant(mysql.DATETIME(fsp=6), "mariadb")
            .with_variant(mysql.DATETIME(fsp=6), "mysql"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("digest"),
        sa.UniqueConstraint("name", "version", name="uq_dagtask_template_name_version"),
    )
    op.create_table(
        "dagtask_task",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=False,
            nullable=False,
        ),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column(
            "template_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("task_definition_id", sa.BigInteger(), server_default="-1", nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("operation", sa.String(length=16), nullable=False),
        sa.Column("creator", sa.String(length=128), nullable=False),
        sa.Column("executor", sa.String(length=256), nullable=False),
        sa.Column("context", sa.JSON(), nullable=False),
        sa.Column("prohibit_rollback", sa.Boolean(), nullable=False),
        sa.Column("host_id", sa.BigInteger(), nullable=True),
        sa.Column("cluster_id", sa.BigInteger(), nullable=True),
        sa.Column("tenant_id", sa.BigInteger(), nullable=True),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column(
            "cancel_requested",
            sa.Boolean(),
            server_default=sa.false(),
            nullable=False,
            comment="an operator cancelled the task: nothing new starts until a retry or rollback",
        ),
        sa.Column(
            "create_time",
            sa.DateTime()
            .with_variant(mysql.DATETIME(fsp=6), "mariadb")
            .with_variant(mysql.DATETIME(fsp=6), "mysql"),
            nullable=False,
        ),
        sa.Column(
            "start_time",
            sa.DateTime()
            .with_variant(mysql.DATETIME(fsp=6), "mariadb")
            .with_variant(mysql.DATETIME(fsp=6), "mysql"),
            nullable=True,
        ),
        sa.Column(
            "finish_time",
            sa.DateTime()
            .with_variant(mysql.DATETIME(fsp=6), "mariadb")
            .with_variant(mysql.DATETIME(fsp=6), "mysql"),
            nullable=True,
        ),
        sa.ForeignKeyConstraint(
            ["template_id"],
            ["dagtask_template.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_dagtask_task_host", "dagtask_task", ["host_id", "status"], unique=False)
    op.create_index("ix_dagtask_task_status", "dagtask_task", ["status"], unique=False)
    op.create_table(
        "dagtask_subtask",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=False,
            nullable=False,
        ),
        sa.Column("task_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("series_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("description", sa.String(length=1024), nullable=False),
        sa.Column("class_name", sa.String(length=512), nullable=False),
        sa.Column("node_type", sa.String(length=32), nullable=False),
        sa.Column("operation", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("run_time", sa.Integer(), nullable=False),
        sa.Column("timeout", sa.Integer(), nullable=False),
        sa.Column("retry_count", sa.Integer(), nullable=False),
        sa.Column("parallel", sa.Boolean(), nullable=False),
        sa.Column("parallel_idx", sa.Integer(), nullable=False),
        sa.Column("prohibit_rollback", sa.Boolean(), nullable=False),
        sa.Column(
            "pending_upstreams",
            sa.Integer(),
            nullable=False,
            comment="upstreams not SUCCESSFUL; 0 = may become READY (no rescan of the task)",
        ),
        sa.Column("executor", sa.String(length=256), nullable=True),
        sa.Column("output_context", sa.JSON(), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column(
            "create_time",
            sa.DateTime()
            .with_variant(mysql.DATETIME(fsp=6), "mariadb")
            .with_variant(mysql.DATETIME(fsp=6), "mysql"),
            nullable=False,
        ),
        sa.Column(
            "start_time",
            sa.DateTime()
            .with_variant(mysql.DATETIME(fsp=6), "mariadb")
            .with_variant(mysql.DATETIME(fsp=6), "mysql"),
            nullable=True,
        ),
        sa.Column(
            "finish_time",
            sa.DateTime()
            .with_variant(mysql.DATETIME(fsp=6), "mariadb")
            .with_variant(mysql.DATETIME(fsp=6), "mysql"),
            nullable=True,
        ),
        sa.ForeignKeyConstraint(["task_id"], ["dagtask_task.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_dagtask_subtask_claim", "dagtask_subtask", ["status", "id"], unique=False)
    op.create_index(
        "ix_dagtask_subtask_task_status",
        "dagtask_subtask",
        ["task_id", "status", "pending_upstreams"],
        unique=False,
    )
    op.create_table(
        "dagtask_subtask_edge",
        sa.Column(
            "upstream_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=False,
            nullable=False,
        ),
        sa.Column(
            "downstream_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=False,
            nullable=False,
        ),
        sa.Column("task_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.ForeignKeyConstraint(["task_id"], ["dagtask_task.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("upstream_id", "downstream_id"),
    )
    op.create_index(
        "ix_dagtask_edge_downstream", "dagtask_subtask_edge", ["downstream_id"], unique=False
    )
    op.create_index("ix_dagtask_edge_task", "dagtask_subtask_edge", ["task_id"], unique=False)


def downgrade() -> None:

    op.drop_index("ix_dagtask_edge_task", table_name="dagtask_subtask_edge")
    op.drop_index("ix_dagtask_edge_downstream", table_name="dagtask_subtask_edge")
    op.drop_table("dagtask_subtask_edge")
    op.drop_index("ix_dagtask_subtask_task_status", table_name="dagtask_subtask")
    op.drop_index("ix_dagtask_subtask_claim", table_name="dagtask_subtask")
    op.drop_table("dagtask_subtask")
    op.drop_index("ix_dagtask_task_status", table_name="dagtask_task")
    op.drop_index("ix_dagtask_task_host", table_name="dagtask_task")
    op.drop_table("dagtask_task")
    op.drop_table("dagtask_template")
    op.drop_index("ix_dagtask_log_subtask", table_name="dagtask_subtask_log")
    op.drop_table("dagtask_subtask_log")
    op.drop_table("dagtask_id_sequence")
    op.drop_table("dagtask_host")
    op.drop_index("ix_dagtask_event_task", table_name="dagtask_event")
    op.drop_table("dagtask_event")
