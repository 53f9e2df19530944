"""Schedules and webhooks: task definitions, their fires (one per tick), webhooks, deliveries.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 00:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_index("ix_dagtask_task_definition", "dagtask_task", ["task_definition_id", "status"])
    op.create_table(
        "dagtask_task_definition",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("template", sa.String(256), nullable=False, comment="the template's name"),
        sa.Column("args", sa.JSON, nullable=False, comment="the stringMap of each task it creates"),
        sa.Column("lists", sa.JSON, nullable=False, comment="the listMap of each task it creates"),
        sa.Column("type", sa.String(16), nullable=False, comment="SCHEDULED or SYS_SCHEDULED"),
        sa.Column("schedule_kind", sa.String(16), nullable=False, comment="CRON, ONCE or MANUAL"),
        sa.Column("cron", sa.String(256), nullable=True),
        sa.Column("run_at", Timestamp, nullable=True, comment="ONCE: when (UTC)"),
        sa.Column("time_zone", sa.String(64), nullable=False, server_default="UTC"),
        sa.Column("start_time", Timestamp, nullable=True, comment="no fire before (UTC)"),
        sa.Column("end_time", Timestamp, nullable=True, comment="no fire after (UTC)"),
        sa.Column("missed_policy", sa.String(16), nullable=False, server_default="SKIP"),
        sa.Column("overlap_policy", sa.String(16), nullable=False, server_default="SKIP"),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("creator", sa.String(128), nullable=False),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column(
            "next_fire_time", Timestamp, nullable=True, comment="the next fire (UTC), if any"
        ),
        sa.Column("last_fire_time", Timestamp, nullable=True),
        sa.Column("create_time", Timestamp, nullable=False),
        sa.Column("update_time", Timestamp, nullable=False),
        sa.Index("ix_dagtask_definition_due", "enabled", "next_fire_time"),
    )
    op.create_table(
        "dagtask_schedule_fire",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("definition_id", BigId, nullable=False),
        sa.Column("fire_time", Timestamp, nullable=False, comment="the tick it is for (UTC)"),
        sa.Column(
            "outcome",
            sa.String(16),
            nullable=False,
            comment="CLAIMED (a scheduler took it), FIRED (task_id created), SKIPPED (overlap), "
            "MISSED (after downtime, by the missed-fire policy)",
        ),
        sa.Column("task_id", BigId, nullable=True),
        sa.Column("executor", sa.String(256), nullable=False, comment="the scheduler that took it"),
        sa.Column("claimed_at", Timestamp, nullable=False),
        sa.Column("message", sa.Text, nullable=True),
        sa.UniqueConstraint("definition_id", "fire_time", name="uq_dagtask_fire_tick"),
        sa.Index("ix_dagtask_fire_outcome", "outcome", "claimed_at"),
    )
    op.create_table(
        "dagtask_webhook",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("events", sa.String(64), nullable=False, comment="ended or failed"),
        sa.Column("template", sa.String(256), nullable=True, comment="only tasks of this template"),
        sa.Column("secret_ref", sa.String(512), nullable=True, comment="env:NAME or file:PATH"),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column(
            "after_event_id",
            BigId,
            nullable=False,
            server_default="0",
            comment="the history events up to this id have been looked at",
        ),
        sa.Column("create_time", Timestamp, nullable=False),
    )
    op.create_table(
        "dagtask_webhook_delivery",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("webhook_id", BigId, nullable=False),
        sa.Column("event_id", BigId, nullable=False, comment="the TASK_STATUS event it reports"),
        sa.Column("task_id", BigId, nullable=False),
        sa.Column("task_status", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False, comment="PENDING, DELIVERED or FAILED"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", Timestamp, nullable=False),
        sa.Column("claimed_by", sa.String(256), nullable=True),
        sa.Column("claimed_until", Timestamp, nullable=True),
        sa.Column("last_status_code", sa.Integer, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("create_time", Timestamp, nullable=False),
        sa.Column("delivered_at", Timestamp, nullable=True),
        sa.UniqueConstraint("webhook_id", "event_id", name="uq_dagtask_delivery_event"),
        sa.Index("ix_dagtask_delivery_due", "state", "next_attempt_at"),
    )


def downgrade() -> None:
    op.drop_table("dagtask_webhook_delivery")
    op.drop_table("dagtask_webhook")
    op.drop_table("dagtask_schedule_fire")
    op.drop_table("dagtask_task_definition")
    op.drop_index("ix_dagtask_task_definition", table_name="dagtask_task")
