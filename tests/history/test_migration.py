"""Migration 0004 adds the history columns to a database that already holds tasks."""

from __future__ import annotations

from alembic import command

from dagtask import Engine
from dagtask.store import db as dbmod
from tests.history import support


def test_upgrade_from_0003_keeps_tasks_live(db_url: str) -> None:
    with Engine(db_url, workers=0) as engine:
        task = engine.submit(support.template())
    database = dbmod.Database(db_url)
    config = dbmod.alembic_config(db_url)
    with database.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0003")
    assert dbmod.current_revision(database) == "0003"
    assert dbmod.upgrade(database) == ("0003", dbmod.head_revision())
    database.dispose()
    with Engine(db_url, workers=0) as engine:
        again = engine.get(task.id)
        assert not again.historical and again.status.value == "RUNNING"
        assert again.subtask("prepare").status.value == "READY"
        assert engine.store.claim("w", limit=1, task_id=task.id)  # still live: it runs
