"""The fields a JSON log line carries when it is about a task, a subtask or a request.

A record about an attempt is logged with ``extra=AttemptFields(claim, trace_parent)``:
``task_id``, ``subtask_id``, ``attempt`` (the subtask's runTime) and ``trace_id``. The trace id
is the task's OpenTelemetry trace (32 hex digits of the traceparent stored when a tracer
recorded its submit: :mod:`dagtask.observability.tracing`), so log lines and spans join; for an
untraced task it is :func:`attempt_trace_id`: 16 hex digits computed from the subtask id and the
runTime, so every line about one attempt, from whichever process, carries the same id, and a new
attempt (a retry) gets a new one. :class:`AttemptFields` computes the values only when a record is
actually made, so a log call below the logger's level costs one small object.

In ``dagtask serve`` the request's trace id (the ``X-Trace-Id`` of its answer, as in the
envelope's ``traceId``) is put in :data:`TRACE_ID` by :class:`TraceIdContext` just before the
answer starts, where uvicorn writes its access line, and :class:`ContextFilter` copies it into
the records made then.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dagtask.store.sql import Claim

FIELDS = ("task_id", "subtask_id", "attempt", "trace_id")
"""The record attributes a JSON line carries when they are set, in this order."""
TRACE_HEADER = b"x-trace-id"

TRACE_ID: ContextVar[str | None] = ContextVar("dagtask_trace_id", default=None)
"""The trace id of the HTTP request being answered in this context, once known."""


def attempt_trace_id(subtask_id: int, run_time: int) -> str:
    """The trace id of attempt ``run_time`` of subtask ``subtask_id`` (16 hex digits)."""
    key = f"{subtask_id}:{run_time}".encode()
    return hashlib.blake2b(key, digest_size=8).hexdigest()


class AttemptFields(Mapping[str, Any]):
    """``extra=`` for a record about the attempt of ``claim`` (computed when read)."""

    __slots__ = ("_claim", "_trace_parent")

    def __init__(self, claim: Claim, trace_parent: str | None = None) -> None:
        self._claim = claim
        self._trace_parent = trace_parent

    def __getitem__(self, key: str) -> Any:
        claim = self._claim
        if key == "task_id":
            return claim.task_id
        if key == "subtask_id":
            return claim.subtask_id
        if key == "attempt":
            return claim.run_time
        if key == "trace_id":
            if self._trace_parent:
                return self._trace_parent.split("-")[1]  # 00-<trace id>-<span id>-<flags>
            return attempt_trace_id(claim.subtask_id, claim.run_time)
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(FIELDS)

    def __len__(self) -> int:
        return len(FIELDS)


def task_fields(task_id: int) -> dict[str, Any]:
    """``extra=`` for a record about task ``task_id`` as a whole."""
    return {"task_id": task_id}


class ContextFilter(logging.Filter):
    """Gives a record the request's trace id (:data:`TRACE_ID`) when it has none of its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Add the field; never drops a record."""
        if getattr(record, "trace_id", None) is None:
            trace = TRACE_ID.get()
            if trace is not None:
                record.trace_id = trace
        return True


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


class TraceIdContext:
    """An ASGI wrapper: sets :data:`TRACE_ID` from the answer's ``X-Trace-Id`` header as the
    answer starts (uvicorn logs the access line inside that ``send``)."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the request through the wrapped app."""
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        TRACE_ID.set(None)

        async def send_noting_trace(message: Message) -> None:
            if message.get("type") == "http.response.start":
                for name, value in message.get("headers", ()):
                    if bytes(name).lower() == TRACE_HEADER:
                        TRACE_ID.set(bytes(value).decode("latin-1"))
                        break
            await send(message)

        await self.app(scope, receive, send_noting_trace)
