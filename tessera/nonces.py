"""Single-use nonces and replay caches shared by every instance of a service.

Three stores implement :class:`tessera.typing.NonceStore` plus ``remember`` and ``take``:

- :class:`MemoryNonceStore`: one process, bounded, for tests and single-node use.
- :class:`SqlNonceStore`: SQLAlchemy Core over SQLite (>= 3.35) or PostgreSQL.
- :class:`RedisNonceStore`: Redis (>= 6.2 for ``GETDEL``).

``consume`` is the security-relevant operation: a nonce that two verifier
instances both accept is a replay. Each backend therefore consumes with one
atomic server-side step (a lock, ``DELETE ... RETURNING``, ``GETDEL``), never
with a read followed by a delete.

``remember(value, ttl_seconds=...)`` records a value if it is not already
recorded and unexpired, and says whether it did (``True`` = new). It is the
atomic "check and record" that :class:`ReplayCache` builds on to refuse a
replayed KB-JWT or ``jti`` (OpenID4VP 1.0 §14.1 asks verifiers to detect
replay; RFC 7519 §4.1.7 makes ``jti`` the identifier for it).

``take(value)`` is ``consume(value) is not None`` without reading the data
back: what a verifier that still holds the request object needs.

SQLAlchemy and redis are imported inside the classes that need them: the
verifier SDK imports this module without either installed.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import secrets
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

from tessera.encoding import b64url_encode, parse_json_object
from tessera.errors import ErrorCode, TesseraError
from tessera.typing import Clock, NonceStore

if TYPE_CHECKING:
    import redis
    from sqlalchemy import Connection, Engine, MetaData, Table

    # Built on first access by the module ``__getattr__`` below (PEP 562), so
    # that importing this module does not import SQLAlchemy.
    nonce_metadata: MetaData
    nonce_table: Table

__all__ = [
    "DEFAULT_TABLE_NAME",
    "MAX_DATA_BYTES",
    "MAX_VALUE_BYTES",
    "MemoryNonceStore",
    "RedisNonceStore",
    "RememberingNonceStore",
    "ReplayCache",
    "SqlNonceStore",
    "TakingNonceStore",
    "define_nonce_table",
    "new_nonce",
    "nonce_metadata",
    "nonce_store_from_url",
    "nonce_table",
]

DEFAULT_TABLE_NAME = "tessera_nonce"
MAX_VALUE_BYTES = 255
"""Longest value a store accepts (UTF-8 bytes): the SQL primary key is VARCHAR(255)."""
MAX_DATA_BYTES = 64 * 1024
"""Largest JSON payload attached to a nonce: nonces carry request state, not documents."""
MAX_TTL_SECONDS = 30 * 24 * 3600
"""A nonce living longer than a month is a bug, not a nonce."""
MIN_NONCE_BYTES = 16
SQLITE_SYNCHRONOUS = "NORMAL"
"""``PRAGMA synchronous`` of a SQLite nonce store (see :class:`SqlNonceStore`, "Durability")."""


def new_nonce(nbytes: int = MIN_NONCE_BYTES) -> str:
    """A fresh unpredictable nonce: ``nbytes`` (>= 16, i.e. 128 bits) of CSPRNG, base64url."""
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < MIN_NONCE_BYTES:
        raise TesseraError(
            ErrorCode.INVALID_REQUEST, f"a nonce needs at least {MIN_NONCE_BYTES} random bytes"
        )
    return secrets.token_urlsafe(nbytes)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _now_ms(clock: Clock) -> int:
    if clock is _utc_now:
        # The system clock without a datetime made and taken apart per call.
        return int(time.time() * 1000)
    now = clock()
    if now.tzinfo is None:
        # A naive datetime's timestamp() is local time: expiry would shift by the UTC offset.
        raise TesseraError(ErrorCode.INVALID_REQUEST, "clock must return an aware datetime")
    return int(now.timestamp() * 1000)


def _check_value(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise TesseraError(ErrorCode.MALFORMED, "nonce value must be a non-empty string")
    if "\x00" in value:  # PostgreSQL text cannot hold NUL
        raise TesseraError(ErrorCode.MALFORMED, "nonce value contains NUL")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:  # lone surrogates cannot be stored anywhere
        raise TesseraError(ErrorCode.MALFORMED, "nonce value is not valid Unicode") from exc
    if size > MAX_VALUE_BYTES:
        raise TesseraError(ErrorCode.TOO_LARGE, f"nonce value over {MAX_VALUE_BYTES} bytes")
    return value


def _valid_value(value: object) -> bool:
    """Whether ``value`` could ever have been stored (else consuming it is simply a miss)."""
    try:
        _check_value(value)
    except TesseraError:
        return False
    return True


def _check_ttl(ttl_seconds: object) -> int:
    if (
        isinstance(ttl_seconds, bool)
        or not isinstance(ttl_seconds, int)
        or not 0 < ttl_seconds <= MAX_TTL_SECONDS
    ):
        raise TesseraError(
            ErrorCode.INVALID_REQUEST,
            f"ttl_seconds must be an integer in 1..{MAX_TTL_SECONDS}",
        )
    return ttl_seconds


def _dump_data(data: dict[str, Any] | None) -> str:
    """JSON text stored with the nonce; ASCII-only so every backend stores it verbatim."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise TesseraError(ErrorCode.MALFORMED, "nonce data must be a JSON object")
    try:
        text = json.dumps(
            data, separators=(",", ":"), sort_keys=True, ensure_ascii=True, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise TesseraError(ErrorCode.MALFORMED, "nonce data is not JSON-serializable") from exc
    if len(text) > MAX_DATA_BYTES:
        raise TesseraError(ErrorCode.TOO_LARGE, f"nonce data over {MAX_DATA_BYTES} bytes")
    # Refused now what _load_data would refuse at consume (an int beyond
    # I-JSON's range, deep nesting): the caller sees it, not the next reader.
    _load_data(text)
    return text


def _load_data(text: str | bytes) -> dict[str, Any]:
    # Shared stores can be written by other processes: parse as untrusted.
    return parse_json_object(text, max_bytes=MAX_DATA_BYTES)


@runtime_checkable
class RememberingNonceStore(NonceStore, Protocol):
    """A :class:`~tessera.typing.NonceStore` that can also check-and-record atomically."""

    def remember(self, value: str, *, ttl_seconds: int) -> bool:
        """Record ``value``: ``True`` if newly recorded, ``False`` if already live."""
        ...


@runtime_checkable
class TakingNonceStore(NonceStore, Protocol):
    """A :class:`~tessera.typing.NonceStore` that can consume a value without reading its data."""

    def take(self, value: str) -> bool:
        """Consume ``value``: ``True`` exactly once, as ``consume(value) is not None`` would be."""
        ...


class ReplayCache:
    """Refuses a value seen before within its time-to-live (KB-JWTs, ``jti``).

    Values are stored as ``namespace + base64url(SHA-256(value))``: a bounded
    key whatever the token length, no raw tokens at rest, and no way to
    consume a replay entry as if it were an issued nonce in a shared store.
    """

    MAX_INPUT_BYTES = 64 * 1024

    def __init__(self, store: RememberingNonceStore, *, namespace: str = "replay:") -> None:
        self._store = store
        self._namespace = namespace

    def seen(self, value: str, ttl_seconds: int) -> bool:
        """``True`` if ``value`` was already recorded (a replay); otherwise record it."""
        if not isinstance(value, str) or not value:
            raise TesseraError(ErrorCode.MALFORMED, "replay value must be a non-empty string")
        raw = value.encode("utf-8", "surrogatepass")
        if len(raw) > self.MAX_INPUT_BYTES:
            raise TesseraError(ErrorCode.TOO_LARGE, "replay value too large")
        key = self._namespace + b64url_encode(hashlib.sha256(raw).digest())
        return not self._store.remember(key, ttl_seconds=ttl_seconds)


# --------------------------------------------------------------------------- memory


class _RecordingStore(ABC):
    """``issue`` and ``remember`` on top of each backend's atomic ``_record``.

    ``_record(value, ttl_seconds, data_text)`` stores the value if it is not
    live and says whether it did; the checks on input live here, once.
    """

    @abstractmethod
    def _record(self, value: str, ttl_seconds: int, data_text: str) -> bool: ...

    def issue(self, value: str, *, ttl_seconds: int, data: dict[str, Any] | None = None) -> None:
        """Record a fresh nonce; ``conflict`` if the value is already live."""
        value, ttl_seconds, text = _check_value(value), _check_ttl(ttl_seconds), _dump_data(data)
        if not self._record(value, ttl_seconds, text):
            raise TesseraError(ErrorCode.CONFLICT, "nonce already issued")

    def remember(self, value: str, *, ttl_seconds: int) -> bool:
        """``True`` if newly recorded, ``False`` if already present and unexpired."""
        return self._record(_check_value(value), _check_ttl(ttl_seconds), "{}")

    @abstractmethod
    def consume(self, value: str) -> dict[str, Any] | None: ...

    def take(self, value: str) -> bool:
        """Consume ``value`` when only "was it live?" matters: ``True`` exactly once.

        The verifier holding the request object already has the data; this
        spares it reading and parsing it again. Same atomic step as ``consume``.
        """
        return self.consume(value) is not None


class MemoryNonceStore(_RecordingStore):
    """Process-local store: a dict under a lock, with a heap of expiry times.

    Expired entries are purged from the heap on every write, so the cost is
    amortised O(log n). When ``max_entries`` unexpired values are held, new
    ones are refused with ``too_large`` rather than growing without bound.
    """

    def __init__(self, clock: Clock = _utc_now, *, max_entries: int = 1_000_000) -> None:
        if max_entries < 1:
            raise TesseraError(ErrorCode.INVALID_REQUEST, "max_entries must be positive")
        self._clock = clock
        self._max = max_entries
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[int, str]] = {}  # value -> (expires_at_ms, data JSON)
        self._heap: list[tuple[int, str]] = []  # (expires_at_ms, value); may hold stale items

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __bool__(self) -> bool:
        # A store is a service, not a collection: an empty one must not read
        # as "no store" in ``nonces or default`` (that silently split shared
        # stores between verifier instances once).
        return True

    def _purge_locked(self, now_ms: int) -> int:
        removed = 0
        heap, entries = self._heap, self._entries
        while heap and heap[0][0] <= now_ms:
            expires_at, value = heapq.heappop(heap)
            current = entries.get(value)
            # A consumed-then-reissued value leaves an older heap item behind.
            if current is not None and current[0] == expires_at:
                del entries[value]
                removed += 1
        # Issue-then-consume traffic leaves stale heap items until they expire;
        # rebuild so the heap stays proportional to the live entries.
        if len(heap) > 2 * len(entries) + 1024:
            self._heap = [(exp, v) for v, (exp, _) in entries.items()]
            heapq.heapify(self._heap)
        return removed

    def purge_expired(self) -> int:
        """Drop expired entries now; returns how many were removed."""
        now_ms = _now_ms(self._clock)
        with self._lock:
            return self._purge_locked(now_ms)

    def _record(self, value: str, ttl_seconds: int, data_text: str) -> bool:
        now_ms = _now_ms(self._clock)
        with self._lock:
            self._purge_locked(now_ms)
            current = self._entries.get(value)
            if current is not None and current[0] > now_ms:
                return False
            if current is None and len(self._entries) >= self._max:
                raise TesseraError(
                    ErrorCode.TOO_LARGE, f"nonce store full ({self._max} unexpired entries)"
                )
            expires_at = now_ms + ttl_seconds * 1000
            self._entries[value] = (expires_at, data_text)
            heapq.heappush(self._heap, (expires_at, value))
            return True

    def consume(self, value: str) -> dict[str, Any] | None:
        """The data stored with ``value`` (``{}`` if none), exactly once; else ``None``."""
        if not _valid_value(value):
            return None
        now_ms = _now_ms(self._clock)
        with self._lock:
            entry = self._entries.pop(value, None)
        if entry is None or entry[0] <= now_ms:
            return None
        # This process wrote the text (json.dumps of data _check_data accepted)
        # and no other can reach it: the strict parse for shared stores is not
        # needed here, and was a tenth of Verifier.verify's own time.
        data: dict[str, Any] = json.loads(entry[1])
        return data

    def take(self, value: str) -> bool:
        # consume() minus json.loads: the data stays text until a consume asks.
        # Only values _check_value accepted were ever stored, so any other
        # string is simply absent from the dict: no need to validate it here.
        if not isinstance(value, str):
            return False
        now_ms = _now_ms(self._clock)
        with self._lock:
            entry = self._entries.pop(value, None)
        return entry is not None and entry[0] > now_ms


