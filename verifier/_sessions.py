"""Checkout session state shared by every instance of the verifier service.

A session is a small JSON document (its request, its status, its result)
that the till polls; it is read many times, so it cannot live in a nonce
store, whose ``consume`` is destructive. Single-use steps (fetching the
request object, accepting a response) stay in the nonce store, whose
``consume`` is atomic across instances.

Three stores, as for nonces (:mod:`tessera.nonces`): memory, SQL (SQLite or
PostgreSQL through SQLAlchemy Core, imported lazily) and Redis (``SET EX``).
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import urlsplit

from tessera.encoding import parse_json_object
from tessera.errors import ErrorCode, TesseraError

if TYPE_CHECKING:
    import redis

__all__ = [
    "MemorySessionStore",
    "RedisSessionStore",
    "SessionStore",
    "SqlSessionStore",
    "session_store_from_url",
]

MAX_SESSION_BYTES = 256 * 1024
_T = TypeVar("_T")


class SessionStore(Protocol):
    def put(self, key: str, data: dict[str, Any], *, ttl_seconds: int) -> None: ...

    def get(self, key: str) -> dict[str, Any] | None: ...


def _dump(data: dict[str, Any]) -> str:
    text = json.dumps(data, separators=(",", ":"))
    if len(text) > MAX_SESSION_BYTES:
        raise TesseraError(ErrorCode.TOO_LARGE, "session data too large")
    return text


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not 0 < len(key) <= 200:
        raise TesseraError(ErrorCode.MALFORMED, "session key must be 1..200 characters")
    return key


class MemorySessionStore:
    """One process; bounded (oldest dropped first)."""

    def __init__(self, *, max_entries: int = 100_000) -> None:
        self._max = max_entries
        self._lock = threading.Lock()
        self._items: OrderedDict[str, tuple[float, str]] = OrderedDict()

    def put(self, key: str, data: dict[str, Any], *, ttl_seconds: int) -> None:
        text = _dump(data)
        with self._lock:
            self._items[_check_key(key)] = (time.monotonic() + ttl_seconds, text)
            self._items.move_to_end(key)
            while len(self._items) > self._max:
                self._items.popitem(last=False)

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            item = self._items.get(key)
        if item is None or item[0] <= time.monotonic():
            return None
        return parse_json_object(item[1], max_bytes=MAX_SESSION_BYTES)


class SqlSessionStore:
    """Sessions in one table; ``put`` replaces the row in one transaction.

    On SQLite the engine follows :func:`tessera.sqlite.configure_sqlite`: WAL
    (readers run beside the one writer; in rollback-journal mode every commit
    locked the whole file, bench/README.md), ``get`` in a deferred read
    transaction, and writers queued on the file's write gate, which the nonce
    store on the same file shares: with two workers, SQLite's sleeping busy
    handler had made two workers slower than one. ``synchronous=NORMAL``
    here (a power cut may lose the last session writes, which a till simply
    retries), as for the nonce store (:class:`tessera.nonces.SqlNonceStore`,
    "Durability": a process crash loses no commit).
    """

    def __init__(self, url: str, *, table_name: str = "tessera_verifier_session") -> None:
        import sqlalchemy as sa

        scheme, _sep, rest = url.partition("://")
        if scheme in ("postgresql", "postgres"):
            url = "postgresql+psycopg://" + rest
        parsed = sa.make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
            raise TesseraError(ErrorCode.INVALID_REQUEST,
                               "in-memory SQLite cannot be shared: use memory:// or a file")
        # No ping of pooled connections (a SELECT 1 round trip per operation):
        # a file has nothing to reconnect to, and on PostgreSQL an operation
        # whose connection had died is retried once (_run). PostgreSQL runs in
        # autocommit (each operation is one statement) with
        # synchronous_commit off: a session write does not wait for the WAL
        # flush, as SQLite's NORMAL does not (a power cut may lose the last
        # session writes, which a till retries; nonces keep their own store's
        # durability).
        self._retry_dropped = parsed.get_backend_name() != "sqlite"
        if self._retry_dropped:
            self._engine = sa.create_engine(
                url, isolation_level="AUTOCOMMIT",
                connect_args={"options": "-c synchronous_commit=off"})
        else:
            self._engine = sa.create_engine(url)
        self._read = self._engine
        if self._engine.dialect.name == "sqlite":
            from tessera.sqlite import READ_ONLY, configure_sqlite

            configure_sqlite(self._engine, synchronous="NORMAL")
            self._read = self._engine.execution_options(**{READ_ONLY: True})
        self.table = sa.Table(
            table_name, sa.MetaData(),
            sa.Column("key", sa.String(200), primary_key=True),
            sa.Column("data", sa.Text, nullable=False),
            sa.Column("expires_at", sa.BigInteger, nullable=False, index=True),
        )
        try:
            self.table.create(self._engine, checkfirst=True)
        except sa.exc.DBAPIError:
            if not sa.inspect(self._engine).has_table(table_name):
                raise
        t = self.table
        # Built once: one statement per operation. ``put`` is an upsert (a
        # DELETE and an INSERT before); expired rows go in a purge at most
        # once a minute per process instead of a range DELETE in every put.
        from sqlalchemy.dialects import postgresql as pg_dialect
        from sqlalchemy.dialects import sqlite as sqlite_dialect

        insert: Any = (pg_dialect.insert if self._engine.dialect.name == "postgresql"
                       else sqlite_dialect.insert)
        ins = insert(t).values(key=sa.bindparam("k"), data=sa.bindparam("d"),
                               expires_at=sa.bindparam("e"))
        self._put = ins.on_conflict_do_update(
            index_elements=[t.c.key],
            set_={"data": ins.excluded.data, "expires_at": ins.excluded.expires_at})
        self._get = sa.select(t.c.data).where(t.c.key == sa.bindparam("k"),
                                              t.c.expires_at > sa.bindparam("now"))
        self._purge = sa.delete(t).where(t.c.expires_at <= sa.bindparam("before"))
        self._next_purge = 0.0
        self._purge_lock = threading.Lock()

    def _run(self, operation: Callable[[], _T]) -> _T:
        """Once more if the pooled PostgreSQL connection had died (no ping)."""
        import sqlalchemy as sa

        try:
            return operation()
        except sa.exc.DBAPIError as exc:
            if not (self._retry_dropped and exc.connection_invalidated):
                raise
        return operation()

    def put(self, key: str, data: dict[str, Any], *, ttl_seconds: int) -> None:
        text = _dump(data)
        now = time.time()
        params = {"k": _check_key(key), "d": text, "e": int(now * 1000) + ttl_seconds * 1000}

        def put() -> None:
            with self._engine.begin() as conn:
                conn.execute(self._put, params)

        self._run(put)
        if now >= self._next_purge and self._purge_lock.acquire(blocking=False):
            try:
                self._next_purge = now + 60
                with self._engine.begin() as conn:
                    conn.execute(self._purge, {"before": int(now * 1000) - 60_000})
            finally:
                self._purge_lock.release()

    def get(self, key: str) -> dict[str, Any] | None:
        params = {"k": key, "now": int(time.time() * 1000)}

        def get() -> Any:
            with self._read.connect() as conn:
                return conn.execute(self._get, params).first()

        row = self._run(get)
        return None if row is None else parse_json_object(row[0], max_bytes=MAX_SESSION_BYTES)


class RedisSessionStore:
    def __init__(self, url_or_client: str | redis.Redis,
                 prefix: str = "tessera:verifier:session:") -> None:
        import redis as redis_lib

        self._client: redis.Redis = (
            redis_lib.Redis.from_url(url_or_client) if isinstance(url_or_client, str)
            else url_or_client
        )
        self._prefix = prefix

    def put(self, key: str, data: dict[str, Any], *, ttl_seconds: int) -> None:
        self._client.set(self._prefix + _check_key(key), _dump(data), ex=ttl_seconds)

    def get(self, key: str) -> dict[str, Any] | None:
        raw: Any = self._client.get(self._prefix + key)
        return None if raw is None else parse_json_object(raw, max_bytes=MAX_SESSION_BYTES)


def session_store_from_url(url: str, *, redis_prefix: str = "tessera:verifier:session:",
                           table_name: str = "tessera_verifier_session") -> SessionStore:
    scheme = urlsplit(url).scheme.lower()
    if scheme == "memory":
        return MemorySessionStore()
    if scheme.split("+", 1)[0] in ("sqlite", "postgresql", "postgres"):
        return SqlSessionStore(url, table_name=table_name)
    if scheme in ("redis", "rediss", "unix"):
        return RedisSessionStore(url, prefix=redis_prefix)
    raise TesseraError(ErrorCode.INVALID_REQUEST, f"unsupported session store URL {scheme!r}")
