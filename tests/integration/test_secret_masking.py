"""Secrets in a task's context reach the handler in clear and are masked everywhere they are
shown: REST, CLI, subtask logs, the typed history and exports."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from dagtask import Engine, RunContext, TaskContext, TemplateBuilder, history, views
from dagtask.cli import main
from dagtask.models import TaskInfo
from dagtask.secrets import MASK
from dagtask.states import SubtaskStatus, TaskStatus
from tests.api.support import add_users, serve

PASSWORD = "hunter2-'quoted'\\x"
"""A secret with a quote and a backslash, which a Python repr of the context escapes."""
TOKEN = "tok-5f3a9c1e77"
HERE = "tests.integration.test_secret_masking"
SEEN: list[str] = []


def connect(ctx: RunContext) -> TaskContext:
    """Use the password (the handler gets it in clear), log it, hand a new token on."""
    SEEN.append(ctx.get("db_password"))
    ctx.log.info("connecting as %s with password %s", ctx.get("user"), ctx.get("db_password"))
    return ctx.output(api_token=TOKEN)


def use(ctx: RunContext) -> None:
    """Fail with an error that quotes both secrets."""
    ctx.log.info("calling the API with token %s", ctx.get("api_token"))
    raise RuntimeError(f"login refused for token {ctx.get('api_token')} / {PASSWORD}")


@pytest.fixture
def failed_task(sqlite_url: str) -> Iterator[tuple[Engine, TaskInfo]]:
    template = TemplateBuilder("secret demo")
    template.add("connect", f"{HERE}.connect")
    template.add("use", f"{HERE}.use", after=["connect"])
    SEEN.clear()
    with Engine(sqlite_url, workers=1, poll_interval=0.05) as engine:
        add_users(engine)
        submitted = engine.submit(template.build(), args={"db_password": PASSWORD, "user": "root"})
        done = engine.run_task(submitted.id, timeout=60)
        yield engine, done


def assert_clean(text: str) -> None:
    for secret in (PASSWORD, TOKEN, "hunter2"):
        assert secret not in text
    assert MASK in text


def test_the_handler_gets_the_secret_and_the_python_api_keeps_it(
    failed_task: tuple[Engine, TaskInfo],
) -> None:
    _, task = failed_task
    assert task.status is TaskStatus.FAILED
    assert SEEN == [PASSWORD]
    assert task.context.string_map["db_password"] == PASSWORD  # what a rerun needs
    assert task.subtask("connect").context is not None
    assert task.subtask("connect").context.string_map["api_token"] == TOKEN
    assert task.subtask("use").status is SubtaskStatus.FAILED


def test_rest_shows_the_task_and_logs_masked(failed_task: tuple[Engine, TaskInfo]) -> None:
    engine, task = failed_task
    with serve(engine) as api:
        client = api.client("viewer")
        body = client.get(f"/api/v2/tasks/instances/{task.id}").json()["data"]
        strings = body["context"]["stringMap"]
        assert (strings["db_password"], strings["user"]) == (MASK, "root")
        for sub in task.subtasks:
            log = client.get(f"/api/v2/tasks/instances/{task.id}/subtasks/{sub.id}/log")
            assert log.status_code == 200, log.text
            assert_clean(log.json()["data"]["log"])
        assert (
            "connecting as root with password ******"
            in client.get(
                f"/api/v2/tasks/instances/{task.id}/subtasks/{task.subtask('connect').id}/log"
            ).json()["data"]["log"]
        )
    assert_clean(json.dumps(views.task_json(task)))


def test_the_cli_shows_the_task_logs_and_history_masked(
    failed_task: tuple[Engine, TaskInfo],
    sqlite_url: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    _, task = failed_task
    use_id = str(task.subtask("use").id)
    commands = {
        "show --json": ["show", str(task.id), "--json"],
        "show": ["show", str(task.id)],
        "logs": ["logs", str(task.id), use_id],
        "history": ["history", str(task.id)],
        "history --json": ["history", str(task.id), "--json"],
        "export": ["export", str(task.id)],
    }
    outputs = {}
    for label, args in commands.items():
        capsys.readouterr()
        assert main(["--db", sqlite_url, *args]) == 0, args
        outputs[label] = capsys.readouterr().out
        for secret in (PASSWORD, TOKEN, "hunter2"):
            assert secret not in outputs[label], (label, outputs[label])
    assert f"login refused for token {MASK} / {MASK}" in outputs["logs"]
    assert f"login refused for token {MASK} / {MASK}" in outputs["show"]
    assert MASK in outputs["history --json"]


def test_an_export_carries_no_secret_and_says_where_one_was(
    failed_task: tuple[Engine, TaskInfo], tmp_path: Path
) -> None:
    engine, task = failed_task
    path = tmp_path / "task.jsonl"
    history.export_task(engine, task.id, path)
    text = path.read_text(encoding="utf-8")
    assert_clean(text)
    lines = [json.loads(line) for line in text.splitlines()]
    (task_line,) = [line for line in lines if line["record"] == "task"]
    strings = task_line["context"]["stringMap"]
    assert (strings["db_password"], strings["user"]) == (MASK, "root")
    outputs = [line["output_context"] for line in lines if line["record"] == "subtask"]
    assert any(o and o["stringMap"].get("api_token") == MASK for o in outputs)
    typed = history.events(engine, task.id)
    errors = [e.error for e in typed if getattr(e, "error", None)]
    assert errors == [f"RuntimeError: login refused for token {MASK} / {MASK}"]
