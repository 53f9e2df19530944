"""Remote hosts: how to reach a host over SSH, its pinned host key, its agent kind and last check.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 21:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    # Plain ADD COLUMN (see 0004): batch mode could copy and drop the table on SQLite.
    op.add_column(
        "dagtask_host",
        sa.Column(
            "access",
            sa.Text,
            nullable=True,
            comment="JSON: how to reach the host over SSH (port, user, auth, key file, secret "
            "reference, jump host, known-hosts file); never a password",
        ),
    )
    op.add_column(
        "dagtask_host",
        sa.Column(
            "host_key",
            sa.Text,
            nullable=True,
            comment="the pinned SSH host key (OpenSSH public key line) from `dagtask hosts trust`",
        ),
    )
    op.add_column(
        "dagtask_host",
        sa.Column(
            "agent_kind",
            sa.String(64),
            nullable=False,
            server_default="ocp",
            comment="how the agent's processes are listed, stopped and started",
        ),
    )
    op.add_column(
        "dagtask_host",
        sa.Column("os_info", sa.String(512), nullable=True, comment="what the last check found"),
    )
    op.add_column("dagtask_host", sa.Column("checked_at", Timestamp, nullable=True))


def downgrade() -> None:
    for column in ("checked_at", "os_info", "agent_kind", "host_key", "access"):
        op.drop_column("dagtask_host", column)
