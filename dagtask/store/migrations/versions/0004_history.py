"""Task history: imported (historical) tasks, their recorded statuses and original ids.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 13:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN, not batch mode: on SQLite batch mode may copy dagtask_task and drop the
    # original, and that drop cascades to every subtask (foreign keys are on).
    op.add_column(
        "dagtask_task",
        sa.Column(
            "historical",
            sa.Boolean,
            nullable=False,
            server_default=sa.false(),
            comment="an imported record of a task run elsewhere: nothing here runs or changes it",
        ),
    )
    op.add_column(
        "dagtask_task",
        sa.Column(
            "recorded_status",
            sa.String(16),
            nullable=True,
            comment="a historical task's status as recorded (its live status stays SUCCESSFUL)",
        ),
    )
    op.add_column(
        "dagtask_task",
        sa.Column(
            "origin",
            sa.JSON,
            nullable=True,
            comment="where a historical task was imported from: file, format, original ids",
        ),
    )
    op.add_column(
        "dagtask_subtask",
        sa.Column(
            "recorded_status",
            sa.String(16),
            nullable=True,
            comment="a historical subtask's status as recorded (its live status is never READY)",
        ),
    )
    op.add_column(
        "dagtask_subtask",
        sa.Column(
            "original_id",
            sa.BigInteger,
            nullable=True,
            comment="a historical subtask's id in the system it was imported from",
        ),
    )


def downgrade() -> None:
    columns = {
        "dagtask_subtask": ["original_id", "recorded_status"],
        "dagtask_task": ["origin", "recorded_status", "historical"],
    }
    if op.get_bind().dialect.name == "sqlite":
        # Batch mode would copy dagtask_task and drop the original, and the drop cascades to
        # every subtask (foreign keys are on): drop the columns in place instead (SQLite 3.35+).
        for table, names in columns.items():
            for name in names:
                op.execute(f"ALTER TABLE {table} DROP COLUMN {name}")
        return
    for table, names in columns.items():
        with op.batch_alter_table(table) as batch:
            for name in names:
                batch.drop_column(name)
