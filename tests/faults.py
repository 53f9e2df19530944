"""Database faults on demand, for tests: failed statements, lost commit replies, stalls, outages.

A :class:`Faults` attaches to the engines of one :class:`~dagtask.store.db.Database` (``engine``,
``hot_engine`` and ``read_engine``) and injects what a flaky network or server does::

    with Faults(store.db) as faults:
        faults.fail("UPDATE dagtask_subtask")          # the next such statement fails
        faults.lose_commit_reply("UPDATE dagtask_subtask")  # commits, but the caller never hears
        faults.stall("INSERT", seconds=0.5)            # slow statements
        with faults.outage():                          # everything fails until the block ends
            ...

Every injected failure looks like a dropped connection, as the driver reports one: the layer
really closes the DBAPI connection, then raises that driver's ``OperationalError`` (PyMySQL code
2013, psycopg "server closed the connection unexpectedly", sqlite3 "disk I/O error"), so
SQLAlchemy wraps it in :class:`sqlalchemy.exc.OperationalError` with ``connection_invalidated``
set, discards the connection and invalidates the pool, exactly as after a real outage.

What "before" and "after" mean: ``fail(when="before")`` raises before the statement is sent, so
the server never sees it. ``fail(when="after")`` raises once the server ran it; inside a
transaction (every dagtask write) the dropped connection makes the server roll the whole
transaction back, so nothing of it stays. Only in autocommit mode does an "after" statement keep
its effect. For a write that is committed but that the caller believes failed, use
:meth:`Faults.lose_commit_reply`.

A COMMIT is not a statement here (drivers commit through ``connection.commit()``): ``fail`` and
``stall`` never match it and ``calls`` does not list it; an outage fails it (before it reaches
the server, so the transaction rolls back) and ``lose_commit_reply`` acts on it.

:func:`hold_write_lock` takes the database's real write lock from another connection, so a test
can stall writers without any hook.
"""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from dagtask.store.db import Database

Match = str | Callable[[str], bool]

_TAG = "(injected by tests.faults)"


def _matcher(match: Match) -> Callable[[str], bool]:
    if callable(match):
        return match
    needle = match.lower()
    return lambda sql: needle in sql.lower()


class Rule:
    """One injected fault. ``fired`` counts how often it took effect; ``remove()`` ends it."""

    def __init__(
        self,
        faults: Faults,
        kind: Literal["fail", "lose_commit_reply", "stall", "outage"],
        match: Match,
        *,
        count: int | None,
        when: Literal["before", "after"] = "before",
        seconds: float = 0.0,
    ) -> None:
        if count is not None and count < 1:
            raise ValueError(f"count must be at least 1 (or None for no limit), not {count}")
        if when not in ("before", "after"):
            raise ValueError(f"when must be 'before' or 'after', not {when!r}")
        if seconds < 0:
            raise ValueError(f"seconds must not be negative, not {seconds}")
        self.kind = kind
        self.when = when
        self.seconds = seconds
        self.fired = 0
        self._faults = faults
        self._matches = _matcher(match)
        self._left = count
        # Set on removal so that a statement stalled by this rule stops waiting at once.
        self._removed = threading.Event()

    @property
    def active(self) -> bool:
        """Whether the rule can still take effect (not removed, count not used up)."""
        return not self._removed.is_set() and (self._left is None or self._left > 0)

    def remove(self) -> None:
        """Stop this rule (idempotent); statements it is stalling go on at once."""
        self._faults._forget(self)

    def _take(self) -> bool:
        """Use one firing if any is left (caller holds the faults' lock)."""
        if not self.active:
            return False
        self.fired += 1
        if self._left is not None:
            self._left -= 1
        return True

    def __repr__(self) -> str:
        left = "unlimited" if self._left is None else self._left
        return f"<Rule {self.kind} when={self.when} fired={self.fired} left={left}>"


