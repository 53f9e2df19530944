"""Alembic environment: runs on the connection dagtask hands over, or on the configured URL."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from dagtask.store.schema import metadata

config = context.config


def run() -> None:
    """Run the migrations online (dagtask never generates offline SQL scripts)."""
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=metadata)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = sa.create_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.begin() as conn:
        context.configure(connection=conn, target_metadata=metadata)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run()
