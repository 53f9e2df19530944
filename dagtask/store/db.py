"""Opening a database: URL resolution, SQLite tuning, schema-version checks and upgrades.

The database URL comes from the caller, else ``DAGTASK_DB_URL``, else ``sqlite:///dagtask.db``.
SQLite runs in WAL mode; its write transactions start with ``BEGIN IMMEDIATE`` so that two writers
never deadlock upgrading a read lock, while reads use a second engine with plain deferred
transactions (in WAL mode they never block a writer).

Schema policy: an empty database is created at the newest revision (unless it is opened with
``create=False``, as every read-only command does: then it is refused with
:class:`SchemaMissingError`, and a missing SQLite file is not created); a database whose revision is
older than this version of dagtask is refused with :class:`SchemaOutdatedError` asking for
``dagtask db upgrade``; a newer one (written by a newer dagtask) is refused too. Creating or
upgrading the schema holds a lock (PostgreSQL ``pg_advisory_lock``, MariaDB/MySQL ``GET_LOCK``,
SQLite a ``BEGIN IMMEDIATE`` transaction) and reads the revision again under it, so many processes
starting at once on an empty database create it exactly once and all come up.

Timeouts (so that a database that accepts connections but never answers cannot hang a command):

- ``DAGTASK_CONNECT_TIMEOUT`` (seconds, default 10; 0: no limit): how long opening a connection
  may take (psycopg/libpq ``connect_timeout``, whole seconds, at least 1; PyMySQL
  ``connect_timeout``).
- ``DAGTASK_STATEMENT_TIMEOUT`` (seconds, default 30; 0: no limit): how long one statement may
  run or wait for a lock (PostgreSQL ``statement_timeout``; PyMySQL ``read_timeout`` and
  ``write_timeout``, a little longer than the limit so the server's own lock wait errors come
  first; SQLite's busy timeout, which bounds waiting for another process's write lock).

Both can also be given to :class:`Database` / :func:`open_database` (``connect_timeout=``,
``statement_timeout=``). Options already in the URL (e.g. ``?connect_timeout=3``) win.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa

if TYPE_CHECKING:
    from alembic.config import Config

from dagtask.errors import (
    ConcurrentChangeError,
    SchemaMissingError,
    SchemaOutdatedError,
    StoreError,
)
from dagtask.store import prepared

DEFAULT_URL = "sqlite:///dagtask.db"
ENV_VAR = "DAGTASK_DB_URL"
MIGRATIONS = Path(__file__).with_name("migrations")

CONNECT_TIMEOUT_VAR = "DAGTASK_CONNECT_TIMEOUT"
STATEMENT_TIMEOUT_VAR = "DAGTASK_STATEMENT_TIMEOUT"
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_STATEMENT_TIMEOUT = 30.0
MAX_TIMEOUT = 365 * 24 * 3600.0
"""PyMySQL refuses longer timeouts; no sane limit is longer either."""
_UNLIMITED_BUSY_MS = 2**31 - 1  # SQLite has no "wait forever"; this is 24 days

# The schema lock's name (MariaDB/MySQL, where GET_LOCK is server-wide: the database name is
# appended) and key (PostgreSQL, where advisory locks are per database).
_SCHEMA_LOCK = "dagtask_schema"
_SCHEMA_LOCK_KEY = 0x64616774  # "dagt"; pg_advisory_lock(int, int) takes 32-bit keys

# What to write instead of a scheme SQLAlchemy does not know, or whose default driver dagtask
# does not install.
_SCHEMES = {
    "postgres": "postgresql+psycopg",
    "postgresql": "postgresql+psycopg",
    "postgresql+psycopg2": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mysql+mysqldb": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
    "mariadb+mysqldb": "mariadb+pymysql",
}
_EXAMPLES = (
    "sqlite:///dagtask.db, postgresql+psycopg://user@host/db or mysql+pymysql://user@host/db"
)


_WRITE_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def resolve_url(url: str | None = None) -> str:
    """The URL to use: ``url``, else ``$DAGTASK_DB_URL``, else ``sqlite:///dagtask.db``.

    An empty (or blank) ``url`` is refused rather than taken for "the default": ``--db ''``
    usually means a variable that was meant to hold the URL is unset. An empty
    ``$DAGTASK_DB_URL`` counts as unset, as usual for environment variables.
    """
    if url is not None:
        if not url.strip():
            raise StoreError(
                f"the database URL is empty; give one, e.g. --db sqlite:///dagtask.db "
                f"(leave --db out to use ${ENV_VAR}, else {DEFAULT_URL})"
            )
        return url
    return os.environ.get(ENV_VAR, "").strip() or DEFAULT_URL


def _seconds(value: float | None, variable: str, default: float) -> float:
    """A timeout in seconds: ``value``, else ``$variable``, else ``default`` (0: no limit)."""
    if value is None:
        text = os.environ.get(variable, "").strip()
        if not text:
            return default
        try:
            value = float(text)
        except ValueError:
            raise StoreError(
                f"{variable}={text!r} is not a number of seconds; e.g. {variable}={default:g} "
                "(0: no limit)"
            ) from None
        where = variable
    else:
        where = variable.removeprefix("DAGTASK_").lower()
    if not 0 <= value <= MAX_TIMEOUT:  # also refuses NaN
        raise StoreError(
            f"{where} must be between 0 (no limit) and {MAX_TIMEOUT:g} seconds, got {value:g}"
        )
    return value


def _set_wal(cursor: Any, busy_ms: int) -> None:
    """``PRAGMA journal_mode=WAL``, tried again while another connection is switching the same
    new file: two connections converting it at once get "database is locked" at once, without
    SQLite's busy handler (each holds the shared lock the other needs to give up), so two
    processes starting on a fresh database would see one of them fail."""
    deadline = time.monotonic() + busy_ms / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(random.uniform(0.002, 0.02))


def _sqlite_engine(url: sa.URL, *, immediate: bool, busy_ms: int) -> sa.Engine:
    engine = sa.create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": busy_ms / 1000},
        pool_size=8,
        max_overflow=32,
    )

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below decide how transactions start.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        _set_wal(cursor, busy_ms)
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        prepared.execute_text(conn, "BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


RETURNING_DIALECTS = ("sqlite", "postgresql")
"""Dialects whose UPDATE and INSERT take RETURNING (MariaDB's UPDATE does not)."""

RETRIES = 5
_T = TypeVar("_T")


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a deadlock or serialization failure: the database rolled the
    transaction back and trying it again is safe."""
    orig = getattr(exc, "orig", None)
    if getattr(orig, "sqlstate", None) in ("40P01", "40001"):  # PostgreSQL
        return True
    args: tuple[Any, ...] = getattr(orig, "args", ())
    return bool(args) and args[0] in (1213, 1205)  # MySQL/MariaDB: deadlock, lock wait timeout


def retrying(transaction: Callable[[], _T]) -> _T:
    """Run ``transaction`` (which opens and commits its own transaction), again after a
    deadlock, a serialization failure or a :class:`ConcurrentChangeError` (a row changed under
    a plan; the transaction rolled back), up to :data:`RETRIES` times: the one retry policy of
    every store transaction."""
    for attempt in range(RETRIES):
        try:
            return transaction()
        except (sa.exc.DBAPIError, ConcurrentChangeError) as exc:
            transient = isinstance(exc, ConcurrentChangeError) or is_transient(exc)
            if attempt == RETRIES - 1 or not transient:
                raise
            time.sleep(random.uniform(0.005, 0.05) * (attempt + 1))
    raise AssertionError("unreachable")


class Database:
    """The engines of one database: ``engine`` for writes, ``read_engine`` for reads.

    ``connect_timeout`` and ``statement_timeout`` are in seconds (0: no limit; None: from
    ``$DAGTASK_CONNECT_TIMEOUT`` / ``$DAGTASK_STATEMENT_TIMEOUT``, else 10 and 30). With
    ``create=False`` a missing SQLite file is refused instead of created.
    """

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float | None = None,
        statement_timeout: float | None = None,
        create: bool = True,
    ) -> None:
        self.url = url
        self.connect_timeout = _seconds(
            connect_timeout, CONNECT_TIMEOUT_VAR, DEFAULT_CONNECT_TIMEOUT
        )
        self.statement_timeout = _seconds(
            statement_timeout, STATEMENT_TIMEOUT_VAR, DEFAULT_STATEMENT_TIMEOUT
        )
        parsed = _parse_url(url)
        self.dialect = parsed.get_backend_name()
        self._write_lock: threading.Lock | None = None
        self._held: dict[int, sa.Connection | None] = {}
        self._held_lock = threading.Lock()
        if self.dialect == "sqlite":
            database = parsed.database or ""
            if database in ("", ":memory:"):
                raise StoreError(
                    "an in-memory SQLite database cannot be shared by workers; "
                    "use a file, e.g. sqlite:///dagtask.db"
                )
            path = Path(database).expanduser()
            folder = path.resolve().parent
            if not create and not path.exists():
                raise SchemaMissingError(
                    f"there is no dagtask database at {_safe(url)}: the file {str(path)!r} does "
                    f"not exist; create it with `dagtask db upgrade --db {_safe(url)}` "
                    "(or check the path)"
                )
            if not folder.is_dir():
                raise StoreError(f"cannot create {database!r}: folder {str(folder)!r} is missing")
            if path.is_dir():
                raise StoreError(f"{database!r} is a folder, not a SQLite database file")
            busy_ms = (
                round(self.statement_timeout * 1000)
                if self.statement_timeout
                else _UNLIMITED_BUSY_MS
            )
            self.engine = _sqlite_engine(parsed, immediate=True, busy_ms=busy_ms)
            self.hot_engine = self.engine
            self.read_engine = _sqlite_engine(parsed, immediate=False, busy_ms=busy_ms)
            key = str(path.resolve())
            with _LOCKS_GUARD:
                self._write_lock = _WRITE_LOCKS.setdefault(key, threading.Lock())
        else:
            parsed = self._with_timeouts(parsed)
            kwargs: dict[str, Any] = {"pool_pre_ping": True, "pool_size": 8, "max_overflow": 32}
            if self.dialect in ("mysql", "mariadb"):
                kwargs["isolation_level"] = "READ COMMITTED"
            try:
                self.engine = sa.create_engine(parsed, **kwargs)
                # The workers' hot path skips the ping (a round trip per transaction): a
                # connection the server dropped fails once, is discarded with the rest of the
                # pool, and the worker tries again.
                self.hot_engine = sa.create_engine(parsed, **{**kwargs, "pool_pre_ping": False})
                if parsed.get_driver_name() == "pymysql" and self.connect_timeout:
                    for engine in (self.engine, self.hot_engine):
                        sa.event.listen(engine, "do_connect", self._pymysql_handshake_timeout)
            except ImportError as exc:
                extra = "postgres" if self.dialect == "postgresql" else "mysql"
                better = _SCHEMES.get(parsed.drivername)
                advice = (
                    f"use {better}://... (installed with dagtask[{extra}])"
                    if better and better != parsed.drivername
                    else f"pip install 'dagtask[{extra}]'"
                )
                raise StoreError(
                    f"the database driver for {parsed.drivername!r} is not installed; {advice}"
                ) from exc
            self.read_engine = self.engine

    def _pymysql_handshake_timeout(
        self, dialect: Any, _record: Any, cargs: Any, cparams: dict[str, Any]
    ) -> Any:
        """Connect with PyMySQL under the connect timeout for the whole handshake.

        PyMySQL's ``connect_timeout`` covers only the TCP connect; it reads the server's
        greeting under ``read_timeout``, which is the (longer) statement limit. So connect with
        the connect timeout as read timeout and put the statement limit back afterwards
        (PyMySQL has no public setter; it reads ``_read_timeout`` before every read).
        """
        statement_limit = cparams.get("read_timeout")
        limit = max(1, math.ceil(self.connect_timeout))
        connection = dialect.loaded_dbapi.connect(*cargs, **{**cparams, "read_timeout": limit})
        connection._read_timeout = statement_limit
        return connection

    def _with_timeouts(self, url: sa.URL) -> sa.URL:
        """``url`` with the driver's connect and statement timeouts, unless it sets them.

        They go into the URL (not only ``connect_args``) so that every connection made from
        ``engine.url``, such as a worker's LISTEN connection, has them too.
        """
        query = dict(url.query)
        extra: dict[str, str] = {}
        statement = self.statement_timeout
        if self.connect_timeout and "connect_timeout" not in query:
            extra["connect_timeout"] = str(max(1, math.ceil(self.connect_timeout)))
        if self.dialect == "postgresql":
            options = str(query.get("options", ""))
            if statement and "statement_timeout" not in options:
                setting = f"-c statement_timeout={round(statement * 1000)}"
                extra["options"] = f"{options} {setting}".strip()
        elif self.dialect in ("mysql", "mariadb") and statement:
            # PyMySQL's socket timeouts bound a server that stops answering; the margin lets a
            # lock wait the server ends itself (innodb_lock_wait_timeout) report as such.
            limit = str(math.ceil(statement) + 5)
            for key in ("read_timeout", "write_timeout"):
                if key not in query:
                    extra[key] = limit
        return url.update_query_dict(extra) if extra else url

    @property
    def is_sqlite(self) -> bool:
        """Whether this is a SQLite database (one writer at a time, no row locks)."""
        return self.dialect == "sqlite"

    @contextmanager
    def begin(self, *, hot: bool = False) -> Iterator[sa.Connection]:
        """A write transaction, committed when the block ends without an exception.

        ``hot``: a worker's claim or finish, on connections that are not pinged first (the
        caller retries when the database went away).

        On SQLite, the writers of this process take turns on a lock first: a thread waiting for
        it wakes the moment the writer before it commits, where SQLite's own busy handler would
        sleep and poll (other processes still meet that busy handler).
        """
        engine = self.hot_engine if hot else self.engine
        if self._write_lock is None:
            with engine.begin() as conn:
                yield conn
            return
        with self._write_lock, engine.begin() as conn:
            yield conn

    @contextmanager
    def hot(self) -> Iterator[sa.Connection]:
        """A worker's claim or finish: a write transaction as :meth:`begin` with ``hot``, on
        the connection this thread keeps if it called :meth:`keep_hot_connection` (a pool's
        dispatcher does), so the hot path never checks one out of the pool; on PostgreSQL its
        statements are pipelined (:func:`prepared.pipelined`). Any error closes the kept
        connection (a dropped one is never reused); the next transaction opens a new one.
        """
        ident = threading.get_ident()
        if ident not in self._held:
            with self.begin(hot=True) as conn:
                yield conn
            return
        kept = self._held[ident]
        if kept is None or kept.closed or kept.invalidated:
            kept = self.hot_engine.connect()
            with self._held_lock:
                self._held[ident] = kept
        conn = kept
        try:
            if self._write_lock is None:
                with prepared.pipelined(conn), conn.begin():
                    yield conn
            else:
                with self._write_lock, conn.begin():
                    yield conn
        except BaseException:
            self._close_held(ident, keep=True)
            raise

    def keep_hot_connection(self) -> None:
        """From now on this thread's :meth:`hot` transactions share one connection, until
        :meth:`release_hot`."""
        with self._held_lock:
            self._held.setdefault(threading.get_ident(), None)

    def release_hot(self) -> None:
        """Close this thread's kept hot connection and stop keeping one."""
        self._close_held(threading.get_ident(), keep=False)

    def _close_held(self, ident: int, *, keep: bool) -> None:
        with self._held_lock:
            conn = self._held.pop(ident, None)
            if keep:
                self._held[ident] = None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    @contextmanager
    def read(self) -> Iterator[sa.Connection]:
        """A read-only transaction."""
        with self.read_engine.begin() as conn:
            yield conn

    def dispose(self) -> None:
        """Close every pooled connection (and the hot ones threads keep)."""
        with self._held_lock:
            held = [conn for conn in self._held.values() if conn is not None]
            self._held = dict.fromkeys(self._held)
        for conn in held:
            with contextlib.suppress(Exception):
                conn.close()
        self.engine.dispose()
        if self.hot_engine is not self.engine:
            self.hot_engine.dispose()
        if self.read_engine is not self.engine:
            self.read_engine.dispose()


