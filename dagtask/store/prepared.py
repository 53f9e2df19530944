"""The workers' hot path on the driver: statements compiled once, run on the DBAPI cursor.

``conn.execute(core_statement, params)`` pays, on every call, for a cache-key walk over the
whole statement, a compiled-cache lookup, bind processing and typed result metadata; on SQLite
that is several times what the statement itself costs. :func:`execute` compiles a Core
statement once per dialect and parameter set and then runs its SQL string directly on the
connection's DBAPI cursor, inside the caller's SQLAlchemy transaction (which still begins,
commits and rolls back as usual).

**Observed connections keep SQLAlchemy's path.** When anything listens to the engine's
statements (``before_cursor_execute``, ``after_cursor_execute`` or ``handle_error``: a tracer,
an SQL logger, the tests' fault injection), the same SQL string goes through
``Connection.exec_driver_sql`` instead, so every listener sees every statement, exactly as with
``conn.execute``. A listener that only counts can say so with :func:`observe_statements`: the
driver path calls it itself and stays fast (the benchmarks count statements this way).

**Errors look the same on both paths.** A driver error is wrapped as SQLAlchemy wraps it
(:meth:`sqlalchemy.exc.DBAPIError.instance`, so ``OperationalError``, ``IntegrityError``... with
``.orig``); when the dialect calls it a disconnect, the connection is invalidated and the error
has ``connection_invalidated`` set, and the caller's transaction then ends without touching the
dead connection. Anything else raised mid-statement (``KeyboardInterrupt``) invalidates the
connection too, since its state is unknown.

What this path cannot do, it does not do silently wrong. A statement goes through
``conn.execute`` when it needs what only the Core path gives:

* an expanding ``IN`` list of more than :data:`MAX_EXPANDED` values (a shorter one is padded to
  the next power of two by repeating its last value, which changes nothing an ``IN`` matches,
  so a statement is compiled once per size class rather than once per length);
* a returned column whose type converts what the driver gives (a ``DateTime`` or ``Boolean`` on
  SQLite, a ``JSON`` column): hot statements select such columns through ``type_coerce`` (see
  ``statements._as_int`` / ``_as_text``), and their readers convert.

**Batches of rows on PostgreSQL.** An executemany of an INSERT goes out as multi-row INSERTs
(:class:`_MultiRow`) rather than psycopg's one statement per row.

Parameters go through their types' bind processors (a ``DateTime`` becomes SQLite's string, a
JSON value its text), so what is stored is byte for byte what ``conn.execute`` stores.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import threading
from collections import namedtuple
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

Params = Mapping[str, Any]
Observer = Callable[[sa.Connection, Any, str, Any, Any, bool], None]


@dataclass(frozen=True)
class _Compiled:
    sql: str
    names: tuple[str, ...]
    """Bind names in the order the SQL wants them (positional drivers), or every name (named)."""
    positional: bool
    defaults: dict[str, Any]
    processors: dict[str, Callable[[Any], Any]]
    expanding: tuple[str, ...] = ()
    """Names of ``IN`` lists, bound element by element as ``name_1``, ``name_2``..."""
    multirow: _MultiRow | None = None
    """This INSERT's multi-row form, for an executemany (PostgreSQL; :class:`_MultiRow`)."""


@dataclass(frozen=True)
class _MultiRow:
    """An executemany of an INSERT as multi-row ``INSERT ... VALUES (...), (...)`` statements.

    psycopg sends an executemany as one statement per row (pipelined, but each with its own
    encoding and socket write, on PostgreSQL the largest part of a batch's client time). This
    sends the rows in chunks of :data:`MULTIROW_SIZES` instead, so a statement has few compiled
    forms (which the server prepares): the same rows, in the same order, in the same
    transaction. Only for INSERTs that return nothing.

    The statements use PostgreSQL's own ``$n`` placeholders through psycopg's ``RawCursor``:
    psycopg parses a ``%s`` query again on every call once it is longer than 4 KB or has more
    than 50 parameters, which would cost more than the rows it saves.
    """

    head: str
    """``INSERT INTO t (a, b) VALUES ``"""
    row: str
    """One row as SQLAlchemy compiled it: ``(%(a)s, %(b)s::VARCHAR)``."""
    names: tuple[str, ...]
    """The bind names of one row, in the placeholders' order."""
    forms: dict[int, str] = field(default_factory=dict, compare=False)

    def sql(self, rows: int) -> str:
        """The statement for ``rows`` rows, with placeholders ``$1`` to ``$(rows * columns)``."""
        found = self.forms.get(rows)
        if found is None:
            numbers = itertools.count(1)
            each = ", ".join(
                _BIND.sub(lambda _: f"${next(numbers)}", self.row) for _ in range(rows)
            )
            found = self.forms[rows] = self.head + each
        return found


