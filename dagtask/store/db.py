"""Opening a database: URL resolution, SQLite tuning, schema-version checks and upgrades.

The database URL comes from the caller, else ``DAGTASK_DB_URL``, else ``sqlite:///dagtask.db``.
SQLite runs in WAL mode; its write transactions start with ``BEGIN IMMEDIATE`` so that two writers
never deadlock upgrading a read lock, while reads use a second engine with plain deferred
transactions (in WAL mode they never block a writer).

Schema policy: an empty database is created at the newest revision; a database whose revision is
older than this version of dagtask is refused with :class:`SchemaOutdatedError` asking for
``dagtask db upgrade``; a newer one (written by a newer dagtask) is refused too.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from dagtask.errors import SchemaOutdatedError, StoreError

DEFAULT_URL = "sqlite:///dagtask.db"
ENV_VAR = "DAGTASK_DB_URL"
MIGRATIONS = Path(__file__).with_name("migrations")


_WRITE_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def resolve_url(url: str | None = None) -> str:
    """The URL to use: ``url``, else ``$DAGTASK_DB_URL``, else ``sqlite:///dagtask.db``."""
    return url or os.environ.get(ENV_VAR) or DEFAULT_URL


def _sqlite_engine(url: sa.URL, *, immediate: bool) -> sa.Engine:
    engine = sa.create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": 30},
        pool_size=8,
        max_overflow=32,
    )

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below decide how transactions start.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


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
    deadlock or serialization failure, up to :data:`RETRIES` times."""
    for attempt in range(RETRIES):
        try:
            return transaction()
        except sa.exc.DBAPIError as exc:
            if attempt == RETRIES - 1 or not is_transient(exc):
                raise
            time.sleep(random.uniform(0.005, 0.05) * (attempt + 1))
    raise AssertionError("unreachable")


class Database:
    """The engines of one database: ``engine`` for writes, ``read_engine`` for reads."""

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            parsed = sa.make_url(url)
        except sa.exc.ArgumentError as exc:
            raise StoreError(
                f"{url!r} is not a database URL; use e.g. sqlite:///dagtask.db or "
                "postgresql+psycopg://user@host/db"
            ) from exc
        self.dialect = parsed.get_backend_name()
        self._write_lock: threading.Lock | None = None
        if self.dialect == "sqlite":
            database = parsed.database or ""
            if database in ("", ":memory:"):
                raise StoreError(
                    "an in-memory SQLite database cannot be shared by workers; "
                    "use a file, e.g. sqlite:///dagtask.db"
                )
            folder = Path(database).expanduser().resolve().parent
            if not folder.is_dir():
                raise StoreError(f"cannot create {database!r}: folder {str(folder)!r} is missing")
            self.engine = _sqlite_engine(parsed, immediate=True)
            self.hot_engine = self.engine
            self.read_engine = _sqlite_engine(parsed, immediate=False)
            key = str(Path(database).expanduser().resolve())
            with _LOCKS_GUARD:
                self._write_lock = _WRITE_LOCKS.setdefault(key, threading.Lock())
        else:
            kwargs: dict[str, Any] = {"pool_pre_ping": True, "pool_size": 8, "max_overflow": 32}
            if self.dialect in ("mysql", "mariadb"):
                kwargs["isolation_level"] = "READ COMMITTED"
            try:
                self.engine = sa.create_engine(parsed, **kwargs)
                # The workers' hot path skips the ping (a round trip per transaction): a
                # connection the server dropped fails once, is discarded with the rest of the
                # pool, and the worker tries again.
                self.hot_engine = sa.create_engine(parsed, **{**kwargs, "pool_pre_ping": False})
            except ImportError as exc:
                extra = "postgres" if self.dialect == "postgresql" else "mysql"
                raise StoreError(
                    f"the database driver for {parsed.drivername!r} is not installed; "
                    f"pip install 'dagtask[{extra}]'"
                ) from exc
            self.read_engine = self.engine

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
    def read(self) -> Iterator[sa.Connection]:
        """A read-only transaction."""
        with self.read_engine.begin() as conn:
            yield conn

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()
        if self.hot_engine is not self.engine:
            self.hot_engine.dispose()
        if self.read_engine is not self.engine:
            self.read_engine.dispose()


def alembic_config(url: str) -> Config:
    """An Alembic configuration for the migrations shipped inside the package."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision() -> str:
    """The newest schema revision this version of dagtask ships."""
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


def current_revision(db: Database) -> str | None:
    """The revision the database is at, or None for an empty database."""
    with db.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(db: Database) -> tuple[str | None, str]:
    """Apply every pending migration; return (revision before, revision after)."""
    before = current_revision(db)
    config = alembic_config(db.url)
    with db.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
    return before, head_revision()


def open_database(url: str | None = None, *, create: bool = True) -> Database:
    """Open the database at ``url`` and check that its schema is the one this dagtask needs.

    An empty database is created at the newest revision when ``create`` is true.
    """
    db = Database(resolve_url(url))
    try:
        current = current_revision(db)
    except sa.exc.OperationalError as exc:
        db.dispose()
        raise StoreError(f"cannot open database {_safe(db.url)}: {exc.orig}") from exc
    head = head_revision()
    if current == head:
        return db
    if current is None and create:
        with db.engine.connect() as conn:
            has_tables = any(t.startswith("dagtask_") for t in sa.inspect(conn).get_table_names())
        if has_tables:
            db.dispose()
            raise SchemaOutdatedError(
                f"database {_safe(db.url)} has dagtask tables but no schema revision; "
                "run `dagtask db upgrade` or use an empty database"
            )
        upgrade(db)
        return db
    db.dispose()
    known = {
        rev.revision for rev in ScriptDirectory.from_config(alembic_config(db.url)).walk_revisions()
    }
    if current is not None and current not in known:
        raise SchemaOutdatedError(
            f"database {_safe(db.url)} is at schema revision {current}, which this version of "
            "dagtask does not know (it was written by a newer dagtask); upgrade dagtask"
        )
    raise SchemaOutdatedError(
        f"database {_safe(db.url)} is at schema revision {current or 'none'} but this dagtask "
        f"needs {head}; run `dagtask db upgrade --db URL` to migrate it (nothing is lost)"
    )


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "<invalid url>"