class Outage(Rule):
    """A database outage: every statement, commit and new connection fails until :meth:`end`.

    Also a context manager: the outage ends when the block does.
    """

    def end(self) -> None:
        """Restore service (idempotent)."""
        self.remove()

    def __enter__(self) -> Outage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.end()


class Faults:
    """Inject database faults into one Database's engines (all three), for tests."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.calls: list[str] = []
        """The SQL of every statement seen, in order (also those that were made to fail)."""
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        # Transactions that ran a statement matching a lose_commit_reply rule, keyed by the
        # pool's per-checkout connection proxy (so a mark can never leak to a later checkout).
        self._armed: weakref.WeakKeyDictionary[Any, list[Rule]] = weakref.WeakKeyDictionary()
        self._engines: list[sa.Engine] = []
        for engine in (db.engine, db.hot_engine, db.read_engine):
            if all(engine is not seen for seen in self._engines):
                self._engines.append(engine)
        self._listeners: list[tuple[sa.Engine, str, Callable[..., Any]]] = []
        self._patched: list[tuple[Any, bool, Any]] = []
        self._closed = False
        for engine in self._engines:
            self._attach(engine)

    # -- rules ---------------------------------------------------------------------------

    def fail(
        self,
        match: Match = "",
        *,
        count: int = 1,
        when: Literal["before", "after"] = "before",
    ) -> Rule:
        """The next ``count`` statements whose SQL contains ``match`` (case-insensitive; "" is
        any statement; or a predicate on the SQL) fail as if the connection dropped, ``before``
        they reach the server or ``after`` it ran them (a transaction still rolls back)."""
        return self._add(Rule(self, "fail", match, count=count, when=when))

    def lose_commit_reply(self, match: Match = "", *, count: int = 1) -> Rule:
        """The next ``count`` transactions that ran a statement matching ``match`` commit for
        real, then the caller gets an OperationalError as if the connection dropped before the
        server's answer arrived; the connection is invalidated."""
        return self._add(Rule(self, "lose_commit_reply", match, count=count))

    def stall(self, match: Match = "", *, seconds: float, count: int | None = None) -> Rule:
        """Matching statements wait ``seconds`` before they are sent (``count=None``: every one
        until the rule is removed or cleared, which also ends the waits under way)."""
        return self._add(Rule(self, "stall", match, count=count, seconds=seconds))

    def outage(self) -> Outage:
        """Start an outage now: every statement, commit and new connection fails "before"
        until ``.end()`` (or the end of the ``with`` block)."""
        rule = Outage(self, "outage", "", count=None)
        self._add(rule)
        return rule

    def clear(self) -> None:
        """Remove every rule (the recorded ``calls`` stay)."""
        with self._lock:
            rules, self._rules = self._rules, []
            self._armed.clear()
        for rule in rules:
            rule._removed.set()

    def count(self, match: Match = "") -> int:
        """How many statements seen so far match ``match`` (as in :meth:`fail`)."""
        matches = _matcher(match)
        with self._lock:
            calls = list(self.calls)
        return sum(1 for sql in calls if matches(sql))

    def close(self) -> None:
        """Remove every rule and detach from the engines (idempotent)."""
        self._closed = True
        self.clear()
        for engine, name, fn in reversed(self._listeners):
            sa.event.remove(engine, name, fn)
        self._listeners.clear()
        for dialect, had_own, previous in reversed(self._patched):
            if had_own:
                dialect.do_commit = previous
            else:
                del dialect.do_commit
        self._patched.clear()

    def __enter__(self) -> Faults:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _add(self, rule: Rule) -> Rule:
        if self._closed:
            raise RuntimeError("this Faults is closed; make a new one")
        with self._lock:
            self._rules.append(rule)
        return rule

    def _forget(self, rule: Rule) -> None:
        with self._lock:
            if rule in self._rules:
                self._rules.remove(rule)
        rule._removed.set()

    def _take(self, kind: str, sql: str, when: str = "before") -> Rule | None:
        """The first active rule of ``kind`` that matches ``sql``, its firing used up."""
        with self._lock:
            for rule in self._rules:
                if rule.kind == kind and rule.when == when and rule._matches(sql) and rule._take():
                    return rule
        return None

    def _outage(self) -> Outage | None:
        with self._lock:
            for rule in self._rules:
                if isinstance(rule, Outage) and rule._take():
                    return rule
        return None

    # -- hooks ---------------------------------------------------------------------------

    def _attach(self, engine: sa.Engine) -> None:
        dialect = engine.dialect

        def before_cursor_execute(
            conn: sa.Connection, cursor: Any, sql: str, params: Any, context: Any, many: bool
        ) -> None:
            with self._lock:
                self.calls.append(sql)
                stalls = [
                    r for r in self._rules if r.kind == "stall" and r._matches(sql) and r._take()
                ]
            for rule in stalls:
                rule._removed.wait(rule.seconds)
            if self._outage() or self._take("fail", sql, "before"):
                _drop(conn.connection, cursor)
                raise _disconnect_error(dialect, "statement")

        def after_cursor_execute(
            conn: sa.Connection, cursor: Any, sql: str, params: Any, context: Any, many: bool
        ) -> None:
            if self._take("fail", sql, "after"):
                _drop(conn.connection, cursor)
                raise _disconnect_error(dialect, "statement")
            with self._lock:
                armed = [
                    r
                    for r in self._rules
                    if r.kind == "lose_commit_reply" and r.active and r._matches(sql)
                ]
                if armed:
                    self._armed.setdefault(conn.connection, []).extend(armed)

        def rollback(conn: sa.Connection) -> None:
            # The transaction did not commit: its marks must not hit the next one on this
            # checkout. (An invalidated connection's proxy is gone, and its marks with it.)
            if conn.invalidated or conn.closed:
                return
            with self._lock:
                self._armed.pop(conn.connection, None)

        def handle_error(ctx: sa.engine.ExceptionContext) -> None:
            # The layer's errors are disconnects even where the dialect cannot tell (SQLite;
            # psycopg only trusts a connection it sees broken, which a connect attempt lacks).
            if _TAG in str(ctx.original_exception):
                ctx.is_disconnect = True

        def connect(dbapi_connection: Any, _record: Any) -> None:
            # The pool's "connect" (the connection is made, then refused), not the dialect's
            # "do_connect": a "do_connect" listener that makes the connection itself, as
            # dagtask's has for PyMySQL, skips every one after it, and SQLAlchemy cannot put a
            # dialect listener first.
            if self._outage():
                _drop(dbapi_connection)
                raise _connect_error(dialect)

        real_commit = dialect.do_commit

        def do_commit(dbapi_connection: Any) -> None:
            if self._outage():
                _drop(dbapi_connection)
                raise _disconnect_error(dialect, "commit")
            with self._lock:
                armed = self._armed.pop(dbapi_connection, [])
                lost = next((r for r in armed if r._take()), None)
            real_commit(dbapi_connection)
            if lost is not None:
                _drop(dbapi_connection)
                raise _disconnect_error(dialect, "commit reply")

        for name, fn in (
            ("before_cursor_execute", before_cursor_execute),
            ("after_cursor_execute", after_cursor_execute),
            ("rollback", rollback),
            ("handle_error", handle_error),
            ("connect", connect),
        ):
            sa.event.listen(engine, name, fn)
            self._listeners.append((engine, name, fn))
        self._patched.append(
            (dialect, "do_commit" in vars(dialect), vars(dialect).get("do_commit"))
        )
        dialect.do_commit = do_commit  # type: ignore[method-assign]


