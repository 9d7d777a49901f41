"""The gateway's own database: one SQLAlchemy engine, Alembic migrations shipped in the package.

SQLite (the default, one host) and PostgreSQL (a fleet of gateway processes) are both
first-class. Everything shared between processes — the audit chain, tokens, secrets,
login failures, cancel keys — goes through here, so every write transaction must be
safe against other processes writing at the same time:

* SQLite: write transactions start with ``BEGIN IMMEDIATE``, which takes the database
  write lock up front. A deferred ``BEGIN`` that reads and then writes can fail with
  "database is locked" without waiting on ``busy_timeout``; taking the lock first makes
  writers queue instead. Read-only sessions use a plain deferred ``BEGIN`` so that
  ``audit verify`` or ``sessions list`` never hold up the recorder.
* PostgreSQL: rows that serialise writers are locked explicitly (see ``audit.chain``).
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

from wardgate.store.models import Base

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_READ_ONLY = "wardgate_read_only"
_BUSY_TIMEOUT_MS = 10_000
# Any fixed 64-bit number: serialises concurrent `migrate()` runs of several gateway
# processes on one PostgreSQL store, so two replicas never race to create tables.
_PG_MIGRATION_LOCK = 0x77617264_67617465  # "wardgate"


class StoreError(Exception):
    """The store cannot be opened or used; the message is safe to show (no password)."""


def describe_error(exc: BaseException) -> str:
    """A one-line description of a database error, safe for logs.

    Never ``str(exc)`` of a SQLAlchemy error: it may carry statement parameters (the
    engine hides them, but this keeps the rule in one place) and multi-line DETAIL
    sections that quote row values.
    """
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        first = str(exc.orig).strip().splitlines()
        return f"{type(exc.orig).__name__}: {first[0][:200] if first else ''}".rstrip(": ")
    first = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {first[0][:200] if first else ''}".rstrip(": ")


def normalize_url(url: str) -> URL:
    """Parse a store URL; bare ``postgresql://`` means the psycopg 3 driver."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StoreError(f"invalid store URL {url.split('@')[-1]!r}") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise StoreError(
            f"unsupported store {parsed.drivername!r}: use sqlite:///PATH or postgresql://..."
        )
    return parsed


class Store:
    def __init__(self, url: str) -> None:
        self.url = normalize_url(url)
        self.dialect = self.url.get_backend_name()
        # Shown in errors and logs: never the password.
        self.display_url = self.url.render_as_string(hide_password=True)
        self.engine = self._create_engine()
        self._read_engine = self.engine.execution_options(**{_READ_ONLY: True})

    @classmethod
    def open(cls, url: str) -> Store:
        store = cls(url)
        try:
            store.migrate()
        except BaseException:
            store.dispose()
            raise
        return store

    def _create_engine(self) -> Engine:
        # hide_parameters: statement parameters (SQL text, params, key material) must never
        # reach an exception message that could end up in a log.
        kwargs: dict[str, Any] = {"hide_parameters": True}
        if self.dialect == "sqlite":
            database = self.url.database or ""
            memory = database in ("", ":memory:") or database.startswith("file::memory:")
            if memory:
                # One shared connection, or every pooled connection sees its own empty db.
                kwargs.update(poolclass=StaticPool, connect_args={"check_same_thread": False})
            else:
                # The store holds recordings: keep a directory we create private.
                Path(database).expanduser().parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                kwargs["connect_args"] = {"check_same_thread": False, "timeout": 10.0}
            engine = create_engine(self.url, **kwargs)
            event.listen(engine, "connect", _sqlite_on_connect)
            event.listen(engine, "begin", _sqlite_on_begin)
            return engine
        # Store calls come from the default thread pool (asyncio.to_thread), which can run
        # more threads than QueuePool's default 5+10 connections; pre-ping survives a
        # PostgreSQL restart or failover without failing the first query afterwards.
        kwargs.update(pool_size=10, max_overflow=30, pool_timeout=30, pool_pre_ping=True)
        return create_engine(self.url, **kwargs)

    # -- migrations ------------------------------------------------------------------

    def migrate(self) -> None:
        """Bring the schema to the newest revision (Alembic ``upgrade head``)."""
        from alembic import command
        from alembic.config import Config as AlembicConfig

        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        with self._migration_lock():
            self._upgrade(cfg, command)

    @contextmanager
    def _migration_lock(self) -> Iterator[None]:
        """SQLite: one process migrates at a time, waiting on a lock file as long as it
        takes, not on SQLite's busy timeout (a loaded machine can exceed it)."""
        database = self.url.database or ""
        if self.dialect != "sqlite" or database in ("", ":memory:") or database.startswith("file:"):
            yield
            return
        with open(f"{Path(database).expanduser()}.migrate-lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _upgrade(self, cfg: Any, command: Any) -> None:
        try:
            # One transaction around the whole upgrade, holding the writer lock, so that
            # several processes starting at once migrate one after the other.
            with self.engine.begin() as conn:
                if self.dialect == "postgresql":
                    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})")
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
        except SQLAlchemyError as exc:
            raise StoreError(
                f"cannot open the store {self.display_url}: {describe_error(exc)}"
            ) from None

    # -- sessions --------------------------------------------------------------------

    @contextmanager
    def session(self, *, write: bool = True) -> Iterator[Session]:
        """A Session inside one transaction: committed on success, rolled back on error.

        ``write=False`` starts a deferred transaction on SQLite (no write lock); on
        PostgreSQL both are the same.
        """
        bind = self.engine if write else self._read_engine
        with Session(bind, expire_on_commit=False) as session, session.begin():
            yield session

    @contextmanager
    def connection(self, *, write: bool = True) -> Iterator[Connection]:
        """Like ``session`` but a Core connection: for the few statements run on every
        login, where building an ORM Session costs more than the queries (~4x)."""
        bind = self.engine if write else self._read_engine
        with bind.begin() as conn:
            yield conn

    def insert(self, model: type[Base]) -> Any:
        """The dialect's INSERT, which has ``on_conflict_do_nothing/update`` on both stores."""
        if self.dialect == "postgresql":
            return postgresql.insert(model)
        return sqlite.insert(model)

    def dispose(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.dispose()

    def __repr__(self) -> str:
        return f"Store({self.display_url!r})"


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Take transaction control away from the sqlite3 module (which would emit its own
    # deferred BEGIN lazily); `_sqlite_on_begin` emits the right BEGIN instead.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys = ON")
        # WAL lets readers proceed while one process writes; it is a property of the file,
        # so the first connection sets it for every process.
        cursor.execute("PRAGMA journal_mode = WAL")
    finally:
        cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    if conn.get_execution_options().get(_READ_ONLY):
        conn.exec_driver_sql("BEGIN")
    else:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
