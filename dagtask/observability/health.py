"""Health probes: ``/health`` (this process answers) and ``/ready`` (it can do its work).

**Ready** means the database answers one cheap query (``SELECT version_num FROM
alembic_version``) within :data:`READY_TIMEOUT_SECONDS`, and the revision it holds is
:data:`~dagtask.store.db.SCHEMA_HEAD`, the schema this dagtask needs. Anything else is not
ready, with a body that names what is wrong: the database cannot be reached or did not answer in
time, or it has no dagtask schema, or its schema is older or newer than this dagtask's (``dagtask
db upgrade``).

A probe never raises and never hangs: the query runs on a thread of its own (:class:`Bounded`),
and the probe waits for it up to the timeout. At most one such query is in flight per database:
while a stalled server keeps one waiting, further probes wait on that same query instead of
piling up threads and connections, and answer "did not answer within N s" on time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Generic, TypeVar

import sqlalchemy as sa

from dagtask.store.db import SCHEMA_HEAD, Database, database_problem

READY_TIMEOUT_SECONDS = 2.0
"""How long ``/ready`` waits for the database before it answers 503."""

HEALTHY: dict[str, Any] = {"status": "UP"}
"""``/health``'s body: the process is alive and answers HTTP."""

_T = TypeVar("_T")


class Bounded(Generic[_T]):
    """``fn()`` run on a daemon thread and waited for up to ``timeout`` seconds, one call in
    flight at a time: a call made while the previous one still runs waits on that one."""

    def __init__(self, fn: Callable[[], _T], timeout: float, name: str) -> None:
        self.fn = fn
        self.timeout = timeout
        self.name = name
        self._lock = threading.Lock()
        self._running: Future[_T] | None = None

    def __call__(self) -> _T:
        """``fn()``'s result; its exception; or :class:`TimeoutError` after ``timeout``."""
        with self._lock:
            future = self._running
            if future is None or future.done():
                future = self._running = Future()
                threading.Thread(
                    target=self._run, args=(future,), name=self.name, daemon=True
                ).start()
        try:
            return future.result(self.timeout)
        except FutureTimeout:
            raise TimeoutError(f"no answer within {self.timeout:g} s") from None

    def _run(self, future: Future[_T]) -> None:
        try:
            future.set_result(self.fn())
        except BaseException as exc:  # handed to whoever waits
            future.set_exception(exc)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(getattr(exc, "orig", None) or exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Readiness:
    """The ``/ready`` check of one database."""

    def __init__(self, db: Database, timeout: float = READY_TIMEOUT_SECONDS) -> None:
        self.db = db
        self.timeout = timeout
        self._check = Bounded(self._revision, timeout, "dagtask-ready-check")

    def _revision(self) -> list[str]:
        """The revisions in ``alembic_version``; :class:`_Unreachable` when the database
        cannot be reached (or dropped the connection), any other error when it answered."""
        try:
            with self.db.read_engine.connect() as conn:
                rows = conn.execute(sa.text("SELECT version_num FROM alembic_version"))
                return [str(v) for v in rows.scalars().all()]
        except sa.exc.DBAPIError as exc:
            if exc.connection_invalidated or not _connected(exc):
                raise _Unreachable(exc) from exc
            raise
        except sa.exc.SQLAlchemyError as exc:
            raise _Unreachable(exc) from exc

    def check(self) -> tuple[bool, dict[str, Any]]:
        """(ready, the body to answer with). Never raises; returns within about ``timeout``."""
        started = time.monotonic()
        database: dict[str, Any] = {"status": "UP"}
        schema: dict[str, Any] = {"status": "UNKNOWN", "expected": SCHEMA_HEAD}
        try:
            revisions = self._check()
        except TimeoutError as exc:
            database = {"status": "DOWN", "error": f"the database did not answer: {exc}"}
        except _Unreachable as exc:
            database = {
                "status": "DOWN",
                "error": database_problem(self.db.url, exc.cause),
            }
        except Exception as exc:
            # Connected, but the revision table cannot be read: no dagtask schema here.
            schema = {
                "status": "DOWN",
                "expected": SCHEMA_HEAD,
                "error": "the database has no dagtask schema (its alembic_version table cannot "
                f"be read: {_one_line(exc)[:300]}); create it with `dagtask db upgrade`",
            }
        else:
            schema = _schema_state(revisions)
        ready = database["status"] == "UP" and schema["status"] == "UP"
        body = {
            "status": "UP" if ready else "DOWN",
            "checks": {"database": database, "schema": schema},
            "duration_ms": int((time.monotonic() - started) * 1000),
        }
        return ready, body


def _connected(exc: sa.exc.DBAPIError) -> bool:
    """Whether ``exc`` came from a statement the server answered (not from connecting)."""
    return exc.statement is not None and "alembic_version" in exc.statement


class _Unreachable(Exception):
    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _schema_state(revisions: list[str]) -> dict[str, Any]:
    current = revisions[0] if len(revisions) == 1 else None
    state: dict[str, Any] = {"status": "UP", "revision": current, "expected": SCHEMA_HEAD}
    if current == SCHEMA_HEAD:
        return state
    state["status"] = "DOWN"
    if not revisions:
        state["error"] = "the database has no schema revision; run `dagtask db upgrade`"
    elif current is None:
        state["error"] = f"the database has several schema revisions ({', '.join(revisions)})"
    elif current < SCHEMA_HEAD:
        state["error"] = (
            f"the schema is at revision {current}, this dagtask needs {SCHEMA_HEAD}; "
            "run `dagtask db upgrade`"
        )
    else:
        state["error"] = (
            f"the schema is at revision {current}, newer than this dagtask's {SCHEMA_HEAD} "
            "(written by a newer dagtask); upgrade dagtask"
        )
    return state
