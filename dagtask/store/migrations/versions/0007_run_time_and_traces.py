"""OCP's runTime count beside dagtask's attempt number (dagtask.fidelity, switch ``run_time``),
and the traceparent of each task's span (dagtask.observability.tracing).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 05:30:00

Existing subtasks start with their runTime: the count of their past task and automatic retries
was not recorded, and runTime is its upper bound (exact for imported OCP tasks, whose runTime
is OCP's).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "dagtask_subtask",
        sa.Column(
            "ocp_run_time",
            sa.Integer,
            nullable=False,
            server_default="1",
            comment="runTime as OCP counts it: only task retries and automatic retries add 1",
        ),
    )
    op.execute("UPDATE dagtask_subtask SET ocp_run_time = run_time")
    op.add_column(
        "dagtask_task",
        sa.Column(
            "trace_parent",
            sa.String(64),
            nullable=True,
            comment="the W3C traceparent of the task's span, when a tracer recorded its submit",
        ),
    )


def downgrade() -> None:
    op.drop_column("dagtask_task", "trace_parent")
    op.drop_column("dagtask_subtask", "ocp_run_time")
