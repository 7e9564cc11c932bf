"""SQLite files shared by several threads and worker processes: how their engines behave.

One policy for every SQLite file a service writes (the issuer's database,
the verifier's nonce and session stores), installed on a SQLAlchemy engine
by :func:`configure_sqlite`:

* WAL journal (readers never wait for the writer), a 30 s busy timeout;
* pysqlite's own implicit transactions off: each transaction opens with
  ``BEGIN IMMEDIATE`` (the write lock from the first statement, so a
  read-then-write cannot interleave with another writer), or with a plain
  deferred ``BEGIN`` on connections carrying the :data:`READ_ONLY`
  execution option (a WAL snapshot, no lock at all);
* writers queue on a :class:`WriteGate` before ``BEGIN IMMEDIATE``.

Why the gate: a writer that finds SQLite's write lock taken is put to sleep
by SQLite's busy handler for 1, 2, 5, ... then 100 ms at a time and retries;
the lock sits idle while it sleeps and whoever retries first wins. Under
load that gave p99s of 1-2 s and, with two workers on one file, less
throughput than one (bench/README.md). The gate is a thread lock (writers of
one process) and an ``flock`` of ``<database>.writers`` (writers of other
processes): both wake the next writer as soon as the previous one ends.
SQLite's own lock and busy timeout stay underneath for programs that do not
take the gate (the ``sqlite3`` shell, a backup).

Checkpoints: SQLite copies the WAL back into the database file (a
checkpoint: a sync of the WAL, the copy, a sync of the file) by default
inside the commit that takes the WAL past 1000 pages, i.e. inside one
request's write transaction while it holds the gate, every other writer of
every worker waiting behind it. A :class:`Checkpointer` (a service starts one
per process for its file, :func:`start_checkpointer`) runs ``PASSIVE``
checkpoints on a thread of its own, beside the writers (a passive checkpoint
takes neither the write lock nor the gate, and never waits for a reader or
writer); while one runs, the write transactions of that file in the process
raise their automatic threshold to :data:`BACKSTOP_PAGES`, a backstop should
the thread fall behind. Durability is the same either way: a checkpoint syncs
the WAL before copying it.

SQLAlchemy is imported inside the functions: the verifier SDK imports
:mod:`tessera.nonces`, which imports this module only for a SQL store.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final

from tessera.errors import ErrorCode, TesseraError

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

__all__ = ["BACKSTOP_PAGES", "DEFERRED_DURABILITY", "READ_ONLY", "Checkpointer", "WriteGate",
           "configure_sqlite", "start_checkpointer", "stop_checkpointer", "write_gate",
           "write_transaction"]

READ_ONLY: Final = "tessera_read_only"
"""Execution option of a connection whose transaction only reads (deferred ``BEGIN``)."""

DEFERRED_DURABILITY: Final = "tessera_deferred_durability"
"""Execution option of a write transaction that may be lost in a power cut until the next
durable commit on the same database makes it durable (see :func:`write_transaction`)."""

_SYNC_DEFAULT: Final = "tessera_synchronous_default"
_SYNC_NOW: Final = "tessera_synchronous_now"
_AUTOCHECKPOINT_NOW: Final = "tessera_wal_autocheckpoint_now"

AUTOCHECKPOINT_PAGES: Final = 1000
"""SQLite's default ``wal_autocheckpoint``: kept when no :class:`Checkpointer` runs."""

BACKSTOP_PAGES: Final = 8000
"""``wal_autocheckpoint`` of write transactions while a :class:`Checkpointer` runs for their
file in the process: a commit checkpoints only if the WAL outgrew this (32 MB of 4 KB pages),
i.e. if the checkpointer thread fell far behind."""

CHECKPOINT_INTERVAL_SECONDS: Final = 0.25

BUSY_TIMEOUT_SECONDS: Final = 30


