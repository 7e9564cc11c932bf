"""Engine and sessions.

SQLite: WAL (readers do not block the writer), foreign keys on (off by
default in SQLite), a busy timeout, and every transaction opened with
``BEGIN IMMEDIATE`` so that a read-then-write (check a balance, then debit it)
holds the write lock from its first read: two writers can never both read
the old balance. pysqlite's own implicit transactions are disabled for that
(the SQLAlchemy "serializable isolation / savepoints" recipe).

Read-only work (:func:`read_scope`: GET routes, the brand and token lookups
before a write) opens a plain deferred ``BEGIN`` instead: in WAL mode it
reads a snapshot and never waits for, nor blocks, the writer. Under the
issuance load a profile showed a third of all samples waiting in ``BEGIN
IMMEDIATE``, half of them on such lookups (bench/README.md). A read scope
refuses to flush, so a write slipped into a read path fails loudly instead
of upgrading a deferred transaction (which SQLite may refuse with
``SQLITE_BUSY`` without waiting).

PostgreSQL: psycopg 3; the ledger serialises writers per member with
``SELECT ... FOR UPDATE`` (see :mod:`issuer._ledger`). Connections are pooled
per worker process, and the pool is sized so that all workers together stay
within ``TESSERA_DB_MAX_CONNECTIONS`` (:func:`pool_size_per_worker`).
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.pool import StaticPool
from sqlmodel import Session, create_engine

from issuer._settings import normalise_database_url
from tessera.errors import ErrorCode, TesseraError

__all__ = ["describe_database", "is_sqlite", "make_engine", "pool_size_per_worker",
           "read_scope", "session_scope"]

READ_ONLY: Final = "tessera_read_only"
"""Connection execution option (and ``Session.info`` key) of a read scope."""

DEFAULT_MAX_CONNECTIONS: Final = 40
"""Connections all workers of one service may hold together (PostgreSQL's default
``max_connections`` is 100; several services and the operator share it)."""
MAX_CONNECTIONS_ENV: Final = "TESSERA_DB_MAX_CONNECTIONS"
WORKERS_ENV: Final = "TESSERA_WORKERS"


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
        _sqlite_events(engine, wal=not memory,
                       gate=None if memory else _WriteGate(str(parsed.database)))
        return engine
    size = pool_size_per_worker()
    # No overflow: the budget divided among workers is a ceiling, not a hint.
    # A request beyond it waits for a connection (pool_timeout) instead of
    # pushing the server past max_connections, where every worker fails.
    return create_engine(url, echo=echo, pool_pre_ping=True, pool_size=size,
                         max_overflow=0, pool_timeout=30)


def pool_size_per_worker(environ: Mapping[str, str] | None = None) -> int:
    """Pooled PostgreSQL connections per worker process.

    ``TESSERA_DB_MAX_CONNECTIONS`` (default 40) is the budget of the whole
    service; it is divided among the workers, whose number uvicorn's
    ``--workers`` does not tell the app: ``tessera issuer serve`` exports it
    as ``TESSERA_WORKERS``, and a bare ``uvicorn --workers N`` is told by
    ``WEB_CONCURRENCY`` (uvicorn's own variable for the same). Each worker
    gets at least 2 and at most 40 (uvicorn runs sync routes on a 40-thread
    pool: more connections than threads would never be used).
    """
    env = os.environ if environ is None else environ
    try:
        budget = int(env.get(MAX_CONNECTIONS_ENV, "") or DEFAULT_MAX_CONNECTIONS)
        workers = int(env.get(WORKERS_ENV, "") or env.get("WEB_CONCURRENCY", "") or 1)
    except ValueError:
        raise TesseraError(ErrorCode.MALFORMED, f"{MAX_CONNECTIONS_ENV}, {WORKERS_ENV} and "
                           "WEB_CONCURRENCY must be whole numbers") from None
    if budget < 1 or workers < 1:
        raise TesseraError(ErrorCode.MALFORMED,
                           f"{MAX_CONNECTIONS_ENV} and the worker count must be positive")
    return max(2, min(40, budget // workers))


class _WriteGate:
    """Writers of one SQLite file queue here instead of in SQLite's busy handler.

    A writer that finds the write lock taken is put to sleep by SQLite for 1,
    2, 5, ... then 100 ms at a time, and retries; the lock sits idle while it
    sleeps and whoever happens to retry first wins. Under the issuance load
    that gave p99s of 1-2 s and left the lock unused between writers
    (bench/README.md). Here a writer waits on a thread lock (within the
    worker) and then on ``flock`` of ``<database>.writers`` (between workers):
    both wake the next writer as soon as the previous one commits. SQLite's
    own lock and busy timeout stay underneath for other programs
    (``sqlite3``, backups) that do not take the gate.

    The gate is held from ``BEGIN IMMEDIATE`` to the end of that transaction
    (commit, rollback, or the connection going back to the pool or being
    invalidated), by one connection of the process at a time.
    """

    def __init__(self, database: str, *, timeout: float = 30.0) -> None:
        self._path = database + ".writers"
        self._timeout = timeout
        self._lock = threading.Lock()
        self._fd = -1
        self._pid = 0
        self._holder: Any = None

    def _file(self) -> int:
        if self._pid != os.getpid():  # not the descriptor of a parent before fork
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
            self._pid = os.getpid()
        return self._fd

    def acquire(self, dbapi_connection: Any) -> None:
        # Bounded like SQLite's busy timeout: a second write transaction opened
        # by a thread that already holds the gate fails instead of hanging.
        if not self._lock.acquire(timeout=self._timeout):
            raise TesseraError(ErrorCode.DATABASE_UNAVAILABLE,
                               "database is locked: no write slot within "
                               f"{self._timeout:.0f} s")
        try:
            # Blocking: the holder is a write transaction of another worker,
            # which ends (or its process dies, and the kernel drops the lock).
            fcntl.flock(self._file(), fcntl.LOCK_EX)
        except BaseException:
            self._lock.release()
            raise
        self._holder = dbapi_connection

    def release(self, dbapi_connection: Any) -> None:
        if dbapi_connection is None or self._holder is not dbapi_connection:
            return
        self._holder = None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._lock.release()


def _raw(connection: Any) -> Any:
    return getattr(connection, "dbapi_connection", connection)


def _sqlite_events(engine: Engine, *, wal: bool, gate: _WriteGate | None) -> None:
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
        if connection.get_execution_options().get(READ_ONLY):
            connection.exec_driver_sql("BEGIN")  # deferred: a WAL snapshot, no write lock
            return
        if gate is None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
            return
        raw = _raw(connection.connection)
        gate.acquire(raw)
        try:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            gate.release(raw)
            raise

    if gate is None:
        return
    # The transaction ends in the dialect's commit or rollback (also the
    # pool's rollback-on-return); the pool events catch a connection that
    # goes away without either.
    dialect: Any = engine.dialect
    do_commit, do_rollback = dialect.do_commit, dialect.do_rollback

    def commit_then_release(dbapi_connection: Any) -> None:
        try:
            do_commit(dbapi_connection)
        finally:
            gate.release(_raw(dbapi_connection))

    def rollback_then_release(dbapi_connection: Any) -> None:
        try:
            do_rollback(dbapi_connection)
        finally:
            gate.release(_raw(dbapi_connection))

    dialect.do_commit = commit_then_release
    dialect.do_rollback = rollback_then_release

    @event.listens_for(engine, "checkin")
    def _on_checkin(dbapi_connection: Any, _record: Any) -> None:
        gate.release(dbapi_connection)

    @event.listens_for(engine, "invalidate")
    def _on_invalidate(dbapi_connection: Any, _record: Any, _exc: Any) -> None:
        gate.release(dbapi_connection)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session in one transaction: committed on success, rolled back on error."""
    with Session(engine, expire_on_commit=False) as session, session.begin():
        yield session


@contextmanager
def read_scope(engine: Engine) -> Iterator[Session]:
    """A session in one read-only transaction: on SQLite a deferred ``BEGIN`` (no write
    lock); a flush in it is a bug and raises ``internal_error``."""
    with Session(engine, expire_on_commit=False) as session, session.begin():
        session.info[READ_ONLY] = True
        session.connection(execution_options={READ_ONLY: True})
        yield session


@event.listens_for(Session, "before_flush")
def _refuse_flush_in_read_scope(session: Session, _context: Any, _instances: Any) -> None:
    if session.info.get(READ_ONLY) and (session.new or session.dirty or session.deleted):
        raise TesseraError(ErrorCode.INTERNAL_ERROR, "a write in a read-only session")
