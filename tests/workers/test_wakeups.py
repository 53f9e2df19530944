"""READY work is claimed when it appears, never left to the next idle poll.

The idle poll is made an hour long here, so a lost wake-up shows as a task that never ends
(the wait times out) instead of as a slow one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dagtask import Engine, TemplateBuilder
from dagtask.builtin import noop
from dagtask.states import TaskStatus
from dagtask.worker.dispatcher import Dispatcher


@pytest.mark.parametrize(("copies", "workers", "concurrency"), [(20, 8, 10), (33, 4, 7)])
def test_a_fan_wider_than_the_slots_and_the_concurrency_runs_without_polling(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    copies: int,
    workers: int,
    concurrency: int,
) -> None:
    monkeypatch.setattr(Dispatcher, "MAX_IDLE_POLL", 3600.0)
    t = TemplateBuilder("wide", concurrency=concurrency)
    root = t.add("root", noop)
    fan = t.add("fan", noop, after=[root], split_key="items")
    t.add("join", noop, after=[fan])
    items = [str(i) for i in range(copies)]
    with Engine(f"sqlite:///{tmp_path / 'w.db'}", workers=workers, poll_interval=3600) as engine:
        engine.start()
        for _ in range(3):  # the first task also runs after the pool's one start-up poll
            task = engine.submit(t.build(), lists={"items": items})
            done = engine.wait(task.id, timeout=60)
            assert done.status is TaskStatus.SUCCESSFUL
            assert len(done.subtasks) == copies + 2
