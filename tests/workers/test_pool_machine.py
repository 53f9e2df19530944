"""A hypothesis state machine over a real worker pool (not only the store): random small DAGs
whose handlers succeed, fail, raise SystemExit, hang until their timeout or run slowly; operator
cancels; and database faults (failed and reply-losing claims and finishes, outages, stalls, log
flushes that fail). On SQLite, PostgreSQL and MariaDB.

After every step: no attempt started twice, no attempt ended twice in the history, no subtask
started more often than its retries allow. At the end of each run, once the faults stop: every
task ends, nothing is left RUNNING, every started attempt has exactly one ending event, the pool
holds nothing, and every timeout fired within its bound.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from dagtask import Engine, TemplateBuilder
from dagtask.errors import OperationNotAllowedError
from dagtask.states import SubtaskStatus, TaskStatus
from tests import handlers
from tests.faults import Faults
from tests.hypo import examples, steps

MODES = ["ok", "ok", "fail", "exit", "hang", "slow"]
TIMEOUT = 1
TIMEOUT_SLACK = 0.75
"""How late a timeout may fire (thread scheduling on a loaded 2-core machine)."""
FAULTS = [
    "fail_claim",
    "lose_claim",
    "lose_finish",
    "fail_finish",
    "outage",
    "stall",
    "fail_flush",
]
ENDING = {"SUCCESSFUL", "FAILED", "READY", "PENDING"}


def _is_claim(sql: str) -> bool:
    text = sql.lower()
    return text.startswith("update dagtask_subtask set status=") and "executor=" in text


def _is_finish(sql: str) -> bool:
    text = sql.lower()
    return text.startswith("update dagtask_subtask set operation=") and "finish_time" in text


class PoolMachine(RuleBasedStateMachine):
    url = ""

    def __init__(self) -> None:
        super().__init__()
        handlers.SCRIPTED.clear()
        handlers.SCRIPTED_TOKEN.clear()
        self.engine = Engine(self.url, workers=3, poll_interval=0.02)
        self.faults = Faults(self.engine.database)
        self.engine.start()
        self.tasks: list[int] = []
        self.retries: dict[int, int] = {}
        self.modes: dict[int, str] = {}
        self.serial = 0

    # ---- rules --------------------------------------------------------------------------

    @rule(
        shape=st.sampled_from(["single", "chain", "fan"]),
        modes=st.lists(st.sampled_from(MODES), min_size=1, max_size=3),
        retry=st.integers(0, 1),
    )
    def submit(self, shape: str, modes: list[str], retry: int) -> None:
        self.serial += 1
        t = TemplateBuilder(f"machine {self.serial}", concurrency=3)
        names: list[str] = []
        for n, mode in enumerate(modes):
            after = [names[-1]] if shape == "chain" and names else []
            if shape == "fan" and n == len(modes) - 1 and names:
                after = list(names)
            timeout = TIMEOUT if mode == "hang" else 0
            names.append(
                t.add(
                    f"n{n}",
                    "tests.handlers.scripted",
                    after=after,
                    timeout=timeout,
                    retry_count=retry,
                )
            )
        task = self.engine.submit(t.build(), args={f"n{n}": m for n, m in enumerate(modes)})
        self.tasks.append(task.id)
        for sub, mode in zip(sorted(task.subtasks, key=lambda s: s.name), modes, strict=True):
            self.retries[sub.id] = retry
            self.modes[sub.id] = mode

    @rule(kind=st.sampled_from(FAULTS))
    def fault(self, kind: str) -> None:
        faults = self.faults
        faults.clear()
        if kind == "fail_claim":
            faults.fail(_is_claim)
        elif kind == "lose_claim":
            faults.lose_commit_reply(_is_claim)
        elif kind == "lose_finish":
            faults.lose_commit_reply(_is_finish)
        elif kind == "fail_finish":
            faults.fail(_is_finish, when="after")
        elif kind == "fail_flush":
            faults.fail("INSERT INTO dagtask_subtask_log", count=2)
        elif kind == "stall":
            rule = faults.stall("UPDATE dagtask_subtask", seconds=0.2, count=3)
            time.sleep(0.4)
            rule.remove()
        else:
            with faults.outage():
                time.sleep(0.3)

    @rule(data=st.data())
    def cancel_something(self, data: st.DataObject) -> None:
        if not self.tasks:
            return
        task_id = data.draw(st.sampled_from(self.tasks))
        running = [s for s in self._get(task_id).subtasks if s.status is SubtaskStatus.RUNNING]
        if not running:
            return
        sub = data.draw(st.sampled_from(running))
        # It may have ended meanwhile: then the refusal is the right answer.
        with contextlib.suppress(OperationNotAllowedError):
            self.engine.cancel_subtask(task_id, sub.id)

    @rule()
    def let_it_run(self) -> None:
        time.sleep(0.2)

    # ---- invariants -------------------------------------------------------------------------

    def _get(self, task_id: int):  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + 30
        while True:  # a read may meet a fault left armed for the workers: read again
            try:
                return self.engine.get(task_id)
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _events(self, task_id: int):  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + 30
        while True:
            try:
                return self.engine.store.events(task_id)
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _ends(self, task_id: int) -> Counter[tuple[int | None, int | None]]:
        """(subtask id, runTime of the attempt) -> how many events end that attempt.

        The attempt an ending event closes is the one its subtask's last claim started: the
        event's own runTime is the subtask's new one, which for a LOST attempt that runs again
        is already the next attempt's. An ending with no claim open before it counts against
        ``(subtask id, None)``."""
        ends: Counter[tuple[int | None, int | None]] = Counter()
        open_attempt: dict[int, int | None] = {}
        for e in self._events(task_id):
            if e.subtask_id is None:
                continue
            if e.old_status == "READY" and e.new_status == "RUNNING":
                open_attempt[e.subtask_id] = e.run_time
            elif e.old_status in ("RUNNING", "CANCELING") and e.new_status in ENDING:
                ends[(e.subtask_id, open_attempt.pop(e.subtask_id, None))] += 1
        return ends

    @invariant()
    def no_attempt_runs_twice(self) -> None:
        twice = {k: v for k, v in handlers.SCRIPTED.items() if len(v) > 1}
        assert not twice, f"attempts whose handler started twice: {twice}"
        per_subtask = Counter(sid for sid, _rt in handlers.SCRIPTED)
        over = {s: n for s, n in per_subtask.items() if n > 1 + self.retries.get(s, 0)}
        assert not over, f"subtasks run more often than their retries allow: {over}"

    @invariant()
    def no_attempt_ends_twice(self) -> None:
        for task_id in self.tasks:
            ends = self._ends(task_id)
            twice = {k: n for k, n in ends.items() if n > 1}
            assert not twice, f"task {task_id}: attempts recorded twice: {twice}"
            unstarted = [sid for sid, rt in ends if rt is None]
            assert not unstarted, f"task {task_id}: ends of attempts never claimed: {unstarted}"

    def teardown(self) -> None:
        try:
            self.faults.clear()
            for task_id in self.tasks:
                done = self.engine.wait(task_id, timeout=90)
                assert done.status is not TaskStatus.RUNNING
                held = [s.name for s in done.subtasks if s.status.value in ("RUNNING", "CANCELING")]
                assert held == [], f"task {task_id} left {held} running"
                ends = self._ends(task_id)
                for sub in done.subtasks:
                    for (sid, rt), starts in handlers.SCRIPTED.items():
                        if sid == sub.id:
                            assert ends[(sid, rt)] == 1, (sub.name, rt, starts, ends)
            for (sid, rt), starts in handlers.SCRIPTED.items():
                seen = handlers.SCRIPTED_TOKEN.get((sid, rt))
                if self.modes.get(sid) == "hang" and seen is not None:
                    late = seen - starts[0] - TIMEOUT
                    assert late < TIMEOUT_SLACK, f"a timeout fired {late:.2f} s late"
            pool = self.engine._pool
            assert pool is not None
            deadline = time.monotonic() + 10
            while pool.live or pool.fenced:
                assert time.monotonic() < deadline, (pool.live, pool.fenced)
                time.sleep(0.05)
        finally:
            self.faults.close()
            self.engine.close()


@pytest.mark.slow
def test_the_worker_pool_holds_under_faults(db_url: str) -> None:
    PoolMachine.url = db_url
    run_state_machine_as_test(
        PoolMachine,
        settings=settings(max_examples=examples(4), stateful_step_count=steps(8), deadline=None),
    )