def _drop(connection: Any, cursor: Any = None) -> None:
    """Really break the DBAPI connection, as a network failure would: the server ends the
    session (rolling back what it had not committed; like after a real drop, it may take a
    moment to release the row locks) and the driver sees a broken connection."""
    raw = getattr(connection, "dbapi_connection", connection)
    sock = getattr(raw, "_sock", None)
    with contextlib.suppress(Exception):
        if cursor is not None:
            # sqlite3 only closes a connection whose statements are all finalized: until then
            # its transaction, and the write lock, would live on.
            cursor.close()
        if sock is not None:
            # PyMySQL: cut the socket under it; its close() raises once closed, and SQLAlchemy
            # still closes what it invalidates.
            sock.shutdown(socket.SHUT_RDWR)
            return
        if isinstance(raw, sqlite3.Connection):
            raw.rollback()
        raw.close()  # psycopg, sqlite3: idempotent


def _disconnect_error(dialect: sa.Dialect, what: str) -> Exception:
    """The driver's own error for a connection lost during ``what``."""
    dbapi: Any = dialect.loaded_dbapi
    name = dialect.name
    if name in ("mysql", "mariadb"):
        return dbapi.OperationalError(  # type: ignore[no-any-return]
            2013, f"Lost connection to MySQL server during query {_TAG} ({what})"
        )
    if name == "postgresql":
        return dbapi.OperationalError(  # type: ignore[no-any-return]
            f"server closed the connection unexpectedly {_TAG} ({what})"
        )
    return dbapi.OperationalError(f"disk I/O error {_TAG} ({what})")  # type: ignore[no-any-return]