MULTIROW_SIZES = (512, 256, 128, 64, 32, 16, 8, 4, 3, 2, 1)
"""The row counts of the multi-row INSERTs a batch is split into (largest first)."""

_BIND = re.compile(r"%\(([^)]+)\)s")


def _multirow(stmt: Any, dialect: sa.Dialect, keys: tuple[str, ...]) -> _MultiRow | None:
    """The multi-row form of an INSERT on PostgreSQL (psycopg), or None."""
    if dialect.name != "postgresql" or not isinstance(stmt, sa.Insert) or stmt._returning:
        return None
    sql = stmt.compile(dialect=dialect, column_keys=list(keys), for_executemany=True).string
    found = re.fullmatch(r"(INSERT INTO .*? VALUES )(\(.*\))", sql, re.S)
    if found is None or "RETURNING" in sql:
        return None
    head, row = found.groups()
    if "%" in _BIND.sub("", row) or "$" in row or _raw_cursor is None:
        return None  # a literal percent or dollar sign: not ours to rewrite
    return _MultiRow(head, row, tuple(_BIND.findall(row)))


try:
    from psycopg import RawCursor as _raw_cursor
except ImportError:  # no psycopg (or one before 3.2): executemany as the driver does it
    _raw_cursor = None  # type: ignore[assignment,misc]


_FALLBACK = object()
_cache: dict[tuple[sa.Executable, str, tuple[str, ...], tuple[int, ...]], Any] = {}
"""Keyed by the statement object itself: hot statements are module constants (statements.py)."""
_observers: dict[sa.Engine, list[Observer]] = {}
_observers_lock = threading.Lock()


def observe_statements(engine: sa.Engine, observer: Observer) -> None:
    """Call ``observer(conn, cursor, sql, params, context, executemany)`` before each statement
    on ``engine``, as a ``before_cursor_execute`` listener would be, without taking the hot path
    off the driver: it must only look (count, time), never change or fail a statement."""
    with _observers_lock:
        _observers.setdefault(engine, []).append(observer)
    sa.event.listen(engine, "before_cursor_execute", observer)


def stop_observing(engine: sa.Engine, observer: Observer) -> None:
    """Undo :func:`observe_statements`."""
    with _observers_lock:
        found = _observers.get(engine, [])
        if observer in found:
            found.remove(observer)
    sa.event.remove(engine, "before_cursor_execute", observer)


def _on_driver(conn: sa.Connection) -> list[Observer] | None:
    """The observers to call on the driver path, or None if something else listens (then
    SQLAlchemy's path must run the statement)."""
    dispatch = conn.dispatch
    if dispatch.after_cursor_execute or conn.dialect.dispatch.handle_error:
        return None
    listening = len(dispatch.before_cursor_execute)
    if not listening:
        return []
    passive = _observers.get(conn.engine, [])
    return passive if len(passive) == listening else None


MAX_EXPANDED = 64
"""An ``IN`` list longer than this goes through ``conn.execute``."""


def _padded(length: int) -> int:
    """The size class an ``IN`` list of ``length`` values is compiled for: the next power of
    two (1, 2, 4, ... :data:`MAX_EXPANDED`), so a statement has at most seven compiled forms
    (and one for an empty list)."""
    size = 1 if length else 0
    while size < length:
        size *= 2
    return size


