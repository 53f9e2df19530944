"""Subtask logs in OCP's format (docs/templates.md), and capture of what handlers log.

Each attempt starts with ``############{OPERATION}{ISO timestamp}############``; each line after it
is ``<date time.ms>  <LEVEL> <pid> --- [<thread>] <logger> : <message>``, as in OCP's sample;
status changes of the subtask are logged as ``Set state for subtask: <id>, current state: <OLD>,
new state: <NEW>``, and an attempt's end (a terminal state, or PENDING after a rollback step)
closes with OCP's bare line ``Set state for subtask: <id>, operation:<OP>, state: <S>`` (OCP's
``SubtaskAccessor`` stores that message, without the time prefix, as the attempt's last log
row). The text is buffered per attempt and stored with the attempt's result (and
flushed every second while a handler runs, so a running subtask's log grows).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from datetime import UTC, datetime, tzinfo

from dagtask.clock import aware

HANDLER_LOGGER = "dagtask.handler"
logging.getLogger(HANDLER_LOGGER).setLevel(logging.DEBUG)


_zone: tuple[int, tzinfo | None] = (-1, None)
"""(minute since the epoch, the local zone's fixed offset then): finding the local offset costs
a ``localtime()`` call, and it can change only on a minute boundary (DST, a new TZ)."""


def _local(value: datetime) -> datetime:
    """A stored (naive UTC) or aware datetime in local time."""
    global _zone, _last
    last = _last
    if last is not None and last[0] is value:  # a batch's claims and finishes share one time
        return last[1]
    moment = aware(value)
    minute = int(moment.timestamp()) // 60
    found_minute, zone = _zone
    if minute != found_minute or zone is None:
        zone = moment.astimezone().tzinfo
        _zone = (minute, zone)
    local = moment.astimezone(zone)
    _last = (value, local)
    return local


_last: tuple[datetime, datetime] | None = None
"""The last :func:`_local` (the value given, its local time)."""


def iso_ms(value: datetime) -> str:
    """ISO-8601 in local time with milliseconds and offset, e.g. 2021-09-03T14:27:59.687+08:00."""
    return _local(value).isoformat(timespec="milliseconds")


def separator(operation: str, when: datetime) -> str:
    """The line that opens an attempt's log."""
    return f"############{{{operation}}}{{{iso_ms(when)}}}############\n"


def line(
    message: str,
    level: str = "INFO",
    *,
    logger: str = "dagtask.worker",
    thread: str | None = None,
    when: datetime | None = None,
) -> str:
    """One log line in OCP's layout."""
    t = datetime.now() if when is None else _local(when)  # now: local time, as _local gives
    stamp = (
        f"{t.year:04d}-{t.month:02d}-{t.day:02d} "
        f"{t.hour:02d}:{t.minute:02d}:{t.second:02d}.{t.microsecond // 1000:03d}"
    )
    thread = thread or threading.current_thread().name
    return f"{stamp} {level:>5} {_pid} --- [{thread}] {logger} : {message}\n"


def _forked() -> None:
    global _pid
    _pid = os.getpid()


_pid = os.getpid()
"""This process's id, for :func:`line` (kept up to date across ``fork``)."""
os.register_at_fork(after_in_child=_forked)


def state_line(subtask_id: int, old: str, new: str, *, when: datetime | None = None) -> str:
    """The line logged for a subtask status change."""
    return line(
        f"Set state for subtask: {subtask_id}, current state: {old}, new state: {new}", when=when
    )


def closing_line(subtask_id: int, operation: str, status: str) -> str:
    """OCP's closing line of an attempt: bare, as OCP stores it."""
    return f"Set state for subtask: {subtask_id}, operation:{operation}, state: {status}\n"


def closes_attempt(status: str, operation: str) -> bool:
    """Whether reaching ``status`` under ``operation`` ends an attempt (OCP's terminate states,
    and PENDING after a rollback step)."""
    return status in ("SUCCESSFUL", "FAILED") or (
        status == "PENDING" and operation in ("ROLLBACK", "ROLLBACK_SKIP")
    )


def transition_lines(
    subtask_id: int, old: str, steps: Iterable[tuple[str, str]], *, when: datetime
) -> str:
    """The lines for ``old`` → each ``(status, operation)`` of ``steps`` in turn: a state line
    per change, and the closing line after each change that ends the attempt."""
    text = ""
    for status, operation in steps:
        text += state_line(subtask_id, old, status, when=when)
        if closes_attempt(status, operation):
            text += closing_line(subtask_id, operation, status)
        old = status
    return text


class AttemptLog:
    """The buffered log of one attempt; thread-safe, drained when stored."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._lock = threading.Lock()

    def write(self, text: str) -> None:
        """Append text (one or more whole lines)."""
        with self._lock:
            self._parts.append(text)

    def drain(self) -> str:
        """Everything written since the last drain."""
        with self._lock:
            text = "".join(self._parts)
            self._parts.clear()
        return text

    def unshift(self, text: str) -> None:
        """Put back drained text that could not be stored, before what was written since (so
        the stored log keeps its order)."""
        if text:
            with self._lock:
                self._parts.insert(0, text)


class CaptureHandler(logging.Handler):
    """A logging handler that routes records from attempt threads into their :class:`AttemptLog`.

    Installed once on the root logger; records from threads that are not running an attempt pass
    through untouched.
    """

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self._by_thread: dict[int, AttemptLog] = {}

    def bind(self, log: AttemptLog) -> None:
        """Route this thread's records into ``log``."""
        self._by_thread[threading.get_ident()] = log

    def unbind(self) -> None:
        """Stop routing this thread's records."""
        self._by_thread.pop(threading.get_ident(), None)

    def emit(self, record: logging.LogRecord) -> None:
        """Write the record into the attempt log of the thread that logged it, if any."""
        target = self._by_thread.get(record.thread or 0)
        if target is None:
            # Installing this handler on the root logger switches off Python's last-resort
            # stderr output; keep warnings and errors visible to an application that has not
            # configured logging itself.
            root = logging.getLogger()
            alone = all(h is self for h in root.handlers)
            if alone and record.levelno >= logging.WARNING and logging.lastResort is not None:
                logging.lastResort.handle(record)
            return
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            target.write(
                line(
                    message,
                    level=record.levelname,
                    logger=record.name,
                    thread=record.threadName,
                    when=datetime.fromtimestamp(record.created, UTC).replace(tzinfo=None),
                )
            )
        except Exception:
            self.handleError(record)


_capture: CaptureHandler | None = None
_capture_lock = threading.Lock()


def capture_handler() -> CaptureHandler:
    """The process-wide capture handler, installed on the root logger on first use."""
    global _capture
    with _capture_lock:
        if _capture is None:
            _capture = CaptureHandler()
            logging.getLogger().addHandler(_capture)
        return _capture
