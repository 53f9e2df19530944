"""Hooks around subtasks and after tasks (docs/templates.md, "Hooks"), on a real engine and
SQLite: the order they run in, what their failures change (nothing, unless HookAbort), the
retry rules, submit-time validation, files, stored definitions and digests."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from dagtask import (
    Engine,
    HandlerImportError,
    Hooks,
    TaskTemplate,
    TemplateBuilder,
    TemplateError,
    history,
    load_template,
)
from dagtask.states import SubtaskStatus, TaskStatus
from tests import hooks_for_tests as h
from tests.workers.conftest import wait_for

STEP = "tests.hooks_for_tests.step"
HOOK = "tests.hooks_for_tests."


@pytest.fixture(autouse=True)
def _fresh_ledger() -> Iterator[None]:
    h.LEDGER.clear()
    yield
    h.LEDGER.clear()


@pytest.fixture
def engine(sqlite_url: str) -> Iterator[Engine]:
    with Engine(sqlite_url, workers=2, poll_interval=0.05) as running:
        running.start()
        yield running


def _template(
    name: str,
    *,
    before: tuple[str, ...] = (),
    after: tuple[str, ...] = (),
    task: tuple[str, ...] = (),
    subtasks: tuple[str, ...] = ("a",),
    **spec: Any,
) -> TaskTemplate:
    """A chain of ``subtasks`` run by :func:`tests.hooks_for_tests.step`, with these hooks."""
    hooks = Hooks(
        before_subtask=tuple(HOOK + n for n in before),
        after_subtask=tuple(HOOK + n for n in after),
        after_task=tuple(HOOK + n for n in task),
    )
    t = TemplateBuilder(name, hooks=hooks)
    for sub in subtasks:
        t.add(sub, STEP, **spec)
    t.chain(*subtasks)
    return t.build()


def _run(engine: Engine, template: TaskTemplate, **args: str) -> Any:
    task = engine.submit(template, args=args)
    return engine.wait(task.id, timeout=60)


def _ended(task_id: int, count: int = 1) -> None:
    wait_for(lambda: len(h.calls(task_id, "task")) >= count, "the after-task hooks", 30)


def test_hooks_run_around_each_attempt_in_order_then_after_the_task(engine: Engine) -> None:
    tpl = _template(
        "ordered",
        before=("note_before",),
        after=("note_after",),
        task=("note_task",),
        subtasks=("a", "b"),
    )
    done = _run(engine, tpl)
    assert done.status is TaskStatus.SUCCESSFUL
    _ended(done.id)
    ids = {s.name: s.id for s in done.subtasks}
    assert h.LEDGER[done.id] == [
        ("before", "a", 1, ids["a"]),
        ("handler", "a", 1, ids["a"]),
        ("after", "a", 1, True, "", "a"),
        ("before", "b", 1, ids["b"]),
        ("handler", "b", 1, ids["b"]),
        ("after", "b", 1, True, "", "b"),
        ("task", TaskStatus.SUCCESSFUL),
    ]


def test_a_failing_hook_is_logged_in_the_subtask_log_and_changes_nothing(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="dagtask.hooks")
    tpl = _template(
        "buggy hooks",
        before=("boom_before", "note_before"),
        after=("boom_after", "note_after"),
        task=("boom_task", "note_task"),
    )
    done = _run(engine, tpl)
    assert done.status is TaskStatus.SUCCESSFUL
    _ended(done.id)
    [sub] = done.subtasks
    assert sub.status is SubtaskStatus.SUCCESSFUL
    assert sub.context.string_map["ran"] == "a"
    log = engine.logs(done.id, sub.id)
    warnings = [line for line in log.splitlines() if " WARNING " in line]
    assert any(
        f"before-subtask hook {HOOK}boom_before failed: RuntimeError: before hook bug" in line
        for line in warnings
    ), log
    assert any(
        f"after-subtask hook {HOOK}boom_after failed: ValueError: after hook bug" in line
        for line in warnings
    ), log
    # The hooks after the failing ones still ran, and so did the handler.
    assert [e[0] for e in h.LEDGER[done.id]] == ["before", "handler", "after", "task"]
    wait_for(
        lambda: any("after-task hook" in r.getMessage() for r in caplog.records),
        "the after-task hook's failure to be logged",
        30,
    )
    [record] = [r for r in caplog.records if "after-task hook" in r.getMessage()]
    assert record.name == "dagtask.hooks" and record.levelno == logging.WARNING
    assert f"after-task hook {HOOK}boom_task of task {done.id} (SUCCESSFUL) failed" in (
        record.getMessage()
    )


def test_hook_abort_before_fails_the_attempt_without_running_the_handler(engine: Engine) -> None:
    tpl = _template("refused", before=("refuse_before",), after=("note_after",))
    done = _run(engine, tpl)
    assert done.status is TaskStatus.FAILED
    [sub] = done.subtasks
    assert sub.status is SubtaskStatus.FAILED
    assert h.calls(done.id, "handler") == []
    message = f"before-subtask hook {HOOK}refuse_before refused: maintenance window"
    # The after-subtask hooks still see how the attempt ended.
    assert h.calls(done.id, "after") == [("after", "a", 1, False, message, None)]
    assert f"Subtask {sub.id} failed: {message}" in engine.logs(done.id, sub.id)


def test_hook_abort_after_fails_an_attempt_that_succeeded(engine: Engine) -> None:
    tpl = _template("rejected", after=("refuse_after", "note_after"))
    done = _run(engine, tpl)
    assert done.status is TaskStatus.FAILED
    [sub] = done.subtasks
    assert sub.status is SubtaskStatus.FAILED
    assert len(h.calls(done.id, "handler")) == 1
    message = f"after-subtask hook {HOOK}refuse_after refused: output rejected"
    # The next after-subtask hook sees the attempt as failed.
    assert h.calls(done.id, "after") == [("after", "a", 1, False, message, None)]
    assert f"Subtask {sub.id} failed: {message}" in engine.logs(done.id, sub.id)


def test_an_attempt_a_hook_failed_is_retried_by_the_subtasks_retry_count(engine: Engine) -> None:
    before = _run(engine, _template("retried before", before=("refuse_before",), retry_count=1))
    assert before.status is TaskStatus.SUCCESSFUL
    assert before.subtasks[0].run_time == 2
    assert [e[2] for e in h.calls(before.id, "handler")] == [2]

    after = _run(engine, _template("retried after", after=("refuse_after",), retry_count=1))
    assert after.status is TaskStatus.SUCCESSFUL
    assert after.subtasks[0].run_time == 2
    assert [e[2] for e in h.calls(after.id, "handler")] == [1, 2]

    spent = _run(
        engine,
        _template("retries spent", before=("refuse_before",), retry_count=1),
        refuse_runs="2",
    )
    assert spent.status is TaskStatus.FAILED
    assert spent.subtasks[0].run_time == 2
    assert h.calls(spent.id, "handler") == []


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("tests.hooks_for_tests.no_such_hook", "has no attribute 'no_such_hook'"),
        ("no_such_package.hooks.audit", "does not import (No module named 'no_such_package')"),
        ("tests.handlers.Undoable", "is a class, not a function"),
        ("audit", "is not a dotted path"),
    ],
)
def test_a_bad_hook_path_is_refused_at_submit_and_nothing_is_stored(
    engine: Engine, path: str, fragment: str
) -> None:
    tpl = TaskTemplate.parse(
        {
            "name": "typo",
            "hooks": {"after_task": [path]},
            "subtasks": [{"name": "a", "handler": STEP}],
        }
    )
    with pytest.raises(HandlerImportError) as info:
        engine.submit(tpl)
    message = str(info.value)
    assert message.startswith(f"template 'typo', hooks.after_task: hook {path!r}"), message
    assert fragment in message and "\n" not in message
    assert isinstance(info.value, TemplateError)
    # Neither the task nor its template was stored (the engine's own tasks may come and go).
    assert engine.list(name="typo").total_elements == 0
    assert "typo" not in [name for name, _, _ in engine.store.stored_templates()]


def test_a_template_file_takes_hooks(engine: Engine, tmp_path: Path) -> None:
    file = tmp_path / "hooked.yaml"
    file.write_text(
        "name: Hooked from a file\n"
        "hooks:\n"
        f"  before_subtask: [{HOOK}note_before]\n"
        f"  after_subtask: {HOOK}note_after\n"
        f"  after_task: [{HOOK}note_task]\n"
        "subtasks:\n"
        f"  - name: a\n    handler: {STEP}\n"
    )
    tpl = load_template(file)
    assert tpl.hooks.after_subtask == (f"{HOOK}note_after",)
    done = _run(engine, tpl)
    assert done.status is TaskStatus.SUCCESSFUL
    _ended(done.id)
    assert [e[0] for e in h.LEDGER[done.id]] == ["before", "handler", "after", "task"]

    file.write_text(
        f"name: t\nhooks:\n  befor_subtask: [{HOOK}note_before]\n"
        f"subtasks:\n  - name: a\n    handler: {STEP}\n"
    )
    with pytest.raises(TemplateError, match=r"hooks: unknown key 'befor_subtask'; did you mean"):
        load_template(file)


DIGEST_BEFORE_HOOKS = "4e15fba10a0b5e21f5429cd8ff120c9a101cd503b4ee2170a5c11556cb346be2"
"""The digest of :func:`_plain` computed by dagtask before templates had hooks."""


def _plain() -> TaskTemplate:
    t = TemplateBuilder("hooks-digest")
    a = t.add("a", "tests.handlers.record", timeout=5)
    t.add("b", "tests.handlers.record", after=[a])
    return t.build()


def test_a_template_without_hooks_keeps_its_definition_and_digest() -> None:
    plain = _plain()
    assert "hooks" not in plain.definition()
    assert plain.digest() == DIGEST_BEFORE_HOOKS
    hooked = plain.model_copy(update={"hooks": Hooks(after_task=(f"{HOOK}note_task",))})
    assert hooked.definition()["hooks"]["after_task"] == [f"{HOOK}note_task"]
    assert hooked.digest() != plain.digest()
    again = TaskTemplate.from_definition(hooked.definition())
    assert again.hooks == hooked.hooks and again.digest() == hooked.digest()


def test_hooks_survive_the_stored_template_and_an_export_and_import(
    engine: Engine, tmp_path: Path
) -> None:
    tpl = _template("kept", before=("note_before",), task=("note_task",))
    done = _run(engine, tpl)
    stored = history.stored_template(engine, "kept")
    assert stored.hooks == tpl.hooks and stored.digest() == tpl.digest()
    engine.export(done.id, tmp_path / "task.jsonl")
    with Engine(f"sqlite:///{tmp_path}/other.db", workers=0) as other:
        other.import_files([tmp_path / "task.jsonl"])
        imported = history.stored_template(other, "kept")
        assert imported.hooks == tpl.hooks and imported.digest() == tpl.digest()


def test_after_task_hooks_run_once_per_end_of_a_retried_task(sqlite_url: str) -> None:
    t = TemplateBuilder("ends twice", hooks=Hooks(after_task=(f"{HOOK}note_task",)))
    t.add("a", "tests.handlers.flaky")
    with Engine(sqlite_url, workers=2, poll_interval=0.05) as engine:
        engine.start()
        task = engine.submit(t.build(), args={"fail_times": "1"})
        assert engine.wait(task.id, timeout=60).status is TaskStatus.FAILED
        _ended(task.id)
        engine.retry(task.id)
        assert engine.wait(task.id, timeout=60).status is TaskStatus.SUCCESSFUL
        _ended(task.id, 2)
    # Stopped: every queued after-task hook has run.
    assert h.calls(task.id, "task") == [
        ("task", TaskStatus.FAILED),
        ("task", TaskStatus.SUCCESSFUL),
    ]


def test_a_hanging_hook_is_stopped_by_the_subtasks_timeout(engine: Engine) -> None:
    started = time.monotonic()
    done = _run(engine, _template("hangs", before=("hang_before",), timeout=1))
    assert time.monotonic() - started < 30
    assert done.status is TaskStatus.FAILED
    [sub] = done.subtasks
    assert h.calls(done.id, "before")  # the hook ran, and was stopped
    assert h.calls(done.id, "handler") == []
    events = [e for e in engine.events(done.id) if e.subtask_id == sub.id]
    assert any("timed out after 1 s" in (e.message or "") for e in events), events


def test_a_skipped_subtask_runs_no_hooks(engine: Engine) -> None:
    done = _run(engine, _template("skipped", before=("note_before", "refuse_before")))
    assert done.status is TaskStatus.FAILED
    [sub] = done.subtasks
    engine.skip_subtask(done.id, sub.id)
    assert engine.wait(done.id, timeout=60).status is TaskStatus.SUCCESSFUL
    assert len(h.calls(done.id, "before")) == 1  # the refused attempt's; the skip ran nothing
    assert h.calls(done.id, "handler") == []


def test_the_submitting_engine_reads_no_hooks_back(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[Any] = []
    real = engine.store.task_run_facts

    def counted(task_ids: Any) -> Any:
        reads.append(task_ids)
        return real(task_ids)

    monkeypatch.setattr(engine.store, "task_run_facts", counted)
    done = _run(engine, _template("known", before=("note_before",), after=("note_after",)))
    assert done.status is TaskStatus.SUCCESSFUL
    assert [e[0] for e in h.LEDGER[done.id]] == ["before", "handler", "after"]
    assert reads == []  # its pool was told the hooks by the submit itself


def test_a_failed_read_of_the_hooks_hands_the_claim_back(
    engine: Engine, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = engine.store.task_run_facts
    failures = []

    def flaky_read(task_ids: Any) -> Any:
        if not failures:
            failures.append(task_ids)
            raise sa.exc.OperationalError("SELECT", {}, Exception("database is locked"))
        return real(task_ids)

    monkeypatch.setattr(engine.store, "task_run_facts", flaky_read)
    # Submitted by another engine (another process, say): the workers must read the hooks.
    with Engine(sqlite_url, workers=0) as submitter:
        task_id = submitter.submit_id(_template("read again", before=("note_before",)))
    engine.wait_status(task_id, 60)
    done = engine.get(task_id)
    assert failures, "the read never failed"
    assert done.status is TaskStatus.SUCCESSFUL
    # Handed back unstarted (no hook, no handler ran), then run once.
    assert [e[0] for e in h.LEDGER[done.id]] == ["before", "handler"]