def _pad(values: Any) -> list[Any]:
    """``values`` (an ``IN`` list) repeated at its end up to its size class."""
    padded: list[Any] = list(values)
    if padded:
        padded += [padded[-1]] * (_padded(len(padded)) - len(padded))
    return padded


def _compile(stmt: Any, dialect: sa.Dialect, keys: tuple[str, ...], first: Params) -> Any:
    compiled = stmt.compile(dialect=dialect, column_keys=list(keys))
    returned = getattr(stmt, "_returning", ()) or ()
    selected = stmt.selected_columns if isinstance(stmt, sa.Select) else ()
    for column in (*returned, *selected):
        if column.type.dialect_impl(dialect).result_processor(dialect, None) is not None:
            return _FALLBACK
    expanding = tuple(name for name, bind in compiled.binds.items() if bind.expanding)
    sql, positiontup = compiled.string, compiled.positiontup
    if expanding:
        # This list length's SQL: ``IN (?, ?, ?)``, the values bound as ids_1, ids_2, ...
        if any(len(first[name]) > MAX_EXPANDED for name in expanding):
            return _FALLBACK
        first = {**first, **{name: _pad(first[name]) for name in expanding}}
        state = compiled.construct_expanded_state(dict(first))
        sql, positiontup = state.statement, state.positiontup
    defaults: dict[str, Any] = {}
    processors: dict[str, Callable[[Any], Any]] = {}
    for name, bind in compiled.binds.items():
        if not bind.required and not bind.expanding:
            defaults[name] = bind.effective_value
        processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if processor is not None:
            if bind.expanding:
                for i in range(len(first[name])):
                    processors[f"{name}_{i + 1}"] = processor
            else:
                processors[name] = processor
    positional = bool(compiled.positional)
    if positional:
        names = tuple(positiontup or ())
    else:
        names = tuple(n for n in compiled.binds if n not in expanding) + tuple(
            f"{name}_{i + 1}" for name in expanding for i in range(len(first[name]))
        )
    multirow = None if expanding or positional else _multirow(stmt, dialect, keys)
    return _Compiled(sql, names, positional, defaults, processors, expanding, multirow)


def _values(entry: _Compiled, params: Params, memo: dict[Any, Any] | None = None) -> Any:
    """The driver's parameters for one row. ``memo`` (one per executemany) keeps processed
    values that repeat from row to row (the transaction's timestamp, a NULL)."""
    merged: Mapping[str, Any] = {**entry.defaults, **params} if entry.defaults else params
    if entry.expanding:
        merged = dict(merged)
        for name in entry.expanding:
            for i, value in enumerate(_pad(merged[name])):
                merged[f"{name}_{i + 1}"] = value
    if entry.processors:
        merged = dict(merged)
        for name, processor in entry.processors.items():
            if name in merged:
                value = merged[name]
                if memo is not None and (value is None or isinstance(value, datetime)):
                    key = (processor, value)
                    if key not in memo:
                        memo[key] = processor(value)
                    merged[name] = memo[key]
                else:
                    merged[name] = processor(value)
    if entry.positional:
        return tuple([merged[name] for name in entry.names])
    return {name: merged[name] for name in entry.names}


_MEMO_TYPES = (type(None), bool, int, str, datetime)
"""Values whose processed form an executemany computes once per distinct value and column."""


def _many_values(entry: _Compiled, rows: list[dict[str, Any]]) -> list[Any]:
    """The driver's parameters for an executemany of ``rows`` (see :func:`_column_values`).

    Every row has the keys of the first (SQLAlchemy's executemany asks the same); a key the
    first row lacks takes the statement's default.
    """
    if entry.expanding:
        memo: dict[Any, Any] = {}
        return [_values(entry, p, memo) for p in rows]
    first = rows[0]
    columns = {name: [row[name] for row in rows] for name in entry.names if name in first}
    return _column_values(entry, columns, len(rows))


def _same(column: list[Any]) -> bool:
    """Whether every value of ``column`` is one NULL or one datetime (a check in C)."""
    first = column[0]
    return (first is None or type(first) is datetime) and column.count(first) == len(column)


