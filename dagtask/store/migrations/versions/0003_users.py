"""REST API users: names, password KDF hashes, roles.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 12:12:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "dagtask_user",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column(
            "password_hash", sa.String(512), nullable=False, comment="a password KDF's output"
        ),
        sa.Column("roles", sa.String(256), nullable=False, comment="comma-separated role names"),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("create_time", Timestamp, nullable=False),
        sa.Column("update_time", Timestamp, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("dagtask_user")