# --------------------------------------------------------------------------- SQL


def define_nonce_table(metadata: MetaData, name: str = DEFAULT_TABLE_NAME) -> Table:
    """Define the nonce table on ``metadata`` (e.g. the issuer's, for Alembic autogenerate)."""
    from sqlalchemy import BigInteger, Column, Index, String, Table, Text

    return Table(
        name,
        metadata,
        Column("value", String(MAX_VALUE_BYTES), primary_key=True),
        Column("data", Text, nullable=False),
        # Unix time in milliseconds: compares identically on SQLite and
        # PostgreSQL, with none of SQLite's naive-datetime text storage.
        Column("expires_at", BigInteger, nullable=False),
        Index(f"ix_{name}_expires_at", "expires_at"),
    )


_lazy_lock = threading.Lock()
_lazy: dict[str, Any] = {}


def __getattr__(name: str) -> Any:
    if name not in ("nonce_table", "nonce_metadata"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    with _lazy_lock:
        if not _lazy:
            from sqlalchemy import MetaData

            metadata = MetaData()
            _lazy["nonce_metadata"] = metadata
            _lazy["nonce_table"] = define_nonce_table(metadata)
    return _lazy[name]


def _normalise_sql_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if scheme in ("postgresql", "postgres"):
        # SQLAlchemy's default PostgreSQL driver is psycopg2; Tessera ships psycopg 3.
        return "postgresql+psycopg://" + rest
    return scheme + sep + rest


class SqlNonceStore(_RecordingStore):
    """Nonces in one SQL table (SQLite >= 3.35 or PostgreSQL), through SQLAlchemy Core.

    ``consume`` is a single ``DELETE ... WHERE value = :v AND expires_at > :now
    RETURNING data``: the database's row lock (PostgreSQL) or write lock
    (SQLite) lets exactly one of several concurrent consumers, in any process,
    get the row back. Expiry is judged by the application clock, so servers
    sharing a table need synchronised clocks (NTP), as for any JWT ``exp``.

    Durability on SQLite (a store made from a URL): WAL with
    ``synchronous=NORMAL`` (:data:`SQLITE_SYNCHRONOUS`). A commit is in the
    WAL file, i.e. in the operating system's cache, before ``consume``
    returns, so a consumed nonce stays consumed when the service process
    crashes or is killed at any point (tests/tessera/test_nonces.py kills
    one). What NORMAL gives up is the fsync per commit: a power cut or kernel
    crash may lose the last commits since the WAL was last synced, and so
    bring back a nonce consumed in those seconds. That is the guarantee the
    Redis store gives with its default persistence (an append-only file
    synced every second, or snapshots), and a revived nonce is one still
    inside its TTL (minutes) whose checkout the till has already seen
    answered. FULL cost four fsyncs per checkout, one writer at a time per
    file: 3.5-8 ms each on the disk measured, a ceiling of about 50 checkouts/s
    per file whatever the number of workers (bench/README.md). A deployment
    that must keep consumed nonces across a power cut uses PostgreSQL
    (``synchronous_commit=on``, its default), or passes its own engine.
    """

    def __init__(
        self,
        url_or_engine: str | Engine,
        *,
        table_name: str = DEFAULT_TABLE_NAME,
        clock: Clock = _utc_now,
        create_table: bool = True,
        purge_interval_seconds: int = 60,
        purge_batch: int = 5000,
        durable_commits: bool = True,
    ) -> None:
        """``durable_commits=False``: issue and consume do not wait for the disk
        (:func:`tessera.sqlite.write_transaction`) even on an engine whose
        commits otherwise do (the issuer passes its own, FULL / synchronous
        commit), for a store whose consumption is followed by a durable write
        on the same database that depends on it: the issuer's c_nonce and the
        credential issued with it. On PostgreSQL this is the one way to relax a
        store; a SQLite store made from a URL is NORMAL already ("Durability")."""
        import sqlalchemy as sa

        if isinstance(url_or_engine, str):
            url = _normalise_sql_url(url_or_engine)
            parsed = sa.make_url(url)
            if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
                # Each pooled connection would get its own empty database.
                raise TesseraError(
                    ErrorCode.INVALID_REQUEST,
                    "in-memory SQLite cannot be shared: use memory:// or a SQLite file",
                )
            sqlite = parsed.get_backend_name() == "sqlite"
            # A file has no server connection to lose: no ping (a SELECT 1 per
            # transaction) on SQLite.
            engine = sa.create_engine(url, pool_pre_ping=not sqlite)
            if sqlite:
                # WAL, BEGIN IMMEDIATE and the file's write gate (shared with
                # any other store on the file): see tessera.sqlite. NORMAL, not
                # FULL: see the class docstring ("Durability").
                from tessera.sqlite import configure_sqlite

                configure_sqlite(engine, synchronous=SQLITE_SYNCHRONOUS)
        else:
            engine = url_or_engine
        if engine.dialect.name == "sqlite" and sqlite3.sqlite_version_info < (3, 35, 0):
            raise TesseraError(
                ErrorCode.INVALID_REQUEST,
                f"SQLite {sqlite3.sqlite_version} lacks DELETE ... RETURNING (needs >= 3.35)",
            )
        if not engine.dialect.delete_returning:
            raise TesseraError(
                ErrorCode.INVALID_REQUEST,
                f"database {engine.dialect.name!r} lacks DELETE ... RETURNING",
            )
        self._engine = engine
        self._durable = durable_commits
        self._clock = clock
        if table_name == DEFAULT_TABLE_NAME:
            self.table: Table = __getattr__("nonce_table")
        else:
            self.table = define_nonce_table(sa.MetaData(), table_name)
        self._purge_interval_ms = purge_interval_seconds * 1000
        self._purge_batch = purge_batch
        self._next_purge_ms = 0
        self._purge_lock = threading.Lock()
        if create_table:
            self._create_table()

    @property
    def engine(self) -> Engine:
        return self._engine

    def _create_table(self) -> None:
        import sqlalchemy as sa

        try:
            self.table.create(self._engine, checkfirst=True)
        except sa.exc.DBAPIError:
            # Another process may have created it between the check and the
            # CREATE (PostgreSQL then reports a duplicate pg_type row).
            if not sa.inspect(self._engine).has_table(self.table.name):
                raise

    def _record(self, value: str, ttl_seconds: int, data_text: str) -> bool:
        import sqlalchemy as sa

        from tessera.sqlite import write_transaction

        t = self.table
        now_ms = _now_ms(self._clock)
        try:
            with write_transaction(self._engine, durable=self._durable) as conn:
                # An expired row that no purge has reached yet is logically gone.
                conn.execute(
                    sa.delete(t).where(t.c.value == value, t.c.expires_at <= now_ms)
                )
                conn.execute(
                    sa.insert(t).values(
                        value=value, data=data_text, expires_at=now_ms + ttl_seconds * 1000
                    )
                )
        except sa.exc.IntegrityError:
            # The primary key makes this the atomic check: one insert wins.
            return False
        self._maybe_purge(now_ms)
        return True

    def consume(self, value: str) -> dict[str, Any] | None:
        """The data stored with ``value`` (``{}`` if none), exactly once; else ``None``."""
        if not _valid_value(value):
            return None
        from tessera.sqlite import write_transaction

        with write_transaction(self._engine, durable=self._durable) as conn:
            return self._consume(conn, value)

    def consume_on(self, connection: Connection, value: str) -> dict[str, Any] | None:
        """``consume`` inside the caller's open transaction on ``connection``, a connection
        to this store's database: the nonce is used up if, and when, that transaction
        commits. The way for a writer on SQLite, where the file's write gate admits one
        write transaction and a second one for the store would wait behind the first."""
        if not _valid_value(value):
            return None
        return self._consume(connection, value)

    def _consume(self, conn: Connection, value: str) -> dict[str, Any] | None:
        import sqlalchemy as sa

        t = self.table
        row = conn.execute(
            sa.delete(t)
            .where(t.c.value == value, t.c.expires_at > _now_ms(self._clock))
            .returning(t.c.data)
        ).first()
        return None if row is None else _load_data(row[0])

    def purge_expired(self) -> int:
        """Delete expired rows now, in batches; returns how many were removed."""
        import sqlalchemy as sa

        t = self.table
        now_ms = _now_ms(self._clock)
        total = 0
        while True:
            # PostgreSQL has no DELETE ... LIMIT; a bounded subquery keeps each
            # transaction (and its locks) short on a large backlog.
            batch = sa.select(t.c.value).where(t.c.expires_at <= now_ms).limit(self._purge_batch)
            with self._engine.begin() as conn:
                removed = conn.execute(sa.delete(t).where(t.c.value.in_(batch))).rowcount
            total += removed
            if removed < self._purge_batch:
                return total

    def _maybe_purge(self, now_ms: int) -> None:
        if now_ms < self._next_purge_ms or not self._purge_lock.acquire(blocking=False):
            return
        try:
            self._next_purge_ms = now_ms + self._purge_interval_ms
            self.purge_expired()
        finally:
            self._purge_lock.release()


# --------------------------------------------------------------------------- Redis


class RedisNonceStore(_RecordingStore):
    """Nonces as Redis keys with a server-side TTL (``SET NX EX``), consumed with ``GETDEL``.

    Expiry follows the Redis server clock, so there is no injectable clock.
    ``GETDEL`` needs Redis >= 6.2.
    """

    def __init__(
        self, url_or_client: str | redis.Redis, prefix: str = "tessera:nonce:"
    ) -> None:
        import redis as redis_lib

        if isinstance(url_or_client, str):
            self._client: redis.Redis = redis_lib.Redis.from_url(url_or_client)
        else:
            self._client = url_or_client
        self._prefix = prefix

    @property
    def client(self) -> redis.Redis:
        return self._client

    def _key(self, value: str) -> str:
        return self._prefix + value

    def _record(self, value: str, ttl_seconds: int, data_text: str) -> bool:
        # SET NX EX is the atomic "record if absent" (expiry on the server clock).
        return bool(self._client.set(self._key(value), data_text, nx=True, ex=ttl_seconds))

    def consume(self, value: str) -> dict[str, Any] | None:
        """The data stored with ``value`` (``{}`` if none), exactly once; else ``None``."""
        if not _valid_value(value):
            return None
        raw: Any = self._client.getdel(self._key(value))
        if raw is None:
            return None
        return _load_data(raw)

    def take(self, value: str) -> bool:
        # DEL is as atomic as GETDEL, and Redis treats an expired key as absent.
        if not _valid_value(value):
            return False
        return bool(self._client.delete(self._key(value)))

    # The same commands queued on a pipeline of this store's client, so that a
    # caller can send a step's independent commands in one round trip
    # (verifier._service: bench/README.md, "Checkout, per-request cost (session 5)").

    def queue_issue(self, pipeline: redis.client.Pipeline, value: str, *, ttl_seconds: int,
                    data: dict[str, Any] | None = None) -> None:
        """Queue :meth:`issue`'s ``SET NX EX``: a false reply is :meth:`issue`'s conflict."""
        value, ttl_seconds, text = _check_value(value), _check_ttl(ttl_seconds), _dump_data(data)
        pipeline.set(self._key(value), text, nx=True, ex=ttl_seconds)

    def queue_take(self, pipeline: redis.client.Pipeline, value: str) -> bool:
        """Queue :meth:`take`'s ``DEL`` (a reply of 1: taken now). ``False``, nothing
        queued: no store could hold ``value``, which :meth:`take` answers with a miss."""
        if not _valid_value(value):
            return False
        pipeline.delete(self._key(value))
        return True


# --------------------------------------------------------------------------- factory


def nonce_store_from_url(
    url: str,
    *,
    clock: Clock | None = None,
    table_name: str = DEFAULT_TABLE_NAME,
    redis_prefix: str = "tessera:nonce:",
) -> RememberingNonceStore:
    """A store from configuration: ``memory://``, ``sqlite:///path``,
    ``postgresql://...`` (psycopg 3), ``postgresql+psycopg://...``, ``redis://...``
    or ``rediss://...``. ``clock`` is ignored for Redis (server-side TTLs)."""
    if not isinstance(url, str):
        raise TesseraError(ErrorCode.INVALID_REQUEST, "nonce store URL must be a string")
    scheme = urlsplit(url).scheme.lower()
    base = scheme.split("+", 1)[0]
    chosen: Callable[[], datetime] = clock or _utc_now
    if scheme == "memory":
        return MemoryNonceStore(chosen)
    if base in ("sqlite", "postgresql", "postgres"):
        return SqlNonceStore(url, clock=chosen, table_name=table_name)
    if scheme in ("redis", "rediss", "unix"):
        return RedisNonceStore(url, prefix=redis_prefix)
    raise TesseraError(
        ErrorCode.INVALID_REQUEST,
        f"unsupported nonce store URL scheme {scheme!r} "
        "(memory, sqlite, postgresql, redis, rediss)",
    )