def _column_values(entry: _Compiled, given: Mapping[str, list[Any]], count: int) -> list[Any]:
    """The driver's parameters for an executemany, built column by column: a column's
    processor runs once per distinct scalar value (a submit's 100,000 rows share their
    timestamp, statuses and NULLs), and the rows are zipped together in C. A column ``given``
    lacks takes the statement's default."""
    columns: list[list[Any]] = []
    for name in entry.names:
        column = given.get(name)
        if column is None:
            column = [entry.defaults[name]] * count
        processor = entry.processors.get(name)
        if processor is not None and _same(column):
            column = [processor(column[0])] * count  # the rows' timestamp, or all NULL
        elif processor is not None:
            done: dict[tuple[type, Any], Any] = {}
            out = []
            for value in column:
                kind = type(value)
                if kind in _MEMO_TYPES:
                    key = (kind, value)
                    found = done.get(key, done)
                    if found is done:
                        found = done[key] = processor(value)
                    out.append(found)
                else:
                    out.append(processor(value))
            column = out
        columns.append(column)
    if entry.positional:
        return list(zip(*columns, strict=True))
    names = entry.names
    return [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]


def execute_columns(conn: sa.Connection, stmt: sa.Executable, columns: dict[str, list[Any]]) -> Any:
    """:func:`execute` of an executemany whose rows are given column by column (``{name:
    values}``, every list as long, at least one row): a bulk insert builds no dict per row.
    Statements with ``IN`` lists are not for this (use :func:`execute`)."""
    first = {name: values[0] for name, values in columns.items()}
    count = len(next(iter(columns.values())))
    entry: Any = _entry(conn, stmt, first) if count > 1 else _FALLBACK
    if entry is _FALLBACK or entry.expanding:  # one row (a plain execute), or not for this path
        rows = [
            dict(zip(columns, values, strict=True))
            for values in zip(*columns.values(), strict=True)
        ]
        return execute(conn, stmt, rows)
    return _send(conn, entry, _column_values(entry, columns, count), True)


def _entry(conn: sa.Connection, stmt: sa.Executable, first: Params) -> Any:
    """The compiled form of ``stmt`` for ``conn``'s dialect and ``first``'s keys (and ``IN``
    list lengths), or :data:`_FALLBACK`."""
    shape = tuple(first)
    lengths = tuple(_padded(len(v)) for v in first.values() if isinstance(v, list | tuple))
    key = (stmt, conn.dialect.name, shape, lengths)
    entry = _cache.get(key)
    if entry is None:
        entry = _cache[key] = _compile(stmt, conn.dialect, shape, first)
    return entry


def _send(conn: sa.Connection, entry: _Compiled, values: Any, many: bool) -> Any:
    """Run a compiled statement on the driver (or through SQLAlchemy when it is observed)."""
    observers = _on_driver(conn)
    if observers is None:
        return conn.exec_driver_sql(entry.sql, values)
    if many and entry.multirow is not None:
        return _send_rows(conn, entry.multirow, values, observers)
    return _run(conn, entry.sql, values, many, observers)


def _send_rows(
    conn: sa.Connection, form: _MultiRow, rows: list[Mapping[str, Any]], observers: list[Observer]
) -> DriverResult:
    """An executemany of an INSERT as multi-row statements (:class:`_MultiRow`)."""
    names = form.names
    parts: list[DriverResult] = []
    start, left = 0, len(rows)
    while left:
        size = next(n for n in MULTIROW_SIZES if n <= left)
        chunk = rows[start : start + size]
        flat = [row[name] for row in chunk for name in names]
        parts.append(_run(conn, form.sql(size), flat, False, observers, raw=True))
        start, left = start + size, left - size
    return parts[0] if len(parts) == 1 else _Chunked(parts)


