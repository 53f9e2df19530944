"""OpenTelemetry spans for tasks and attempts (the ``tracing`` extra: ``opentelemetry-api``).

- **``dagtask.task <template>``** (kind PRODUCER): opened around a submit, as a child of the
  caller's current span: an instrumented application's span, or, in ``dagtask serve``, the REST
  request's trace (its W3C ``traceparent`` header, else OCP's ``X-Trace-Id`` when it is a trace
  id of 32 or 16 hex digits). The span ends when the task is stored; its W3C traceparent is stored
  with the task (``dagtask_task.trace_parent``), so any worker process can continue the trace.
- **``dagtask.attempt <subtask>``** (kind CONSUMER): one per attempt, a child of its task's span,
  from the moment a worker took the subtask to the attempt's end. It is the current span while
  the handler runs, so spans the handler makes (HTTP clients, SQL, ...) nest under it. Its
  attributes name the task, subtask, attempt (runTime) and operation; a failed attempt has
  status ERROR with its message.

dagtask never sets a tracer provider: it asks the global one (``opentelemetry.trace``) for a
tracer, so an application's provider is used as it is and is never replaced. Without the API
installed, or with no provider set (the API's default does not record), nothing is recorded, no
traceparent is stored, and the cost is a function call per submit and attempt.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dagtask.planner import AttemptResult
    from dagtask.store.attempts import Claim

_log = logging.getLogger("dagtask.worker")

TRACER = "dagtask"
TRACEPARENT = "traceparent"
_HEX_TRACE_ID = re.compile(r"^(?:[0-9a-f]{32}|[0-9a-f]{16})$")


trace: Any = None
otel_context: Any = None
TraceContextTextMapPropagator: Any = None
_loaded = False


_load_lock = threading.Lock()


def _load() -> bool:
    """Import the OpenTelemetry API on first use (``import dagtask`` stays fast); whether it
    is installed. One thread imports (a worker pool's, as it starts, or the first caller's);
    the others wait for it: two threads importing the same package at once can see it
    half-initialized, which would look like an API that is not installed."""
    global trace, otel_context, TraceContextTextMapPropagator, _loaded
    if _loaded:
        return trace is not None
    with _load_lock:
        if not _loaded:
            try:
                from opentelemetry import context as found_context
                from opentelemetry import trace as found_trace
                from opentelemetry.trace.propagation import tracecontext
            except ImportError:  # the tracing extra is not installed
                pass
            else:
                trace, otel_context = found_trace, found_context
                TraceContextTextMapPropagator = tracecontext.TraceContextTextMapPropagator
            _loaded = True
    return trace is not None


def preload() -> None:
    """Import the OpenTelemetry API now (a worker pool does it as it starts, off the caller's
    thread), so that the first submit and the first attempt after start-up do not pay for the
    import: 5-8 ms on this project's 2-core machine."""
    _load()


_cached_tracer: Any = None


def _provided() -> bool:
    """Whether the API is installed and an application has set a tracer provider (until then
    the global one is the API's proxy, which records nothing: skip the span altogether)."""
    if not _load():
        return False
    provider = trace.get_tracer_provider()
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def _tracer() -> Any:
    """dagtask's tracer from the global provider (the API's proxy until an application sets a
    provider, then that provider's: safe to keep)."""
    global _cached_tracer
    if _cached_tracer is None:
        from dagtask import __version__

        _cached_tracer = trace.get_tracer(TRACER, __version__)
    return _cached_tracer


def _traceparent(span: Any) -> str | None:
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def _parent_context(trace_parent: str | None) -> Any:
    """The context whose span is the stored ``trace_parent`` (None: no parent)."""
    if not trace_parent:
        return None
    return TraceContextTextMapPropagator().extract({TRACEPARENT: trace_parent})


@dataclass
class TaskSpan:
    """The span of one submit, for the store: its traceparent, and the task id once known."""

    span: Any = None

    @property
    def trace_parent(self) -> str | None:
        """The W3C traceparent to store with the task (None: nothing records this trace)."""
        if self.span is None:
            return None
        try:
            return _traceparent(self.span)
        except Exception:  # a broken span: the task is stored untraced
            return None

    def stored(self, task_id: int) -> None:
        """The task was stored as ``task_id``."""
        if self.span is not None:
            with contextlib.suppress(Exception):
                self.span.set_attribute("dagtask.task.id", task_id)


