"""Engine and sessions.

SQLite (:mod:`tessera.sqlite`): WAL (readers do not block the writer), foreign
keys on (off by default in SQLite), a busy timeout, writers queued on a write
gate, and every transaction opened with
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

import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from sqlalchemy import (
    Executable,
    Insert,
    Table,
    Update,
    bindparam,
    event,
    insert,
    inspect,
    update,
)
from sqlalchemy.engine import URL, CursorResult, Engine, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.pool import StaticPool
from sqlmodel import Session, SQLModel, create_engine

from issuer._settings import normalise_database_url
from tessera.errors import ErrorCode, TesseraError
from tessera.sqlite import DEFERRED_DURABILITY, READ_ONLY, configure_sqlite

__all__ = [
    "core",
    "core_insert",
    "core_update",
    "describe_database",
    "is_sqlite",
    "make_engine",
    "pool_size_per_worker",
    "read_scope",
    "session_scope",
    "table_of",
]

# READ_ONLY (tessera.sqlite) is also the Session.info key of a read scope.


def table_of(model: type[SQLModel]) -> Table:
    """A table model's Core table."""
    table: Table = model.__table__  # type: ignore[attr-defined]
    return table


def core(session: Session, stmt: Executable,
         params: Mapping[str, Any] | None = None) -> CursorResult[Any]:
    """A prebuilt Core statement on the session's connection, answering plain rows.

    No ORM step: no object is built or put in the identity map, and nothing is
    autoflushed first, so it reads what the database holds, not changes the
    session has pending (the hot paths that use it write through Core, or flush
    first). About half the Python of ``session.exec`` per statement
    (bench/README.md "Redemption, third pass (session 5)").
    """
    return session.connection().execute(stmt, params)


def core_insert(model: type[SQLModel]) -> Insert:
    """An ``INSERT`` into ``model``'s table as a Core statement: executed through a
    session it skips the unit of work (no object, no flush; the session does not know
    the row). For append-only rows the transaction does not read back as objects."""
    return insert(table_of(model))


_UPDATES: dict[tuple[str, tuple[str, ...]], Update] = {}


def core_update(session: Session, row: SQLModel, **values: Any) -> None:
    """``UPDATE`` one loaded row's ``values`` as a Core statement and make them the
    object's committed state: the row is written now and the object is not dirty, so
    no flush has to find and write it (the transaction's later reads see both)."""
    table = row.__table__  # type: ignore[attr-defined]
    (pk,) = table.primary_key.columns
    key = (table.name, tuple(values))
    stmt = _UPDATES.get(key)
    if stmt is None:
        stmt = _UPDATES[key] = (update(table).where(pk == bindparam("_pk"))
                                .values({name: bindparam(name) for name in values}))
    done = core(session, stmt, {"_pk": inspect(row).identity[0], **values})
    if done.rowcount != 1:
        raise TesseraError(ErrorCode.INTERNAL_ERROR, f"{table.name} row to update is gone")
    for name, value in values.items():
        set_committed_value(row, name, value)

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
        configure_sqlite(engine, foreign_keys=True)
        return engine
    size = pool_size_per_worker()
    # No overflow: the budget divided among workers is a ceiling, not a hint.
    # A request beyond it waits for a connection (pool_timeout) instead of
    # pushing the server past max_connections, where every worker fails.
    engine = create_engine(url, echo=echo, pool_size=size, max_overflow=0, pool_timeout=30)
    _ping_when_idle(engine)
    return engine


PING_AFTER_IDLE_SECONDS: Final = 1.0
"""A pooled connection idle longer than this is pinged before use (see _ping_when_idle)."""
_IDLE_SINCE: Final = "tessera_idle_since"


def _ping_when_idle(engine: Engine) -> None:
    """Check a pooled connection before use only when it has sat idle.

    ``pool_pre_ping`` pings on every checkout: a round trip per transaction
    (two per redemption, ten a second per worker for the log's sequencer),
    bench/README.md "Redemption profile (session 4)". What it guards against
    is a connection that died while it sat in the pool (a database restart, an
    idle timeout): one used again within a second has just answered its last
    transaction, so it is handed out as is; one idle longer is pinged, and a
    dead one is replaced (``DisconnectionError``: the pool discards it and
    takes another, SQLAlchemy's pessimistic-disconnect recipe). A connection
    that dies while in use fails its transaction either way, with or without
    a ping before it.
    """
    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get(_IDLE_SINCE)
        if since is not None and time.monotonic() - since < PING_AFTER_IDLE_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:  # any failure: this connection is not to be trusted
            raise DisconnectionError("pooled connection failed its ping") from exc


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


@contextmanager
def session_scope(engine: Engine, *, durable: bool = True) -> Iterator[Session]:
    """A session in one transaction: committed on success, rolled back on error.

    ``durable=False``: the commit does not wait for the disk, for a write that a
    later durable commit makes durable before anything depends on it (see
    :func:`tessera.sqlite.write_transaction`; the token endpoint).
    """
    with Session(engine, expire_on_commit=False) as session, session.begin():
        if not durable:
            if is_sqlite(engine):
                session.connection(execution_options={DEFERRED_DURABILITY: True})
            elif engine.dialect.name == "postgresql":
                session.connection().exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
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