SCHEMA_HEAD = "0007"
"""The newest schema revision this version of dagtask ships (``migrations/versions``; a test
checks it against Alembic's own view). Opening a database compares with it without importing
Alembic, which only migrations need."""


def alembic_config(url: str) -> Config:
    """An Alembic configuration for the migrations shipped inside the package."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision() -> str:
    """The newest schema revision this version of dagtask ships."""
    return SCHEMA_HEAD


def shipped_revisions() -> list[str]:
    """Every revision the shipped migrations know, newest first (read from the scripts)."""
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return [rev.revision for rev in scripts.walk_revisions()]


def current_revision(db: Database) -> str | None:
    """The revision the database is at, or None for an empty database."""
    with db.engine.connect() as conn:
        return _revision(conn)


def _revision(conn: sa.Connection) -> str | None:
    """What Alembic's ``get_current_revision`` answers (its ``alembic_version`` table), read
    with one query."""
    if not sa.inspect(conn).has_table("alembic_version"):
        return None
    versions = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all()
    if len(versions) > 1:
        raise SchemaOutdatedError(
            f"database {_safe(str(conn.engine.url))} has several schema revisions "
            f"({', '.join(sorted(versions))}); it was not created by dagtask"
        )
    return versions[0] if versions else None


def _has_dagtask_tables(conn: sa.Connection) -> bool:
    return any(t.startswith("dagtask_") for t in sa.inspect(conn).get_table_names())


@contextmanager
def _schema_lock(db: Database) -> Iterator[sa.Connection]:
    """A connection holding the database's schema lock, in a transaction the caller commits by
    leaving the block: one process at a time creates or upgrades the schema, and the others,
    once they have the lock, find it done.

    The wait for the lock is bounded by the statement timeout.
    """
    if db.is_sqlite:
        # BEGIN IMMEDIATE takes SQLite's write lock; the DDL runs in that same transaction.
        with db.begin() as conn:
            yield conn
        return
    release: sa.Executable
    with db.engine.connect() as conn:
        if db.dialect == "postgresql":
            # Advisory locks are per database; the schema's hash keeps two dagtask schemas of one
            # database (search_path) from waiting on each other.
            key = sa.func.hashtext(sa.func.current_schema())
            conn.execute(sa.select(sa.func.pg_advisory_lock(_SCHEMA_LOCK_KEY, key)))
            release = sa.select(sa.func.pg_advisory_unlock(_SCHEMA_LOCK_KEY, key))
        else:
            # GET_LOCK is server-wide, so the name carries the database; at most 64 characters.
            name = f"{_SCHEMA_LOCK}:{conn.engine.url.database or ''}"[:64]
            wait = math.ceil(db.statement_timeout) if db.statement_timeout else -1
            got = conn.execute(
                sa.text("SELECT GET_LOCK(:name, :wait)"), {"name": name, "wait": wait}
            ).scalar()
            if got != 1:
                conn.rollback()
                raise StoreError(
                    f"database {_safe(db.url)}: another process has been creating or upgrading "
                    f"the schema for more than {wait} s; try again when it is done (or raise "
                    f"{STATEMENT_TIMEOUT_VAR})"
                )
            release = sa.text("SELECT RELEASE_LOCK(:name)").bindparams(name=name)
        conn.commit()  # the lock belongs to the session and outlives this transaction
        try:
            with conn.begin():
                yield conn
        finally:
            with contextlib.suppress(sa.exc.DBAPIError):
                if conn.in_transaction():
                    conn.rollback()
                conn.execute(release)
                conn.commit()


def _upgrade_on(conn: sa.Connection, url: str) -> None:
    from alembic import command

    config = alembic_config(url)
    config.attributes["connection"] = conn
    command.upgrade(config, "head")


def upgrade(db: Database) -> tuple[str | None, str]:
    """Apply every pending migration; return (revision before, revision after).

    Holds the schema lock, so two upgrades (or an upgrade and a first start) never race.
    """
    with _schema_lock(db) as conn:
        before = _revision(conn)
        _upgrade_on(conn, db.url)
    return before, head_revision()


def _create(db: Database) -> None:
    """Create the schema of an empty database, or find that another process just did."""
    with _schema_lock(db) as conn:
        current = _revision(conn)
        if current is not None:
            return  # someone else created it while we waited; checked again by the caller
        if _has_dagtask_tables(conn):
            raise SchemaOutdatedError(
                f"database {_safe(db.url)} has dagtask tables but no schema revision; "
                "run `dagtask db upgrade` or use an empty database"
            )
        _upgrade_on(conn, db.url)


def open_database(
    url: str | None = None,
    *,
    create: bool = True,
    connect_timeout: float | None = None,
    statement_timeout: float | None = None,
) -> Database:
    """Open the database at ``url`` and check that its schema is the one this dagtask needs.

    An empty database is created at the newest revision when ``create`` is true; otherwise it
    (and a SQLite file that does not exist, which is not created) is refused with
    :class:`SchemaMissingError`. Any failure to reach or read the database is a
    :class:`StoreError` naming the URL (without its password) and the cause.
    """
    db = Database(
        resolve_url(url),
        connect_timeout=connect_timeout,
        statement_timeout=statement_timeout,
        create=create,
    )
    try:
        current = current_revision(db)
        head = head_revision()
        if current is None and create:
            _create(db)
            current = current_revision(db)
        if current == head:
            return db
        if current is None:
            with db.engine.connect() as conn:
                has_tables = _has_dagtask_tables(conn)
            if has_tables:
                raise SchemaOutdatedError(
                    f"database {_safe(db.url)} has dagtask tables but no schema revision; "
                    "run `dagtask db upgrade` or use an empty database"
                )
            raise SchemaMissingError(
                f"database {_safe(db.url)} has no dagtask schema, and this command only reads; "
                f"create the schema with `dagtask db upgrade --db {_safe(db.url)}`"
            )
    except sa.exc.DBAPIError as exc:
        db.dispose()
        raise StoreError(database_problem(db.url, exc)) from exc
    except BaseException:
        db.dispose()
        raise
    db.dispose()
    if current not in shipped_revisions():
        raise SchemaOutdatedError(
            f"database {_safe(db.url)} is at schema revision {current}, which this version of "
            "dagtask does not know (it was written by a newer dagtask); upgrade dagtask"
        )
    raise SchemaOutdatedError(
        f"database {_safe(db.url)} is at schema revision {current} but this dagtask "
        f"needs {head}; run `dagtask db upgrade --db URL` to migrate it (nothing is lost)"
    )


def database_problem(url: str, exc: BaseException) -> str:
    """One line saying why the database at ``url`` could not be used, from a driver error."""
    orig = getattr(exc, "orig", None) or exc
    text = " ".join(str(orig).split()) or type(orig).__name__
    lowered = text.lower()
    where = f"database {_safe(url)}"
    if "file is not a database" in lowered:
        return f"{where} is not a SQLite database (the file holds something else); check --db"
    if "readonly database" in lowered or "read-only" in lowered:
        return (
            f"{where} is read-only ({text}); give this process write access to the file and its "
            "folder, or use another database"
        )
    if "timeout" in lowered or "timed out" in lowered:
        return (
            f"{where} did not answer in time ({text}); check that the server is up, or raise "
            f"{CONNECT_TIMEOUT_VAR} / {STATEMENT_TIMEOUT_VAR} (seconds)"
        )
    return f"cannot use {where}: {text}"


def _parse_url(url: str) -> sa.URL:
    """``url`` parsed, with a StoreError saying what to write for a scheme SQLAlchemy (or the
    installed drivers) cannot use."""
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise StoreError(f"{url!r} is not a database URL; use e.g. {_EXAMPLES}") from exc
    try:
        parsed.get_dialect()
    except sa.exc.NoSuchModuleError as exc:
        better = _SCHEMES.get(parsed.drivername)
        if better is not None:
            raise StoreError(
                f"{parsed.drivername}:// is not a scheme dagtask can use; write "
                f"{better}://... instead (e.g. {better}://user@host/db)"
            ) from exc
        raise StoreError(
            f"{_safe(url)}: unknown database type {parsed.drivername!r}; use e.g. {_EXAMPLES}"
        ) from exc
    return parsed


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "<invalid url>"
