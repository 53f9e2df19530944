"""The fields of JSON log lines: an attempt's ids and trace id, a request's trace id."""

from __future__ import annotations

import json
import logging
from datetime import datetime

from dagtask.cli.output import JsonLines
from dagtask.context import TaskContext
from dagtask.observability import logfields
from dagtask.states import Operation
from dagtask.store.sql import Claim


def _claim(subtask_id: int = 12, run_time: int = 2) -> Claim:
    return Claim(
        subtask_id=subtask_id,
        task_id=7,
        name="step",
        class_name="tests.handlers.record",
        operation=Operation.RETRY,
        run_time=run_time,
        timeout=0,
        retry_count=0,
        parallel=False,
        parallel_idx=-1,
        start_time=datetime(2026, 1, 1),
        context=TaskContext(),
    )


def _line(logger: logging.Logger, *args: object, **kwargs: object) -> dict[str, object]:
    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append  # type: ignore[method-assign]
    handler.addFilter(logfields.ContextFilter())
    logger.addHandler(handler)
    try:
        logger.warning(*args, **kwargs)  # type: ignore[arg-type]
    finally:
        logger.removeHandler(handler)
    return dict(json.loads(JsonLines().format(seen[0])))


def test_a_line_about_an_attempt_carries_its_ids() -> None:
    log = logging.getLogger("tests.observability.attempt")
    line = _line(log, "end subtask %d", 12, extra=logfields.AttemptFields(_claim()))
    assert line["message"] == "end subtask 12"
    assert (line["task_id"], line["subtask_id"], line["attempt"]) == (7, 12, 2)
    assert line["trace_id"] == logfields.attempt_trace_id(12, 2)
    assert len(str(line["trace_id"])) == 16
    # Stable for one attempt, new for the next one.
    assert logfields.attempt_trace_id(12, 2) == logfields.attempt_trace_id(12, 2)
    assert logfields.attempt_trace_id(12, 3) != logfields.attempt_trace_id(12, 2)
    assert list(line) == [
        "time",
        "level",
        "logger",
        "message",
        "task_id",
        "subtask_id",
        "attempt",
        "trace_id",
    ]


def test_a_line_about_nothing_in_particular_has_no_ids() -> None:
    line = _line(logging.getLogger("tests.observability.plain"), "worker started")
    assert set(line) == {"time", "level", "logger", "message"}


def test_a_request_trace_id_reaches_the_lines_logged_in_its_context() -> None:
    token = logfields.TRACE_ID.set("req-1")
    try:
        line = _line(logging.getLogger("tests.observability.request"), "answered")
        own = _line(
            logging.getLogger("tests.observability.request"),
            "end",
            extra=logfields.AttemptFields(_claim()),
        )
    finally:
        logfields.TRACE_ID.reset(token)
    assert line["trace_id"] == "req-1"
    assert own["trace_id"] == logfields.attempt_trace_id(12, 2)  # its own wins


def test_fields_cost_nothing_below_the_level() -> None:
    class Exploding(logfields.AttemptFields):
        def __getitem__(self, key: str) -> object:
            raise AssertionError("computed for a record that was not made")

    log = logging.getLogger("tests.observability.quiet")
    log.setLevel(logging.ERROR)
    log.info("start subtask", extra=Exploding(_claim()))
