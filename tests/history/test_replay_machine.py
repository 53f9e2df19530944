"""Replay equals the stored snapshot after every event (hypothesis, SQLite and PostgreSQL).

The store's state machine (``tests/contract/test_state_machine.py``) drives random task lives:
random DAGs with retries and fan-out, workers that succeed, fail, time out, are cancelled or
report late, and every operator action, allowed or not. This machine runs the same rules and,
after every step, checks that the task rebuilt from its events alone
(:func:`dagtask.history.replay`) equals what is stored, field by field. At the end it replays
the history again up to the end of every earlier step (``step=N``, and ``at=TIME`` where the
time is unambiguous) and checks each against the snapshot taken then. It also checks the typed
history: every claim is an attempt started by that worker, every operator event names the
operator, every attempt that ended has its duration, and the task's export passes the checks of
an import and imports as a copy whose export is the same apart from the ids.

``DAGTASK_REPLAY_EXAMPLES`` / ``DAGTASK_REPLAY_STEPS`` raise the budget.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import run_state_machine_as_test

from dagtask import TemplateBuilder, history
from dagtask.expand import expand, task_context
from dagtask.history import exchange, typed
from dagtask.history import state as rp
from dagtask.history.ocp_import import now_utc as now
from dagtask.models import TaskInfo
from dagtask.store import db as dbmod
from dagtask.store import history as sql
from dagtask.store.sql import Store
from tests.contract.test_state_machine import OPERATOR, TaskLife
from tests.history import support
from tests.hypo import examples, steps

EXAMPLES = int(os.environ.get("DAGTASK_REPLAY_EXAMPLES", str(examples(30))))
STEPS = int(os.environ.get("DAGTASK_REPLAY_STEPS", str(steps(30))))


class ReplayedLife(TaskLife):
    """The store's state machine, checking replay against the stored task after every step."""

    def __init__(self) -> None:
        super().__init__()
        self.snapshots: list[rp.TaskState] = []

    def check(self, before: TaskInfo, *, operator: bool = False) -> TaskInfo:
        task = super().check(before, operator=operator)
        stored = history.snapshot(self.store, self.task_id)
        replayed = history.replay(self.store, self.task_id)
        assert replayed == stored, (
            f"after {stored.step} events the replay differs from the stored task: "
            f"{rp.differences(replayed, stored)}"
        )
        self.snapshots.append(stored)
        return task

    def teardown(self) -> None:
        if not self.task_id:
            return
        info, raw = history.load(self.store, self.task_id)
        for stored in self.snapshots:
            again = rp.replay_events(info, raw, step=stored.step)
            assert again == stored, f"replay --step {stored.step}: {rp.differences(again, stored)}"
            later = raw[stored.step] if stored.step < len(raw) else None
            if stored.time is not None and (later is None or later.time > stored.time):
                at = rp.replay_events(info, raw, at=stored.time)
                assert at == stored, f"replay --at {stored.time}: {rp.differences(at, stored)}"
        self.check_typed(info)
        # Every random history exports to a file that imports (its own checks pass).
        record = history.record(self.store, self.task_id)
        text = "\n".join(exchange.export_lines(record))
        [(parsed, _line)] = exchange.parse_export(text, "machine.jsonl")
        assert parsed == record
        # ... and imports as a historical copy whose export is the same apart from the ids.
        [copy] = sql.insert_tasks(self.store.db, [sql.Import(parsed, {"format": "dagtask"})], now())
        exported = "\n".join(exchange.export_lines(history.record(self.store, copy)))
        assert support.normalise(exported) == support.normalise(text)
        assert history.replay(self.store, copy) == history.snapshot(self.store, copy)

    def check_typed(self, info: TaskInfo) -> None:
        h = history.task_history(self.store, self.task_id)
        raw = self.store.events(self.task_id)
        assert [e.id for e in h.events] == [e.id for e in raw]
        claims = [e for e in raw if e.old_status == "READY" and e.new_status == "RUNNING"]
        started = [e for e in h.events if isinstance(e, typed.AttemptStarted)]
        assert [(e.id, e.worker) for e in started] == [(e.id, e.executor) for e in claims]
        assert len(h.attempts) == len(claims)
        for attempt in h.attempts:
            if attempt.end is not None:
                assert attempt.duration is not None and attempt.duration >= 0
        by_operator = [e for e in raw if e.executor == OPERATOR]
        operated = {e.id for e in h.events if isinstance(e, typed.OperatorChange)}
        assert {e.id for e in by_operator} == operated, "an operator event was not recognised"
        for action in h.actions:
            assert action.operator == OPERATOR and action.changes


def run(url: str, examples: int) -> None:
    database = dbmod.open_database(url)
    try:
        store = Store(database)
        one = TemplateBuilder("foreign")
        one.add("only", "tests.handlers.record")
        template = one.build()
        foreign = store.submit(
            expand(template, task_context(template)),
            template_id=None,
            creator="machine",
            executor="machine",
        )
        bound = type(
            f"ReplayedLifeOn{database.dialect.title()}",
            (ReplayedLife,),
            {"store": store, "foreign_subtask": store.get_task(foreign).subtasks[0].id},
        )
        run_state_machine_as_test(
            bound,
            settings=settings(
                max_examples=examples,
                stateful_step_count=STEPS,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                phases=[p for p in Phase if p is not Phase.shrink],
            ),
        )
    finally:
        database.dispose()


def test_replay_equals_the_stored_task_after_every_event_on_sqlite() -> None:
    with tempfile.TemporaryDirectory() as folder:
        run(f"sqlite:///{Path(folder) / 'replay.db'}", EXAMPLES)


@pytest.mark.postgres
def test_replay_equals_the_stored_task_after_every_event_on_postgresql(pg_url: str) -> None:
    run(pg_url, max(1, EXAMPLES // 3))
