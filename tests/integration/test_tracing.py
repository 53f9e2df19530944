"""OpenTelemetry: a span per task and per attempt, nested under the caller's trace, through the
application's own tracer provider (never replaced). Spans are caught by the SDK's in-memory
exporter; nothing is mocked."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.trace import SpanKind, StatusCode

from dagtask import Engine, TaskStatus, TemplateBuilder
from dagtask.errors import HostBusyError
from dagtask.observability import tracing
from tests.api.support import add_users, serve


class Catcher(SpanProcessor):
    """Keeps the spans that end while a test has it armed (other tests' spans are dropped)."""

    def __init__(self) -> None:
        self.armed = False
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        if self.armed:
            self.spans.append(span)

    def named(self, prefix: str) -> list[ReadableSpan]:
        return [s for s in self.spans if s.name.startswith(prefix)]


_CATCHER = Catcher()


def _application_provider() -> TracerProvider:
    """The process's provider, as an application would have set it up before using dagtask
    (set once per process: OpenTelemetry refuses to replace a global provider)."""
    found = trace.get_tracer_provider()
    if not isinstance(found, TracerProvider):
        trace.set_tracer_provider(TracerProvider())
        found = trace.get_tracer_provider()
        assert isinstance(found, TracerProvider)
        found.add_span_processor(_CATCHER)
    return found


@pytest.fixture
def caught(monkeypatch: pytest.MonkeyPatch) -> Iterator[Catcher]:
    provider = _application_provider()

    def refuse(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("dagtask must never set a tracer provider")

    monkeypatch.setattr(trace, "set_tracer_provider", refuse)
    _CATCHER.spans.clear()
    _CATCHER.armed = True
    yield _CATCHER
    _CATCHER.armed = False
    _CATCHER.spans.clear()
    assert trace.get_tracer_provider() is provider  # still the application's


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    with Engine(f"sqlite:///{tmp_path}/t.db", workers=3, poll_interval=0.05) as eng:
        eng.start()
        yield eng


def two_steps() -> Any:
    t = TemplateBuilder("traced")
    t.add("first", "tests.handlers.record")
    t.add("second", "tests.handlers.record", after=["first"])
    return t.build()


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def test_the_task_and_its_attempts_nest_under_the_callers_span(
    engine: Engine, caught: Catcher
) -> None:
    tracer = trace.get_tracer("an application")
    with tracer.start_as_current_span("handle a request") as request:
        task = engine.run(two_steps(), args={"fail": "second"}, timeout=30)
    assert task.status is TaskStatus.FAILED
    (task_span,) = caught.named("dagtask.task ")
    assert task_span.name == "dagtask.task traced" and task_span.kind is SpanKind.PRODUCER
    assert parent_of(task_span) == request.get_span_context().span_id
    assert task_span.attributes is not None and task_span.attributes["dagtask.task.id"] == task.id
    trace_id = request.get_span_context().trace_id

    attempts = {s.name: s for s in caught.named("dagtask.attempt ")}
    assert set(attempts) == {"dagtask.attempt first", "dagtask.attempt second"}
    for name, span in attempts.items():
        assert span.kind is SpanKind.CONSUMER
        assert span.context is not None and span.context.trace_id == trace_id
        assert parent_of(span) == task_span.context.span_id  # type: ignore[union-attr]
        attrs = dict(span.attributes or {})
        sub = task.subtask(name.split()[-1])
        assert attrs["dagtask.task.id"] == task.id and attrs["dagtask.subtask.id"] == sub.id
        assert attrs["dagtask.attempt"] == 1 and attrs["dagtask.operation"] == "EXECUTE"
    assert attempts["dagtask.attempt first"].status.status_code is StatusCode.UNSET
    failed = attempts["dagtask.attempt second"]
    assert failed.status.status_code is StatusCode.ERROR
    assert "injected failure in second" in (failed.status.description or "")
    # Each attempt lies within the run: it starts after the task's span and ends in order.
    first, second = attempts["dagtask.attempt first"], attempts["dagtask.attempt second"]
    assert task_span.start_time is not None and first.start_time is not None
    assert task_span.start_time <= first.start_time
    assert first.end_time is not None and second.start_time is not None
    assert first.end_time <= second.start_time


def test_a_retry_continues_the_tasks_trace(engine: Engine, caught: Catcher) -> None:
    task = engine.run(two_steps(), args={"fail": "second"}, timeout=30)
    (task_span,) = caught.named("dagtask.task ")
    engine.retry_subtask(task.id, task.subtask("second").id)
    engine.wait(task.id, timeout=30)
    seconds = [s for s in caught.named("dagtask.attempt second")]
    assert [dict(s.attributes or {})["dagtask.attempt"] for s in seconds] == [1, 2]
    assert all(parent_of(s) == task_span.context.span_id for s in seconds)  # type: ignore[union-attr]


def test_the_rest_requests_trace_is_carried_into_the_task(engine: Engine, caught: Catcher) -> None:
    engine.register_template(two_steps())
    definition = engine.schedules.add("on demand", "traced")
    add_users(engine)
    trace_hex, parent_hex = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    with serve(engine) as api:
        client = api.client("manager")
        answer = client.post(
            f"/api/v2/tasks/definitions/{definition.id}/run",
            headers={"traceparent": f"00-{trace_hex}-{parent_hex}-01"},
        )
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-trace-id"] == trace_hex  # the response names the same trace
        task_id = answer.json()["data"]["taskId"]
        engine.wait(task_id, timeout=30)

        # OCP's X-Trace-Id alone (16 hex digits, padded as B3 does) starts the trace too.
        second = client.post(
            f"/api/v2/tasks/definitions/{definition.id}/run",
            headers={"X-Trace-Id": "a3ce929d0e0e4736"},
        )
        assert second.status_code == 200, second.text
        engine.wait(second.json()["data"]["taskId"], timeout=30)
    by_task = {
        dict(s.attributes or {})["dagtask.task.id"]: s for s in caught.named("dagtask.task ")
    }
    first_span = by_task[task_id]
    # The task's span descends from the request's remote parent (through the framework's own
    # server span, when FastAPI makes one), in the request's trace.
    assert first_span.context is not None and f"{first_span.context.trace_id:032x}" == trace_hex
    assert ancestors(first_span, caught.spans)[-1] == int(parent_hex, 16)
    attempts = [s for s in caught.named("dagtask.attempt ") if parent_of(s) == span_id(first_span)]
    assert len(attempts) == 2

    other = by_task[second.json()["data"]["taskId"]]
    servers = [s for s in caught.spans if s.kind is SpanKind.SERVER and s.context is not None]
    framework = [s for s in servers if s.context.trace_id == other.context.trace_id]  # type: ignore[union-attr]
    if framework:
        # An instrumented framework's server span is current: the task nests under it.
        assert span_id(framework[0]) in ancestors(other, caught.spans)
    else:
        assert f"{other.context.trace_id:032x}" == "0" * 16 + "a3ce929d0e0e4736"  # type: ignore[union-attr]


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def ancestors(span: ReadableSpan, spans: list[ReadableSpan]) -> list[int]:
    """The span ids above ``span``, nearest first, ending with the first one not caught (a
    remote parent)."""
    by_id = {span_id(s): s for s in spans}
    found = []
    parent = parent_of(span)
    while parent is not None:
        found.append(parent)
        above = by_id.get(parent)
        parent = parent_of(above) if above is not None else None
    return found


def test_a_broken_tracer_never_stops_an_attempt(
    engine: Engine, caught: Catcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Broken:
        def start_as_current_span(self, *_args: Any, **_kwargs: Any) -> Any:
            raise RuntimeError("the exporter's queue is gone")

    monkeypatch.setattr(tracing, "_tracer", Broken)
    t = TemplateBuilder("untraced")
    t.add("only", "tests.handlers.record")
    done = engine.run(t.build(), timeout=30)
    assert done.status is TaskStatus.SUCCESSFUL  # the submit's span failed too: still stored
    assert caught.named("dagtask.attempt ") == []


def test_a_refused_submit_ends_its_span_with_the_error(engine: Engine, caught: Catcher) -> None:
    t = TemplateBuilder("on a host", host_arg="host_id")
    t.add("only", "tests.handlers.sleep_with_token")  # holds the host until the engine stops
    engine.register_template(t.build())
    host = engine.hosts.add("h", "127.0.0.1", "/nonexistent-agent-home")
    holder = engine.submit("on a host", args={"host_id": str(host.id), "seconds": "30"})
    with pytest.raises(HostBusyError):
        engine.submit("on a host", args={"host_id": str(host.id)})
    engine.cancel(holder.id)
    spans = caught.named("dagtask.task on a host")
    assert [s.status.status_code for s in spans] == [StatusCode.UNSET, StatusCode.ERROR]
    assert "dagtask.task.id" not in dict(spans[1].attributes or {})
