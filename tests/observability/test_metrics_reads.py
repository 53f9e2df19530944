"""The database figures of a scrape on every database: workers judged on the database's clock,
the READY queue's head and its age, deliveries by state."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from dagtask import Engine, TemplateBuilder
from dagtask.clock import utcnow
from dagtask.store import metrics_reads
from dagtask.store.schema import task_event, worker


def test_the_figures_on_every_database(db_url: str) -> None:
    t = TemplateBuilder("Figures", concurrency=2)
    first = t.add("first", "dagtask.builtin.noop")
    t.add("second", "dagtask.builtin.noop")
    t.add("third", "dagtask.builtin.noop", after=[first])
    with Engine(db_url, workers=0) as engine:
        store = engine.store
        for name in ("alive", "expired", "lost", "stopped"):
            store.register_worker(name, concurrency=3, lease_seconds=30)
        store.stop_worker("stopped")
        with engine.database.engine.begin() as conn:
            old = utcnow() - timedelta(seconds=600)
            conn.execute(worker.update().where(worker.c.name == "expired").values(heartbeat_at=old))
            conn.execute(worker.update().where(worker.c.name == "lost").values(status="LOST"))
        empty = metrics_reads.read_figures(engine.database)
        assert empty.ready_head_age == 0
        assert empty.workers == {"alive": 1, "expired": 1, "lost": 1, "stopped": 1}
        assert empty.alive_slots == 3

        task_id = engine.submit_id(t.build())
        with engine.database.engine.begin() as conn:  # the roots became READY 90 s ago
            conn.execute(
                task_event.update()
                .where(task_event.c.task_id == task_id, task_event.c.new_status == "READY")
                .values(time=utcnow() - timedelta(seconds=90))
            )
        figures = metrics_reads.read_figures(engine.database)
        assert figures.tasks == {"RUNNING": 1, "FAILED": 0, "SUCCESSFUL": 0}
        assert figures.subtasks["READY"] == 2 and figures.subtasks["PENDING"] == 1
        assert 90 <= figures.ready_head_age < 90 + 60
        assert figures.deliveries == {"PENDING": 0, "DELIVERED": 0, "FAILED": 0}
        with engine.database.engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(worker)).scalar() == 4