def execute(
    conn: sa.Connection,
    stmt: sa.Executable,
    params: Params | list[dict[str, Any]] | None = None,
) -> Any:
    """Run ``stmt`` with ``params`` (one mapping, or a list for executemany) in ``conn``'s
    transaction, as ``conn.execute`` would. Returns a result with the parts of
    :class:`~sqlalchemy.engine.CursorResult` the store uses (``all``, ``one``, ``first``,
    ``scalar_one``, ``scalars``, ``rowcount``, iteration; rows with attribute access)."""
    first: Params
    if isinstance(params, list):
        if not params:
            return conn.execute(stmt, params)
        many, first = len(params) > 1, params[0]  # one row: a plain execute is cheaper
    else:
        many, first = False, params or {}
    entry = _entry(conn, stmt, first)
    if entry is _FALLBACK:
        return conn.execute(stmt, params)
    if many and isinstance(params, list):
        values: Any = _many_values(entry, params)
    else:
        values = _values(entry, first)
    return _send(conn, entry, values, many)


def execute_text(conn: sa.Connection, sql: str) -> None:
    """Run a statement without parameters or rows (``BEGIN IMMEDIATE``) the same way."""
    observers = _on_driver(conn)
    if observers is None:
        conn.exec_driver_sql(sql)
    else:
        _run(conn, sql, None, False, observers)


_row_types: dict[tuple[str, ...], Any] = {}
"""A namedtuple class per column list (rows read as ``row.name``)."""


def _translate(
    conn: sa.Connection,
    exc: BaseException,
    dbapi_connection: Any,
    cursor: Any,
    sql: str,
    values: Any,
    many: bool,
) -> BaseException:
    """What to raise for ``exc``, raised by the driver: a driver error as SQLAlchemy raises it
    (see the module docs); anything else as it is, the connection invalidated when it was not an
    ``Exception`` (interrupted mid-statement: its state is unknown)."""
    if isinstance(exc, conn.dialect.loaded_dbapi.Error):
        disconnect = conn.dialect.is_disconnect(exc, dbapi_connection, cursor)
        wrapped = sa.exc.DBAPIError.instance(
            sql,
            values,
            exc,
            conn.dialect.loaded_dbapi.Error,
            connection_invalidated=disconnect,
            dialect=conn.dialect,
            ismulti=many,
        )
        if disconnect:
            conn.invalidate(exc)
        return wrapped
    if not isinstance(exc, Exception):
        conn.invalidate(exc)
    return exc


@contextlib.contextmanager
def _translated(
    conn: sa.Connection, dbapi_connection: Any, cursor: Any, sql: str, values: Any, many: bool
) -> Iterator[None]:
    """Driver errors raised in the block, as SQLAlchemy raises them (:func:`_translate`)."""
    try:
        yield
    except BaseException as exc:
        raised = _translate(conn, exc, dbapi_connection, cursor, sql, values, many)
        if raised is exc:
            raise
        raise raised from exc


def _rows_of(cursor: Any) -> list[Any]:
    description = cursor.description
    if not description:
        return []
    names = tuple([column[0] for column in description])
    row_type: Any = _row_types.get(names)
    if row_type is None:
        row_type = _row_types[names] = namedtuple("Row", names, rename=True)
    return list(map(row_type._make, cursor.fetchall()))


def _run(
    conn: sa.Connection,
    sql: str,
    values: Any,
    many: bool,
    observers: list[Observer],
    *,
    raw: bool = False,
) -> DriverResult:
    dbapi_connection = conn.connection.dbapi_connection
    assert dbapi_connection is not None
    cursor: Any = _raw_cursor(dbapi_connection) if raw else dbapi_connection.cursor()  # type: ignore[call-overload]
    pipe = conn.info.get(_PIPELINE)
    try:
        # No context manager here: this runs for every statement of the hot path.
        for observer in observers:
            observer(conn, cursor, sql, values, None, many)
        if many:
            cursor.executemany(sql, values)
        elif values is None:
            cursor.execute(sql)
        else:
            cursor.execute(sql, values)
        if pipe is not None:  # sent, not waited for: read when (if ever) it is needed
            return DriverResult(pending=(conn, pipe, cursor, sql, values, many))
        return DriverResult(_rows_of(cursor), cursor.rowcount)
    except BaseException as exc:
        raised = _translate(conn, exc, dbapi_connection, cursor, sql, values, many)
        if raised is exc:
            raise
        raise raised from exc
    finally:
        if pipe is None:
            with contextlib.suppress(conn.dialect.loaded_dbapi.Error):
                cursor.close()