def _connect_error(dialect: sa.Dialect) -> Exception:
    """The driver's own error for a server that refuses connections."""
    dbapi: Any = dialect.loaded_dbapi
    name = dialect.name
    if name in ("mysql", "mariadb"):
        return dbapi.OperationalError(  # type: ignore[no-any-return]
            2003, f"Can't connect to MySQL server (Connection refused) {_TAG}"
        )
    if name == "postgresql":
        return dbapi.OperationalError(  # type: ignore[no-any-return]
            f"connection failed: Connection refused {_TAG}"
        )
    return dbapi.OperationalError(f"unable to open database file {_TAG}")  # type: ignore[no-any-return]


@contextlib.contextmanager
def hold_write_lock(db: Database, *, timeout: float = 10.0) -> Iterator[None]:
    """Hold the database's write lock from another connection while the block runs.

    Writers block (readers go on): SQLite, a second sqlite3 connection in ``BEGIN IMMEDIATE``
    (a blocked writer fails with "database is locked" after dagtask's 30 s busy timeout);
    PostgreSQL, ``LOCK TABLE ... IN EXCLUSIVE MODE`` on every dagtask table; MariaDB/MySQL,
    ``LOCK TABLES ... READ`` on every dagtask table. ``timeout``: how long to wait for the lock
    itself. The lock is released when the block ends, also on an exception.
    """
    url = sa.make_url(db.url)
    if db.is_sqlite:
        raw = sqlite3.connect(url.database or "", timeout=timeout, isolation_level=None)
        try:
            raw.execute("BEGIN IMMEDIATE")
            yield
        finally:
            raw.close()  # rolls the empty transaction back
        return
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            tables = [t for t in sa.inspect(conn).get_table_names() if t.startswith("dagtask_")]
            if not tables:
                raise RuntimeError(f"no dagtask tables in {db.url}: open the database first")
            quote = engine.dialect.identifier_preparer.quote
            if db.dialect == "postgresql":
                conn.exec_driver_sql(f"SET lock_timeout = {int(timeout * 1000)}")
                names = ", ".join(quote(t) for t in tables)
                conn.exec_driver_sql(f"LOCK TABLE {names} IN EXCLUSIVE MODE")
                try:
                    yield
                finally:
                    conn.rollback()
            else:
                conn.exec_driver_sql(f"SET SESSION lock_wait_timeout = {max(1, int(timeout))}")
                conn.exec_driver_sql("LOCK TABLES " + ", ".join(f"{quote(t)} READ" for t in tables))
                try:
                    yield
                finally:
                    conn.exec_driver_sql("UNLOCK TABLES")
                    conn.rollback()
    finally:
        engine.dispose()
