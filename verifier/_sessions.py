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
from typing import TYPE_CHECKING, Any, Protocol
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
_PURGE_EVERY_MS = 60_000  # SqlSessionStore: expired a minute ago, purged at most this often


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
        # No ping on a file (a SELECT 1 per transaction): nothing to reconnect to.
        self._engine = sa.create_engine(
            url, pool_pre_ping=parsed.get_backend_name() != "sqlite")
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
        self._next_purge_ms = 0

    def put(self, key: str, data: dict[str, Any], *, ttl_seconds: int) -> None:
        import sqlalchemy as sa

        t, text = self.table, _dump(data)
        now_ms = int(time.time() * 1000)
        with self._engine.begin() as conn:
            # The key by its primary key. Sessions expired for a minute go at most once a
            # minute per store, in a statement of their own: ORed into this one, a
            # generic plan on PostgreSQL scanned the whole table on every put (bench/
            # README.md "Hot statements in O(1) without planner statistics (session 7)");
            # ``get`` never answers an expired session either way.
            conn.execute(sa.delete(t).where(t.c.key == _check_key(key)))
            if now_ms >= self._next_purge_ms:
                self._next_purge_ms = now_ms + _PURGE_EVERY_MS
                conn.execute(sa.delete(t).where(t.c.expires_at <= now_ms - _PURGE_EVERY_MS))
            conn.execute(sa.insert(t).values(key=key, data=text,
                                             expires_at=now_ms + ttl_seconds * 1000))

    def get(self, key: str) -> dict[str, Any] | None:
        import sqlalchemy as sa

        t = self.table
        with self._read.connect() as conn:
            row = conn.execute(sa.select(t.c.data).where(
                t.c.key == key, t.c.expires_at > int(time.time() * 1000))).first()
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

    @property
    def client(self) -> redis.Redis:
        return self._client

    def put(self, key: str, data: dict[str, Any], *, ttl_seconds: int) -> None:
        self._client.set(self._prefix + _check_key(key), _dump(data), ex=ttl_seconds)

    def get(self, key: str) -> dict[str, Any] | None:
        return self.loaded(self._client.get(self._prefix + key))

    # put and get queued on a pipeline (tessera.nonces.RedisNonceStore.queue_issue).
    def queue_put(self, pipeline: redis.client.Pipeline, key: str, data: dict[str, Any], *,
                  ttl_seconds: int) -> None:
        pipeline.set(self._prefix + _check_key(key), _dump(data), ex=ttl_seconds)

    def queue_get(self, pipeline: redis.client.Pipeline, key: str) -> None:
        pipeline.get(self._prefix + key)

    @staticmethod
    def loaded(reply: Any) -> dict[str, Any] | None:
        """The session a ``GET`` replied (``None``: no such key)."""
        return None if reply is None else parse_json_object(reply, max_bytes=MAX_SESSION_BYTES)


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