class WriteGate:
    """One writer at a time per SQLite file, across threads and processes.

    Held from ``BEGIN IMMEDIATE`` to the end of that transaction (commit,
    rollback, or the connection going back to the pool or being invalidated)
    by one connection of the process at a time.
    """

    def __init__(self, database: str, *, timeout: float = BUSY_TIMEOUT_SECONDS) -> None:
        self.path = database + ".writers"
        self._timeout = timeout
        self._lock = threading.Lock()
        self._fd = -1
        self._pid = 0
        self._holder: Any = None

    def _file(self) -> int:
        if self._pid != os.getpid():  # never a parent's descriptor after a fork
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            self._pid = os.getpid()
        return self._fd

    def acquire(self, holder: Any) -> None:
        # Bounded like SQLite's busy timeout: a second write transaction opened
        # by a thread that already holds the gate fails instead of hanging.
        if not self._lock.acquire(timeout=self._timeout):
            raise TesseraError(ErrorCode.DATABASE_UNAVAILABLE,
                               f"database is locked: no write slot within {self._timeout:.0f} s")
        try:
            # Blocking: the holder is a write transaction of another worker,
            # which ends (or its process dies and the kernel drops the lock).
            fcntl.flock(self._file(), fcntl.LOCK_EX)
        except BaseException:
            self._lock.release()
            raise
        self._holder = holder

    def release(self, holder: Any) -> None:
        if holder is None or self._holder is not holder:
            return
        self._holder = None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._lock.release()


_gates: dict[str, WriteGate] = {}
_gates_lock = threading.Lock()


def write_gate(database: str) -> WriteGate:
    """The process's gate of one database file: shared by every engine on that file
    (the verifier's nonce and session stores are two engines on one file)."""
    key = os.path.realpath(database)
    with _gates_lock:
        gate = _gates.get(key)
        if gate is None:
            gate = _gates[key] = WriteGate(key)
        return gate


class Checkpointer:
    """``PASSIVE`` WAL checkpoints of one database file on a thread, every ``interval`` seconds.

    A passive checkpoint copies what it can without waiting for readers or
    writers and without the write lock: the writers keep committing beside it.
    Several workers may run one each on the same file: SQLite lets one
    checkpoint run at a time (the others answer busy and try again on their
    next turn). Its own ``sqlite3`` connection, not an engine's pool, and no
    :class:`WriteGate`. :meth:`stop` ends the thread (and closes its connection)
    before it returns; a checkpoint under way is finished, not cut off.
    """

    def __init__(self, database: str, *, interval: float = CHECKPOINT_INTERVAL_SECONDS) -> None:
        self.database = os.path.realpath(database)
        self.interval = interval
        self.checkpoints = 0  # passive checkpoints that copied pages
        self.errors = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="tessera-sqlite-checkpoint")
        self._thread.start()

    def stop(self, timeout: float = BUSY_TIMEOUT_SECONDS) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def checkpoint(self, connection: Any) -> tuple[int, int, int]:
        """One passive checkpoint: (busy, frames in the WAL, frames copied)."""
        busy, log, copied = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return int(busy), int(log), int(copied)

    def _run(self) -> None:
        import sqlite3

        connection = None
        done = -1
        try:
            while not self._stop.wait(self.interval):
                try:
                    if connection is None:
                        connection = sqlite3.connect(self.database, isolation_level=None,
                                                     check_same_thread=False)
                    busy, _log, copied = self.checkpoint(connection)
                    if not busy and copied != done and copied > 0:
                        self.checkpoints += 1
                    done = copied
                except Exception:  # a checkpoint is an optimisation: the commits' backstop stays
                    self.errors += 1
                    if connection is not None:
                        connection.close()
                        connection = None
        finally:
            if connection is not None:
                connection.close()


_checkpointers: dict[str, list[Checkpointer]] = {}


def start_checkpointer(database: str, *,
                       interval: float = CHECKPOINT_INTERVAL_SECONDS) -> Checkpointer:
    """Start a :class:`Checkpointer` for ``database`` in this process and raise the
    automatic threshold of its write transactions here to :data:`BACKSTOP_PAGES` until
    it stops (:meth:`Checkpointer.stop`; :func:`stop_checkpointer` does both)."""
    checkpointer = Checkpointer(database, interval=interval)
    with _gates_lock:
        _checkpointers.setdefault(checkpointer.database, []).append(checkpointer)
    checkpointer.start()
    return checkpointer


def stop_checkpointer(checkpointer: Checkpointer) -> None:
    """Stop ``checkpointer`` (its thread ended when this returns); the file's write
    transactions in this process go back to SQLite's own threshold unless another runs."""
    with _gates_lock:
        running = _checkpointers.get(checkpointer.database, [])
        if checkpointer in running:
            running.remove(checkpointer)
        if not running:
            _checkpointers.pop(checkpointer.database, None)
    checkpointer.stop()