_PIPELINE = "dagtask.pipeline"
"""``conn.info`` key of the psycopg pipeline a hot transaction runs in (see :func:`pipelined`)."""


@contextlib.contextmanager
def pipelined(conn: sa.Connection) -> Iterator[None]:
    """PostgreSQL (psycopg) on the driver path: the block's statements go out in pipeline mode,
    each without waiting for the one before; a statement's result is waited for only when it
    is read (its rows, its row count), so the writes whose results nobody reads (logs, events,
    counters) ride with the next read or with the COMMIT. The server still runs them in order,
    in the caller's transaction; an error surfaces at the next read or at the commit, as the
    same SQLAlchemy exception as without the pipeline, and rolls the transaction back.

    The block must be the whole transaction (``with pipelined(conn), conn.begin(): ...``), so
    its COMMIT is pipelined too. Elsewhere (other drivers, an observed engine) it does nothing.
    """
    if conn.dialect.driver != "psycopg" or _on_driver(conn) is None or _PIPELINE in conn.info:
        yield
        return
    dbapi_connection = conn.connection.dbapi_connection
    assert dbapi_connection is not None
    with (
        _translated(conn, dbapi_connection, None, "(pipeline)", None, False),
        dbapi_connection.pipeline() as pipe,
    ):
        conn.info[_PIPELINE] = pipe
        try:
            yield
            if dbapi_connection.pgconn.transaction_status == 0:
                # Nothing was read back yet, so the driver does not know it is in a
                # transaction and would skip the COMMIT: learn it first.
                pipe.sync()
        finally:
            conn.info.pop(_PIPELINE, None)


class DriverResult:
    """A statement's rows and row count, read as the store reads a
    :class:`~sqlalchemy.engine.CursorResult`. In a pipeline they are fetched on first use."""

    __slots__ = ("_pending", "_rowcount", "_rows")

    def __init__(
        self,
        rows: list[Any] | None = None,
        rowcount: int = -1,
        *,
        pending: tuple[sa.Connection, Any, Any, str, Any, bool] | None = None,
    ) -> None:
        self._rows = rows or []
        self._rowcount = rowcount
        self._pending = pending

    def _fetch(self) -> None:
        if self._pending is None:
            return
        conn, pipe, cursor, sql, values, many = self._pending
        self._pending = None
        dbapi_connection = conn.connection.dbapi_connection
        try:
            with _translated(conn, dbapi_connection, cursor, sql, values, many):
                if cursor.pgresult is None:
                    pipe.sync()
                self._rows = _rows_of(cursor)
                self._rowcount = cursor.rowcount
        finally:
            with contextlib.suppress(conn.dialect.loaded_dbapi.Error):
                cursor.close()

    @property
    def rowcount(self) -> int:
        self._fetch()
        return self._rowcount

    def __iter__(self) -> Iterator[Any]:
        self._fetch()
        return iter(self._rows)

    def all(self) -> list[Any]:
        self._fetch()
        return self._rows

    def first(self) -> Any:
        rows = self.all()
        return rows[0] if rows else None

    def one(self) -> Any:
        rows = self.all()
        if len(rows) != 1:
            raise sa.exc.NoResultFound() if not rows else sa.exc.MultipleResultsFound()
        return rows[0]

    def scalar_one(self) -> Any:
        return self.one()[0]

    def scalar(self) -> Any:
        rows = self.all()
        return rows[0][0] if rows else None

    def scalars(self) -> DriverResult:
        rows = self.all()
        return DriverResult([row[0] for row in rows], self._rowcount)


class _Chunked(DriverResult):
    """The result of an executemany sent as several statements: their row counts, summed
    when read (in a pipeline, each is fetched only then)."""

    __slots__ = ("_parts",)

    def __init__(self, parts: list[DriverResult]) -> None:
        super().__init__()
        self._parts: list[DriverResult] | None = parts

    def _fetch(self) -> None:
        if self._parts is None:
            return
        parts, self._parts = self._parts, None
        self._rowcount = sum(part.rowcount for part in parts)