@contextlib.contextmanager
def task_span(template: str, creator: str) -> Iterator[TaskSpan]:
    """The ``dagtask.task`` span around a submit (a failed submit ends it with status ERROR)."""
    if not _provided():
        yield TaskSpan()
        return
    attributes = {"dagtask.template": template, "dagtask.task.creator": creator}
    with _opened(
        f"dagtask.task {template}", kind=trace.SpanKind.PRODUCER, attributes=attributes
    ) as span:
        yield TaskSpan(span)


@contextlib.contextmanager
def _opened(name: str, **options: Any) -> Iterator[Any]:
    """A current span from dagtask's tracer, or None when the tracer fails: a broken tracer
    never keeps a task from being stored or an attempt from running. An exception of the block
    goes through (after ending the span with it, as OpenTelemetry does)."""
    try:
        opened = _tracer().start_as_current_span(name, **options)
        span = opened.__enter__()
    except Exception:
        _log.warning("could not open the span %r; going on without it", name, exc_info=True)
        yield None
        return
    try:
        yield span
    except BaseException as exc:
        _close(opened, name, type(exc), exc, exc.__traceback__)
        raise
    _close(opened, name, None, None, None)


def _close(opened: Any, name: str, *exc_info: Any) -> None:
    try:
        opened.__exit__(*exc_info)
    except Exception:
        _log.warning("could not close the span %r", name, exc_info=True)


@contextlib.contextmanager
def attempt_span(claim: Claim, trace_parent: str | None, worker: str) -> Iterator[AttemptSpan]:
    """The ``dagtask.attempt`` span of one attempt, current while it runs (its handler's spans
    nest under it)."""
    if not _provided():
        yield AttemptSpan()
        return
    attributes = {
        "dagtask.task.id": claim.task_id,
        "dagtask.subtask.id": claim.subtask_id,
        "dagtask.subtask.name": claim.name,
        "dagtask.attempt": claim.run_time,
        "dagtask.operation": claim.operation.value,
        "dagtask.handler": claim.class_name,
        "dagtask.worker": worker,
    }
    with _opened(
        f"dagtask.attempt {claim.name}",
        context=_parent_context(trace_parent),
        kind=trace.SpanKind.CONSUMER,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield AttemptSpan(span)


@dataclass
class AttemptSpan:
    """The span of one attempt, to record how it ended."""

    span: Any = None

    def ended(self, result: AttemptResult) -> None:
        """Record the attempt's outcome (status ERROR with the message if it failed)."""
        if self.span is None:
            return
        with contextlib.suppress(Exception):  # the attempt's end is recorded whatever happens
            self.span.set_attribute("dagtask.outcome", "SUCCESSFUL" if result.ok else "FAILED")
            if not result.ok:
                self.span.set_status(trace.Status(trace.StatusCode.ERROR, result.message or ""))


def request_context(headers: Mapping[str, str], trace_id: str | None) -> Any:
    """The context a REST request's work continues: None when a span is already current (an
    instrumented application's server span), else the request's ``traceparent``, else OCP's
    ``X-Trace-Id`` ``trace_id`` when it is a trace id (32 hex digits, or 16 padded with zeros
    as B3 does), under a remote parent made up for it; None when there is none of these."""
    if not _provided() or trace.get_current_span().get_span_context().is_valid:
        return None
    given = headers.get(TRACEPARENT)
    if given:
        found = TraceContextTextMapPropagator().extract({TRACEPARENT: given})
        if trace.get_current_span(found).get_span_context().is_valid:
            return found
    if trace_id and _HEX_TRACE_ID.match(trace_id.lower()):
        parent = trace.SpanContext(
            trace_id=int(trace_id, 16),
            span_id=secrets.randbits(64) or 1,
            is_remote=True,
            trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
        )
        return trace.set_span_in_context(trace.NonRecordingSpan(parent))
    return None


@contextlib.contextmanager
def attached(ctx: Any) -> Iterator[None]:
    """Make ``ctx`` (from :func:`request_context`; None: nothing to do) current in the block."""
    if ctx is None or not _load():
        yield
        return
    token = otel_context.attach(ctx)
    try:
        yield
    finally:
        otel_context.detach(token)