def _autocheckpoint_pages(database: str) -> int:
    return BACKSTOP_PAGES if _checkpointers.get(database) else AUTOCHECKPOINT_PAGES


_NORMAL: Final = 1
_FULL: Final = 2


@contextmanager
def write_transaction(engine: Engine, *, durable: bool = True) -> Iterator[Connection]:
    """A Core connection in one write transaction; ``durable=False`` lets its commit
    return before the disk has it, on SQLite or PostgreSQL.

    For writes whose loss in a power cut (not a crash of the process: the
    data is with the OS already) does no harm *until* a later write depends
    on them: a c_nonce issued or consumed, a pre-authorized code exchanged
    for an access token. Both engines write their log in order, and a
    durable commit makes everything before it durable: SQLite in WAL mode
    with ``synchronous=FULL`` syncs the WAL file, which holds every earlier
    frame, at its commit; PostgreSQL's synchronous commit flushes the WAL up
    to its own commit record (PostgreSQL manual, "Asynchronous Commit"). Once
    the credential that used a nonce and a token is committed durably, so
    are they; a power cut before that can only take back a nonce or a token
    that nothing was issued with. SQLite gets ``synchronous=NORMAL`` for the
    transaction (the WAL is synced at the next checkpoint or durable commit),
    PostgreSQL ``SET LOCAL synchronous_commit TO OFF``. Every other
    transaction keeps the engine's setting.
    """
    with engine.connect() as conn:
        if not durable and engine.dialect.name == "sqlite":
            conn = conn.execution_options(**{DEFERRED_DURABILITY: True})
        with conn.begin():
            if not durable and engine.dialect.name == "postgresql":
                conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
            yield conn


def _raw(connection: Any) -> Any:
    return getattr(connection, "dbapi_connection", connection)


def configure_sqlite(engine: Engine, *, synchronous: str | None = None,
                     foreign_keys: bool = False) -> None:
    """Install the policy above on a SQLite ``engine`` (in-memory: no WAL, no gate).

    ``synchronous`` (``NORMAL``, ``FULL``) is per connection; None keeps
    SQLite's default (FULL: a committed transaction survives a power cut).
    """
    from sqlalchemy import event

    database = engine.url.database
    memory = database in (None, "", ":memory:")
    gate = None if memory else write_gate(str(database))
    realpath = None if memory else os.path.realpath(str(database))

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        try:
            if not memory:
                cursor.execute("PRAGMA journal_mode=WAL")
            if foreign_keys:
                cursor.execute("PRAGMA foreign_keys=ON")
            if synchronous is not None:
                cursor.execute(f"PRAGMA synchronous={synchronous}")
            cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_SECONDS * 1000}")
            level = int(cursor.execute("PRAGMA synchronous").fetchone()[0])
        finally:
            cursor.close()
        record.info[_SYNC_DEFAULT] = record.info[_SYNC_NOW] = level

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        options = connection.get_execution_options()
        if options.get(READ_ONLY):
            connection.exec_driver_sql("BEGIN")  # deferred: a WAL snapshot, no write lock
            return
        # synchronous is per connection and cannot change inside a transaction:
        # set it (only when it differs) before BEGIN, for this transaction alone.
        info = connection.connection.info
        default = info.get(_SYNC_DEFAULT, _FULL)
        wanted = min(default, _NORMAL) if options.get(DEFERRED_DURABILITY) else default
        if info.get(_SYNC_NOW, default) != wanted:
            connection.exec_driver_sql(f"PRAGMA synchronous={wanted}")
            info[_SYNC_NOW] = wanted
        if gate is None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
            return
        # Likewise the automatic checkpoint threshold: SQLite's own unless a
        # Checkpointer of this process runs for the file (its backstop then).
        pages = _autocheckpoint_pages(realpath) if realpath else AUTOCHECKPOINT_PAGES
        if info.get(_AUTOCHECKPOINT_NOW, AUTOCHECKPOINT_PAGES) != pages:
            connection.exec_driver_sql(f"PRAGMA wal_autocheckpoint={pages}")
            info[_AUTOCHECKPOINT_NOW] = pages
        raw = _raw(connection.connection)
        gate.acquire(raw)
        try:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            gate.release(raw)
            raise

    if gate is None:
        return
    # The transaction ends in the dialect's commit or rollback (the pool's
    # rollback-on-return too); the pool events catch a connection that goes
    # away without either.
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
