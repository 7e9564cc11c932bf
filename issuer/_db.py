"""Engine and sessions.

SQLite: WAL (readers do not block the writer), foreign keys on (off by
default in SQLite), a busy timeout, and every transaction opened with
``BEGIN IMMEDIATE`` so that a read-then-write (check a balance, then debit it)
holds the write lock from its first read: two writers can never both read
the old balance. pysqlite's own implicit transactions are disabled for that
(the SQLAlchemy "serializable isolation / savepoints" recipe).

PostgreSQL: psycopg 3; the ledger serialises writers per member with
``SELECT ... FOR UPDATE`` (see :mod:`issuer._ledger`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.pool import StaticPool
from sqlmodel import Session, create_engine

from issuer._settings import normalise_database_url

__all__ = ["describe_database", "is_sqlite", "make_engine", "session_scope"]


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def describe_database(url: str | URL) -> str:
    """The URL without its password; a relative SQLite path made absolute, because
    ``sqlite:///./tessera.db`` is a different file in every directory."""
    parsed = make_url(url) if isinstance(url, str) else url
    if (parsed.get_backend_name() == "sqlite" and parsed.database
            and parsed.database != ":memory:" and not Path(parsed.database).is_absolute()):
        parsed = parsed.set(database=str(Path(parsed.database).resolve()))
    return parsed.render_as_string(hide_password=True)


def make_engine(url: str, *, echo: bool = False) -> Engine:
    url = normalise_database_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        memory = parsed.database in (None, "", ":memory:")
        kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": 30}}
        if memory:
            # One shared connection, or every pooled connection sees its own empty DB.
            kwargs["poolclass"] = StaticPool
        engine = create_engine(url, echo=echo, **kwargs)
        _sqlite_events(engine, wal=not memory)
        return engine
    return create_engine(url, echo=echo, pool_pre_ping=True)


def _sqlite_events(engine: Engine, *, wal: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        try:
            if wal:
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session in one transaction: committed on success, rolled back on error."""
    with Session(engine, expire_on_commit=False) as session, session.begin():
        yield session
