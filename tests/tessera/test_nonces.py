"""Nonce stores: one contract, run against memory, SQLite, PostgreSQL and Redis."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tessera import nonces
from tessera.encoding import b64url_decode
from tessera.errors import ErrorCode, TesseraError
from tessera.nonces import (
    MAX_DATA_BYTES,
    MAX_VALUE_BYTES,
    MemoryNonceStore,
    RedisNonceStore,
    RememberingNonceStore,
    ReplayCache,
    SqlNonceStore,
    new_nonce,
    nonce_store_from_url,
)
from tessera.typing import NonceStore

ROOT = Path(__file__).resolve().parents[2]


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 1, 12, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Backend:
    name: str
    store: RememberingNonceStore
    clock: FakeClock | None  # None: expiry follows a server clock (Redis)
    # Another store over the same backing storage, on its own connection(s).
    other: Callable[[], RememberingNonceStore]
    url: str | None = None
    table_name: str | None = None


def _unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def _sql_backend(name: str, url: str) -> Iterator[Backend]:
    clock = FakeClock()
    table = _unique("tessera_nonce_t")
    made: list[SqlNonceStore] = []

    def other() -> SqlNonceStore:
        s = SqlNonceStore(url, table_name=table, clock=clock)
        made.append(s)
        return s

    store = other()
    yield Backend(name, store, clock, other, url=url, table_name=table)
    store.table.drop(store.engine, checkfirst=True)
    for s in made:
        s.engine.dispose()


def _redis_backend(url: str) -> Iterator[Backend]:
    prefix = _unique("tessera:test:") + ":"
    clients: list[RedisNonceStore] = []

    def other() -> RedisNonceStore:
        s = RedisNonceStore(url, prefix=prefix)
        clients.append(s)
        return s

    store = other()
    yield Backend("redis", store, None, other, url=url)
    keys = list(store.client.scan_iter(match=prefix + "*"))
    if keys:
        store.client.delete(*keys)
    for s in clients:
        s.client.close()


@pytest.fixture(params=["memory", "sqlite", "postgres", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "memory":
        clock = FakeClock()
        mem = MemoryNonceStore(clock)
        yield Backend("memory", mem, clock, lambda: mem)
    elif request.param == "sqlite":
        yield from _sql_backend("sqlite", f"sqlite:///{tmp_path / 'nonces.db'}")
    elif request.param == "postgres":
        yield from _sql_backend("postgres", request.getfixturevalue("postgres_url"))
    else:
        yield from _redis_backend(request.getfixturevalue("redis_url"))


# --------------------------------------------------------------------------- contract


def test_satisfies_protocols(backend: Backend) -> None:
    assert isinstance(backend.store, NonceStore)
    assert isinstance(backend.store, RememberingNonceStore)


def test_issue_then_consume_exactly_once(backend: Backend) -> None:
    n = new_nonce()
    backend.store.issue(n, ttl_seconds=60, data={"aud": "https://partner.example"})
    assert backend.store.consume(n) == {"aud": "https://partner.example"}
    assert backend.store.consume(n) is None
    assert backend.other().consume(n) is None


def test_take_is_consume_without_the_data(backend: Backend) -> None:
    assert isinstance(backend.store, nonces.TakingNonceStore)
    n = new_nonce()
    backend.store.issue(n, ttl_seconds=60, data={"aud": "https://partner.example"})
    assert backend.store.take(n) is True
    assert backend.store.take(n) is False
    assert backend.other().take(n) is False
    assert backend.store.consume(n) is None  # taken means consumed
    m = new_nonce()
    backend.store.issue(m, ttl_seconds=60)
    assert backend.store.consume(m) == {}
    assert backend.store.take(m) is False  # consumed means taken
    for value in (new_nonce(), "", "x" * (MAX_VALUE_BYTES + 1), "a\x00b", "\ud800"):
        assert backend.store.take(value) is False


def test_concurrent_takers_exactly_one_wins(backend: Backend) -> None:
    stores = [backend.other() for _ in range(20)]
    for _ in range(3):
        n = new_nonce()
        backend.store.issue(n, ttl_seconds=60, data={"a": 1})
        results = _race(20, lambda i, n=n: stores[i].take(n))
        assert results.count(True) == 1


def test_issue_without_data_consumes_to_empty_dict(backend: Backend) -> None:
    # {} rather than None: None must keep meaning "refused".
    n = new_nonce()
    backend.store.issue(n, ttl_seconds=60)
    assert backend.store.consume(n) == {}


def test_data_round_trip(backend: Backend) -> None:
    data = {
        "dcql": {"credentials": [{"id": "m", "format": "dc+sd-jwt", "meta": {"vct_values": []}}]},
        "unicode": "Müller – 积分 \U0001f3ab",
        "n": 12500,
        "f": 0.5,
        "neg": -1,
        "flags": [True, False, None],
        "empty": {},
    }
    n = new_nonce()
    backend.store.issue(n, ttl_seconds=60, data=data)
    assert backend.other().consume(n) == data


def test_unknown_and_unstorable_values_are_misses(backend: Backend) -> None:
    assert backend.store.consume(new_nonce()) is None
    assert backend.store.consume("") is None
    assert backend.store.consume("x" * (MAX_VALUE_BYTES + 1)) is None
    assert backend.store.consume("a\x00b") is None
    assert backend.store.consume("\ud800") is None


@pytest.mark.parametrize(("op", "hit", "miss"), [("consume", {}, None), ("take", True, False)])
def test_expired_nonce_is_refused(backend: Backend, op: str, hit: object, miss: object) -> None:
    use = getattr(backend.store, op)
    n1, n2 = new_nonce(), new_nonce()
    if backend.clock is None:
        # Redis expires keys on its own clock (millisecond precision): use a real TTL.
        backend.store.issue(n1, ttl_seconds=1)
        time.sleep(1.2)
        assert use(n1) == miss
        return
    backend.store.issue(n1, ttl_seconds=60)
    backend.store.issue(n2, ttl_seconds=60)
    backend.clock.advance(59.999)
    assert use(n1) == hit
    backend.clock.advance(0.001)  # exactly at expiry: gone
    assert use(n2) == miss


def test_duplicate_issue_conflicts(backend: Backend) -> None:
    n = new_nonce()
    backend.store.issue(n, ttl_seconds=60, data={"a": 1})
    with pytest.raises(TesseraError) as err:
        backend.other().issue(n, ttl_seconds=60, data={"a": 2})
    assert err.value.code is ErrorCode.CONFLICT
    # The first issue's data is untouched by the refused one.
    assert backend.store.consume(n) == {"a": 1}


def test_expired_value_can_be_issued_again(backend: Backend) -> None:
    if backend.clock is None:
        pytest.skip("Redis drops expired keys itself; covered by test_expired_nonce_is_refused")
    n = new_nonce()
    backend.store.issue(n, ttl_seconds=10, data={"round": 1})
    backend.clock.advance(11)
    backend.store.issue(n, ttl_seconds=10, data={"round": 2})
    assert backend.store.consume(n) == {"round": 2}


def test_remember_semantics(backend: Backend) -> None:
    v = _unique("jti-")
    assert backend.store.remember(v, ttl_seconds=30) is True
    assert backend.store.remember(v, ttl_seconds=30) is False
    assert backend.other().remember(v, ttl_seconds=30) is False
    assert backend.store.remember(_unique("jti-"), ttl_seconds=30) is True
    if backend.clock is not None:
        backend.clock.advance(30)
        assert backend.store.remember(v, ttl_seconds=30) is True
        assert backend.store.remember(v, ttl_seconds=30) is False


def test_remember_after_issue_is_false(backend: Backend) -> None:
    n = new_nonce()
    backend.store.issue(n, ttl_seconds=60, data={"x": 1})
    assert backend.store.remember(n, ttl_seconds=60) is False
    assert backend.store.consume(n) == {"x": 1}


def test_replay_cache(backend: Backend) -> None:
    cache = ReplayCache(backend.store)
    token = "eyJ0eXAiOiJrYitqd3QifQ." + "a" * 5000  # longer than any stored key
    assert cache.seen(token, 300) is False
    assert cache.seen(token, 300) is True
    assert ReplayCache(backend.other()).seen(token, 300) is True
    assert cache.seen(token + "b", 300) is False
    # The raw token is not a key: a replay entry cannot be consumed as a nonce.
    assert backend.store.consume(token[:MAX_VALUE_BYTES]) is None
    # A different namespace is a different cache.
    assert ReplayCache(backend.store, namespace="other:").seen(token, 300) is False
    with pytest.raises(TesseraError) as err:
        cache.seen("", 300)
    assert err.value.code is ErrorCode.MALFORMED
    with pytest.raises(TesseraError) as err:
        cache.seen("x" * (ReplayCache.MAX_INPUT_BYTES + 1), 300)
    assert err.value.code is ErrorCode.TOO_LARGE


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"value": "", "ttl_seconds": 60}, ErrorCode.MALFORMED),
        ({"value": "a\x00", "ttl_seconds": 60}, ErrorCode.MALFORMED),
        ({"value": "\udc80", "ttl_seconds": 60}, ErrorCode.MALFORMED),
        ({"value": 123, "ttl_seconds": 60}, ErrorCode.MALFORMED),
        ({"value": "é" * 128, "ttl_seconds": 60}, ErrorCode.TOO_LARGE),  # 256 UTF-8 bytes
        ({"value": "ok", "ttl_seconds": 0}, ErrorCode.INVALID_REQUEST),
        ({"value": "ok", "ttl_seconds": -5}, ErrorCode.INVALID_REQUEST),
        ({"value": "ok", "ttl_seconds": True}, ErrorCode.INVALID_REQUEST),
        ({"value": "ok", "ttl_seconds": 1.5}, ErrorCode.INVALID_REQUEST),
        ({"value": "ok", "ttl_seconds": 31 * 24 * 3600}, ErrorCode.INVALID_REQUEST),
        ({"value": "ok", "ttl_seconds": 60, "data": ["not", "object"]}, ErrorCode.MALFORMED),
        ({"value": "ok", "ttl_seconds": 60, "data": {"b": b"bytes"}}, ErrorCode.MALFORMED),
        ({"value": "ok", "ttl_seconds": 60, "data": {"f": float("nan")}}, ErrorCode.MALFORMED),
        # Beyond I-JSON's range: consume could not read it back (tessera.encoding).
        ({"value": "ok", "ttl_seconds": 60, "data": {"big": 2**63 - 1}}, ErrorCode.MALFORMED),
        ({"value": "ok", "ttl_seconds": 60, "data": {"s": "x" * MAX_DATA_BYTES}},
         ErrorCode.TOO_LARGE),
    ],
)
def test_bad_issue_arguments(backend: Backend, kwargs: dict[str, Any], code: ErrorCode) -> None:
    kwargs = dict(kwargs)  # the parameter dict is shared by every backend
    value = kwargs.pop("value")
    with pytest.raises(TesseraError) as err:
        backend.store.issue(value, **kwargs)
    assert err.value.code is code
    if value == "ok":
        assert backend.store.consume(value) is None  # nothing half-written


def test_value_of_max_length_is_accepted(backend: Backend) -> None:
    v = "é" * (MAX_VALUE_BYTES // 2)  # 254 bytes, multibyte
    backend.store.issue(v, ttl_seconds=60, data={"ok": True})
    assert backend.store.consume(v) == {"ok": True}


# --------------------------------------------------------------------------- concurrency


def _race(n_threads: int, work: Callable[[int], Any]) -> list[Any]:
    barrier = threading.Barrier(n_threads)
    results: list[Any] = [None] * n_threads
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = work(i)
        except BaseException as exc:  # surfaced below; a thread must not die silently
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    return results


def test_concurrent_consumers_exactly_one_wins(backend: Backend) -> None:
    # Each thread has its own store (its own engine or client: separate
    # connections) except for memory, where the store is the shared state.
    stores = [backend.other() for _ in range(20)]
    for round_no in range(5):
        n = new_nonce()
        backend.store.issue(n, ttl_seconds=60, data={"round": round_no})
        results = _race(20, lambda i, n=n: stores[i].consume(n))
        winners = [r for r in results if r is not None]
        assert winners == [{"round": round_no}]


def test_concurrent_remember_exactly_one_records(backend: Backend) -> None:
    stores = [backend.other() for _ in range(20)]
    for _ in range(5):
        v = _unique("jti-")
        results = _race(20, lambda i, v=v: stores[i].remember(v, ttl_seconds=60))
        assert results.count(True) == 1
        assert results.count(False) == 19


def _consume_in_process(url: str, table: str, value: str, now: datetime, start_at: float) -> bool:
    store = SqlNonceStore(url, table_name=table, clock=lambda: now, create_table=False)
    try:
        store.engine.connect().close()  # connect before the start line
        time.sleep(max(0.0, start_at - time.time()))
        return store.consume(value) is not None
    finally:
        store.engine.dispose()


def test_concurrent_consumers_across_processes(backend: Backend) -> None:
    if backend.table_name is None or backend.url is None or backend.clock is None:
        pytest.skip("cross-process race applies to the SQL backends")
    now = backend.clock()
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=4, mp_context=ctx) as pool:
        n = new_nonce()
        backend.store.issue(n, ttl_seconds=600)
        # Spawned workers start slowly; give them all the same start time.
        start_at = time.time() + 3.0
        futures = [
            pool.submit(_consume_in_process, backend.url, backend.table_name, n, now, start_at)
            for _ in range(4)
        ]
        assert sorted(f.result(timeout=60) for f in futures) == [False, False, False, True]


# --------------------------------------------------------------------------- memory


def test_memory_store_is_bounded() -> None:
    clock = FakeClock()
    store = MemoryNonceStore(clock, max_entries=3)
    for i in range(3):
        store.issue(f"n{i}", ttl_seconds=10 + i)
    with pytest.raises(TesseraError) as err:
        store.issue("n3", ttl_seconds=10)
    assert err.value.code is ErrorCode.TOO_LARGE
    with pytest.raises(TesseraError) as err:
        store.remember("n3", ttl_seconds=10)
    assert err.value.code is ErrorCode.TOO_LARGE
    # A live duplicate is still a duplicate, not "full".
    assert store.remember("n0", ttl_seconds=10) is False
    # Consuming frees a slot; so does expiry.
    assert store.consume("n1") == {}
    store.issue("n3", ttl_seconds=10)
    clock.advance(10)  # n0 and n3 expire; n2 (ttl 12) lives
    store.issue("n4", ttl_seconds=10)
    store.issue("n5", ttl_seconds=10)
    assert len(store) == 3
    assert store.consume("n2") == {}


def test_memory_purge_and_heap_stay_bounded() -> None:
    clock = FakeClock()
    store = MemoryNonceStore(clock, max_entries=100)
    for i in range(50):
        store.issue(f"old{i}", ttl_seconds=5)
    clock.advance(5)
    assert store.purge_expired() == 50
    assert len(store) == 0
    # Issue-then-consume leaves heap items behind; they must not pile up.
    for i in range(20_000):
        n = f"c{i}"
        store.issue(n, ttl_seconds=3600)
        assert store.consume(n) == {}
    assert len(store._heap) <= 2 * len(store) + 1025


def test_memory_returns_copies() -> None:
    store = MemoryNonceStore()
    data: dict[str, Any] = {"list": [1, 2]}
    store.issue("n", ttl_seconds=5, data=data)
    data["list"].append(3)
    assert store.consume("n") == {"list": [1, 2]}


def test_naive_clock_is_refused() -> None:
    store = MemoryNonceStore(lambda: datetime(2026, 1, 1))
    with pytest.raises(TesseraError) as err:
        store.issue("n", ttl_seconds=5)
    assert err.value.code is ErrorCode.INVALID_REQUEST


JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53 - 1), max_value=2**53 - 1)
    | st.floats(-(2**53 - 1), 2**53 - 1, allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
JSON_OBJECTS = st.dictionaries(
    st.text(max_size=10),
    st.recursive(
        JSON_SCALARS,
        lambda inner: st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=12,
    ),
    max_size=6,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=JSON_OBJECTS | st.just({"lone": "\ud800", "nul": "a\x00b", "big": 2**53 - 1}))
def test_data_round_trip_property(tmp_path: Path, data: dict[str, Any]) -> None:
    # Stored JSON is ASCII with escapes, so even NUL and lone surrogates survive.
    sql = _property_sql_store(tmp_path)
    for store in (MemoryNonceStore(), sql):
        n = new_nonce()
        store.issue(n, ttl_seconds=60, data=data)
        assert store.consume(n) == data
        assert store.consume(n) is None


_PROPERTY_STORES: dict[Path, SqlNonceStore] = {}


def _property_sql_store(tmp_path: Path) -> SqlNonceStore:
    if tmp_path not in _PROPERTY_STORES:
        _PROPERTY_STORES[tmp_path] = SqlNonceStore(f"sqlite:///{tmp_path / 'prop.db'}")
    return _PROPERTY_STORES[tmp_path]


# --------------------------------------------------------------------------- SQL specifics


def test_sql_purge(tmp_path: Path) -> None:
    clock = FakeClock()
    store = SqlNonceStore(
        f"sqlite:///{tmp_path / 'p.db'}", clock=clock, purge_interval_seconds=60, purge_batch=7
    )

    def rows() -> int:
        import sqlalchemy as sa

        with store.engine.connect() as conn:
            query = sa.select(sa.func.count()).select_from(store.table)
            return int(conn.execute(query).scalar_one())

    for i in range(30):
        store.issue(f"a{i}", ttl_seconds=10)
    store.issue("long", ttl_seconds=3600)
    clock.advance(11)
    assert rows() == 31
    # Batched purge (7 at a time) removes all 30 expired rows and keeps the live one.
    assert store.purge_expired() == 30
    assert rows() == 1
    for i in range(5):
        store.issue(f"b{i}", ttl_seconds=10)
    clock.advance(61)  # past expiry and the purge interval: the next write purges
    store.issue("trigger", ttl_seconds=10)
    assert rows() == 2
    assert store.consume("long") == {}


def test_sql_table_definition_is_exposed_lazily() -> None:
    table = nonces.nonce_table
    assert table.name == "tessera_nonce"
    assert table.metadata is nonces.nonce_metadata
    assert [c.name for c in table.primary_key.columns] == ["value"]
    assert {c.name for c in table.columns} == {"value", "data", "expires_at"}
    with pytest.raises(AttributeError):
        _ = nonces.no_such_thing  # type: ignore[attr-defined]


def test_sql_store_shares_the_exposed_table(tmp_path: Path) -> None:
    store = SqlNonceStore(f"sqlite:///{tmp_path / 't.db'}")
    assert store.table is nonces.nonce_table
    import sqlalchemy as sa

    assert sa.inspect(store.engine).has_table("tessera_nonce")
    # A second store on the same database finds the table already there.
    SqlNonceStore(store.engine).issue("n", ttl_seconds=5)
    assert store.consume("n") == {}


def test_sql_in_memory_sqlite_url_is_refused() -> None:
    for url in ("sqlite://", "sqlite:///:memory:"):
        with pytest.raises(TesseraError) as err:
            SqlNonceStore(url)
        assert err.value.code is ErrorCode.INVALID_REQUEST


def test_sql_refuses_database_without_delete_returning() -> None:
    import sqlalchemy as sa

    engine = sa.create_engine("sqlite://")
    engine.dialect.delete_returning = False  # what an old SQLite or MySQL looks like
    with pytest.raises(TesseraError) as err:
        SqlNonceStore(engine)
    assert err.value.code is ErrorCode.INVALID_REQUEST


def test_postgres_plain_url_uses_psycopg3(postgres_url: str) -> None:
    plain = "postgresql://" + postgres_url.split("://", 1)[1]
    store = SqlNonceStore(plain, table_name=_unique("tessera_nonce_t"))
    try:
        assert store.engine.dialect.driver == "psycopg"
        store.issue("n", ttl_seconds=5)
        assert store.consume("n") == {}
    finally:
        store.table.drop(store.engine)
        store.engine.dispose()


# --------------------------------------------------------------------------- factory, helpers


def test_factory_memory_and_sqlite(tmp_path: Path) -> None:
    clock = FakeClock()
    mem = nonce_store_from_url("memory://", clock=clock)
    assert isinstance(mem, MemoryNonceStore)
    sql = nonce_store_from_url(f"sqlite:///{tmp_path / 'f.db'}", clock=clock)
    assert isinstance(sql, SqlNonceStore)
    sql.issue("n", ttl_seconds=5)
    clock.advance(5)
    assert sql.consume("n") is None  # the factory passed the clock through


def test_factory_postgres(postgres_url: str) -> None:
    table = _unique("tessera_nonce_t")
    store = nonce_store_from_url(postgres_url, table_name=table)
    assert isinstance(store, SqlNonceStore)
    try:
        assert store.table.name == table
        assert store.engine.dialect.driver == "psycopg"
        n = new_nonce()
        store.issue(n, ttl_seconds=5)
        assert store.consume(n) == {}
    finally:
        store.table.drop(store.engine)
        store.engine.dispose()


def test_factory_redis(redis_url: str) -> None:
    prefix = _unique("tessera:test:") + ":"
    store = nonce_store_from_url(redis_url, redis_prefix=prefix)
    assert isinstance(store, RedisNonceStore)
    n = new_nonce()
    store.issue(n, ttl_seconds=5)
    assert store.client.exists(prefix + n) == 1
    assert store.consume(n) == {}
    store.client.close()


@pytest.mark.parametrize("url", ["mysql://x/y", "http://example.com", "", "memcached://h"])
def test_factory_refuses_unknown_schemes(url: str) -> None:
    with pytest.raises(TesseraError) as err:
        nonce_store_from_url(url)
    assert err.value.code is ErrorCode.INVALID_REQUEST


def test_new_nonce() -> None:
    values = {new_nonce() for _ in range(1000)}
    assert len(values) == 1000
    for v in list(values)[:20]:
        assert len(b64url_decode(v)) == 16
    assert len(b64url_decode(new_nonce(32))) == 32
    for bad in (15, 0, True):
        with pytest.raises(TesseraError) as err:
            new_nonce(bad)
        assert err.value.code is ErrorCode.INVALID_REQUEST


def test_module_imports_without_sqlalchemy_or_redis() -> None:
    # The verifier SDK imports this module on installs without either library.
    code = (
        "import sys\n"
        "sys.modules['sqlalchemy'] = None\n"
        "sys.modules['redis'] = None\n"
        "from tessera.nonces import nonce_store_from_url, ReplayCache\n"
        "s = nonce_store_from_url('memory://')\n"
        "s.issue('n', ttl_seconds=5, data={'a': 1})\n"
        "assert s.consume('n') == {'a': 1}\n"
        "assert ReplayCache(s).seen('jti', 5) is False\n"
        "assert 'sqlalchemy' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "print('ok')\n"
    )
    out = subprocess.run(  # noqa: S603 - our own interpreter and fixed code
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_an_empty_memory_store_is_still_a_store() -> None:
    from tessera.nonces import MemoryNonceStore

    store = MemoryNonceStore()
    assert len(store) == 0 and bool(store)
    assert (store or None) is store


# -- durability of the SQLite store (synchronous=NORMAL in WAL) across a process crash ----------

_CRASH = """
import os, signal, sys
from tessera.nonces import SqlNonceStore
store = SqlNonceStore(sys.argv[1])
store.issue("kept", ttl_seconds=300, data={"id": "a"})
store.issue("spent", ttl_seconds=300, data={"id": "b"})
assert store.consume("spent") == {"id": "b"}
if sys.argv[2] == "mid-transaction":
    # Killed between the DELETE and its COMMIT: the consume never happened.
    conn = store.engine.connect()
    conn.begin()
    conn.exec_driver_sql("DELETE FROM tessera_nonce WHERE value = 'kept'")
print("consumed", flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # no exit handler, no checkpoint, no close
"""


@pytest.mark.parametrize("when", ["after-commit", "mid-transaction"])
def test_sqlite_store_keeps_consumed_nonces_consumed_across_a_process_kill(
        tmp_path: Path, when: str) -> None:
    from tessera.nonces import SQLITE_SYNCHRONOUS, SqlNonceStore

    assert SQLITE_SYNCHRONOUS == "NORMAL"
    url = f"sqlite:///{tmp_path / 'n.db'}"
    crashed = subprocess.run(  # noqa: S603 - our own interpreter and fixed code
        [sys.executable, "-c", _CRASH, url, when], cwd=ROOT, capture_output=True, text=True,
        check=False, timeout=120)
    assert crashed.returncode == -9 and crashed.stdout.strip() == "consumed", crashed.stderr
    reopened = SqlNonceStore(url)
    with reopened.engine.connect() as conn:  # the WAL really is in NORMAL mode
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    # A replay after the crash is refused: the consume was committed before it returned.
    assert reopened.consume("spent") is None
    # A commit is not lost either, and an uncommitted delete was rolled back:
    # the nonce is still there, exactly once.
    assert reopened.consume("kept") == {"id": "a"}
    assert reopened.consume("kept") is None
