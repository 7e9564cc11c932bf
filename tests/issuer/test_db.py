"""How requests use the database (issue 10 item 1): read paths take no write lock,
brand signers are unsealed once per process and follow rotation, PostgreSQL pools
are sized to the workers."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlmodel import select

from issuer._db import make_engine, pool_size_per_worker, read_scope, session_scope
from issuer._keystore import SqlKeyStore
from issuer._models import Brand
from tessera.errors import ErrorCode, TesseraError
from tests.issuer.conftest import Service


def _sqlite_path(service: Service) -> str:
    database = service.engine.url.database
    assert database is not None
    return database


@pytest.fixture
def write_lock(service: Service) -> Iterator[None]:
    """Another process's writer, holding SQLite's write lock for the whole test."""
    if service.engine.dialect.name != "sqlite":
        pytest.skip("the write lock is SQLite's")
    other = sqlite3.connect(_sqlite_path(service), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    other.execute("CREATE TABLE held_by_test (x INTEGER)")  # a real pending write
    try:
        yield
    finally:
        other.execute("ROLLBACK")
        other.close()


def test_read_routes_answer_while_another_writer_holds_the_lock(
        service: Service, request: pytest.FixtureRequest) -> None:
    service.brand("acme")
    program = service.program("acme")
    member = service.enrol("acme", program["id"])
    request.getfixturevalue("write_lock")
    # Before, every request opened BEGIN IMMEDIATE: each of these waited for
    # the writer (30 s busy timeout), then failed with "database is locked".
    for path in ("/brands/acme/did.json",
                 "/.well-known/openid-credential-issuer/brands/acme",
                 "/.well-known/oauth-authorization-server/brands/acme",
                 "/admin/v1/brand", "/admin/v1/programs",
                 f"/admin/v1/members/{member['id']}",
                 f"/admin/v1/members/{member['id']}/balance",
                 f"/admin/v1/members/{member['id']}/credentials"):
        r = service.client.get(path, headers=service.h("acme"))
        assert r.status_code == 200, (path, r.text)


def test_read_scope_opens_a_deferred_transaction_and_writes_take_the_lock(
        service: Service) -> None:
    if service.engine.dialect.name != "sqlite":
        pytest.skip("BEGIN IMMEDIATE is SQLite's")
    from sqlalchemy import event

    begins: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.startswith("BEGIN"):
            begins.append(statement)

    event.listen(service.engine, "before_cursor_execute", seen)
    try:
        with read_scope(service.engine) as session:
            session.exec(select(Brand)).all()
        with session_scope(service.engine) as session:
            session.exec(select(Brand)).all()
    finally:
        event.remove(service.engine, "before_cursor_execute", seen)
    # A write transaction still holds the lock from its first read: a
    # read-then-write (a balance check, then a debit) must not interleave.
    assert begins == ["BEGIN", "BEGIN IMMEDIATE"]


def test_a_write_in_a_read_scope_is_refused(service: Service) -> None:
    with pytest.raises(TesseraError) as caught, read_scope(service.engine) as session:
        session.add(Brand(slug="sneaky", name="Sneaky", did="did:web:x"))
        session.flush()
    assert caught.value.code == ErrorCode.INTERNAL_ERROR
    with session_scope(service.engine) as session:
        assert session.exec(select(Brand).where(Brand.slug == "sneaky")).first() is None


# -- brand signers cached per process ---------------------------------------------------------


def _brand(service: Service, slug: str) -> Brand:
    service.brand(slug)
    with read_scope(service.engine) as session:
        brand = session.exec(select(Brand).where(Brand.slug == slug)).one()
    return brand


def test_signer_is_unsealed_once_and_replaced_after_a_rotation_by_another_worker(
        service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    brand = _brand(service, "acme")
    worker_a = SqlKeyStore(service.settings.master_key)
    worker_b = SqlKeyStore(service.settings.master_key)  # another process's store
    import issuer._keystore as keystore_module

    unsealed: list[str] = []
    real_unseal = keystore_module.unseal

    def counting_unseal(box: Any, key: bytes, *, aad: bytes) -> bytes:
        unsealed.append(aad.decode())
        return real_unseal(box, key, aad=aad)

    monkeypatch.setattr(keystore_module, "unseal", counting_unseal)
    with read_scope(service.engine) as session:
        first = worker_a.signer(session, brand_id=brand.id, did=brand.did)
        again = worker_a.signer(session, brand_id=brand.id, did=brand.did)
    assert again is first and len(unsealed) == 1
    assert worker_a.cached_kid(brand.id) == "key-1"

    with session_scope(service.engine) as session:
        worker_b.rotate(session, brand_id=brand.id, did=brand.did)
    with read_scope(service.engine) as session:
        after = worker_a.signer(session, brand_id=brand.id, did=brand.did)
    # The rotation in the other worker takes effect on worker A's next call,
    # and the retired key's signer is no longer held.
    assert after.key_id == f"{brand.did}#key-2"
    assert worker_a.cached_kid(brand.id) == "key-2"
    assert len(unsealed) == 2
    data = b"signed after the rotation"
    after.public_key.verify(after.sign(data), data)


def test_rotation_over_the_api_changes_the_cached_signer_of_the_service(
        service: Service) -> None:
    service.brand("acme")
    r = service.client.get("/brands/acme/did.json")
    assert [m["id"].rsplit("#", 1)[1] for m in r.json()["verificationMethod"]] == ["key-1"]
    state = service.client.app.state.tessera  # type: ignore[attr-defined]
    with read_scope(service.engine) as session:
        brand = session.exec(select(Brand).where(Brand.slug == "acme")).one()
        before = state.keystore.signer(session, brand_id=brand.id, did=brand.did)
    r = service.client.post("/admin/v1/keys/rotate", json={}, headers=service.h("acme"))
    assert r.status_code == 201, r.text
    with read_scope(service.engine) as session:
        after = state.keystore.signer(session, brand_id=brand.id, did=brand.did)
    assert before.key_id is not None and before.key_id.endswith("#key-1")
    assert after.key_id is not None and after.key_id.endswith("#key-2")
    r = service.client.get("/brands/acme/did.json")
    assert [m["id"].rsplit("#", 1)[1] for m in r.json()["verificationMethod"]] == [
        "key-1", "key-2"]


# -- PostgreSQL pool ----------------------------------------------------------------------------


@pytest.mark.parametrize(("env", "size"), [
    ({}, 40),
    ({"TESSERA_WORKERS": "2"}, 20),
    ({"WEB_CONCURRENCY": "4"}, 10),
    ({"TESSERA_WORKERS": "4", "WEB_CONCURRENCY": "1"}, 10),
    ({"TESSERA_DB_MAX_CONNECTIONS": "10", "TESSERA_WORKERS": "3"}, 3),
    ({"TESSERA_DB_MAX_CONNECTIONS": "4", "TESSERA_WORKERS": "8"}, 2),
    ({"TESSERA_DB_MAX_CONNECTIONS": "500"}, 40),
])
def test_pool_size_is_the_connection_budget_shared_by_the_workers(
        env: dict[str, str], size: int) -> None:
    assert pool_size_per_worker(env) == size


def test_pool_size_refuses_nonsense() -> None:
    for env in ({"TESSERA_WORKERS": "two"}, {"TESSERA_DB_MAX_CONNECTIONS": "0"}):
        with pytest.raises(TesseraError) as caught:
            pool_size_per_worker(env)
        assert caught.value.code == ErrorCode.MALFORMED


def test_postgresql_engine_pools_its_share_and_no_overflow(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TESSERA_DB_MAX_CONNECTIONS", "12")
    monkeypatch.setenv("TESSERA_WORKERS", "3")
    engine = make_engine("postgresql://u@127.0.0.1:1/nothing")  # lazy: nothing connects
    try:
        pool: Any = engine.pool
        assert (pool.size(), pool._max_overflow) == (4, 0)
    finally:
        engine.dispose()


def test_the_pool_hands_out_the_connection_returned_last(postgres_url: str) -> None:
    """Two connections in the pool: the next transaction gets the one returned last
    (first in, first out would give the older one)."""
    engine = make_engine(postgres_url)
    try:
        with engine.connect() as a, engine.connect() as b:
            older = int(a.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())
            newer = int(b.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())
            a.close()  # returned first
        assert older != newer
        assert _backend_pid(engine) == newer
        assert _backend_pid(engine) == newer
    finally:
        engine.dispose()


def test_serve_tells_the_workers_their_number(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Any) -> None:
    import os

    import uvicorn

    from issuer import _cli
    from issuer._settings import generate_master_key
    from issuer.migrations import upgrade

    url = f"sqlite:///{tmp_path / 'serve.db'}"
    upgrade(url)
    monkeypatch.setenv("TESSERA_DATABASE_URL", url)
    monkeypatch.setenv("TESSERA_MASTER_KEY", generate_master_key())
    monkeypatch.delenv("TESSERA_WORKERS", raising=False)
    import tessera.observability

    # Only the worker count is under test: leave the process's logging and
    # metrics set-up alone (serve configures both for the real run).
    monkeypatch.setattr(tessera.observability, "configure_logging", lambda: None)
    monkeypatch.setattr(tessera.observability, "share_metrics_between_workers",
                        lambda workers: None)
    seen: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: seen.update(
        workers=k["workers"], env=os.environ.get("TESSERA_WORKERS")))
    _cli.serve(host="127.0.0.1", port=8000, workers=3)
    assert seen == {"workers": 3, "env": "3"}
    monkeypatch.delenv("TESSERA_WORKERS", raising=False)


# -- the SQLite write gate ----------------------------------------------------------------------


def _gate_taken(service: Service) -> bool:
    """Whether some writer holds the gate's flock (probed from another descriptor)."""
    import fcntl
    import os

    fd = os.open(_sqlite_path(service) + ".writers", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_writers_queue_on_the_gate_from_begin_to_commit_or_rollback(service: Service) -> None:
    if service.engine.dialect.name != "sqlite":
        pytest.skip("the gate is SQLite's")
    assert not _gate_taken(service)
    with read_scope(service.engine) as session:
        session.exec(select(Brand)).all()
        assert not _gate_taken(service)  # readers never queue
    with session_scope(service.engine) as session:
        session.exec(select(Brand)).all()
        assert _gate_taken(service)  # held by the write transaction...
    assert not _gate_taken(service)  # ... until its commit
    with pytest.raises(TesseraError), session_scope(service.engine) as session:
        session.exec(select(Brand)).all()
        assert _gate_taken(service)
        raise TesseraError(ErrorCode.CONFLICT, "the write fails")
    assert not _gate_taken(service)  # a rollback lets the next writer in
    with service.engine.begin() as conn:  # Core writers (the nonce store) queue too
        conn.exec_driver_sql("SELECT 1")
        assert _gate_taken(service)
    assert not _gate_taken(service)


def test_concurrent_writers_all_commit(service: Service) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from issuer._ledger import run_write

    def create(i: int) -> str:
        def run(session: Any) -> str:
            brand = Brand(slug=f"b{i}", name=f"B{i}", did=f"did:web:b{i}")
            session.add(brand)
            session.flush()
            return brand.id
        return run_write(service.engine, run)

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(create, range(40)))
    with read_scope(service.engine) as session:
        assert len(set(ids)) == 40
        assert len(session.exec(select(Brand)).all()) == 40


def _commit_is_durable(conn: Any) -> bool:
    if conn.dialect.name == "sqlite":
        return int(conn.exec_driver_sql("PRAGMA synchronous").scalar_one()) >= 2
    return str(conn.exec_driver_sql("SHOW synchronous_commit").scalar_one()) != "off"


def test_only_the_credential_commit_of_an_issuance_waits_for_the_disk(service: Service) -> None:
    """Token and c_nonce issue commit without waiting for the disk; the credential's
    commit, which consumes the c_nonce, does and makes those two durable with it
    (tessera.sqlite.write_transaction). Ledger writes stay durable on their own."""
    import json

    from jwcrypto import jwk
    from sqlalchemy import event

    from tessera.did import did_key
    from tessera.keys import signer_from_jwk
    from tessera.sqlite import READ_ONLY
    from tests.issuer.oid4vci_wallet import SpecWallet

    service.brand("acme")
    program = service.program("acme", name="Miles")
    key = jwk.JWK.generate(kty="EC", crv="P-256")
    signer = signer_from_jwk(json.loads(key.export_private()))
    member = service.enrol("acme", program["id"], signer)
    assert did_key(signer.public_key).startswith("did:key:")
    commits: list[bool] = []

    def on_commit(conn: Any) -> None:
        if not conn.get_execution_options().get(READ_ONLY):  # readers commit nothing
            commits.append(_commit_is_durable(conn))

    event.listen(service.engine, "commit", on_commit)
    r = service.post("acme", f"/admin/v1/members/{member['id']}/points/earn", {"points": 10})
    assert r.status_code == 201, r.text
    assert commits and all(commits)  # the ledger
    r = service.client.post(f"/admin/v1/members/{member['id']}/offers",
                            headers=service.h("acme"),
                            json={"credential_configuration_ids":
                                  ["LoyaltyPointsCredential_sd_jwt"]})
    assert r.status_code == 201, r.text
    commits.clear()
    got = SpecWallet(service.client, key).receive(r.json()["offer_uri"], now=service.clock.now)
    assert "~" in got["LoyaltyPointsCredential_sd_jwt"]
    # token, c_nonce issued: deferred; then the credential (c_nonce consumed): durable.
    assert commits.count(False) == 2, commits
    assert commits[-1] is True, commits


def test_no_two_issuer_routes_answer_the_same_request(service: Service) -> None:
    """Routers are included hot path first (issuer._app); that is only safe while no
    method + path is served by two routes, whatever their order."""
    import re

    from starlette.routing import Match

    routes: list[Any] = []

    def walk(items: list[Any]) -> None:
        for route in items:
            inner = getattr(route, "original_router", None)
            if inner is not None:
                walk(inner.routes)
            elif getattr(route, "methods", None):
                routes.append(route)

    walk(service.client.app.routes)  # type: ignore[attr-defined]
    assert len(routes) > 40
    for route in routes:
        path = re.sub(r"\{[^}]+\}", "x1", route.path)
        for method in route.methods:
            scope = {"type": "http", "path": path, "method": method, "root_path": ""}
            full = [r for r in routes if r.matches(scope)[0] is Match.FULL]
            assert full == [route], (method, route.path, [r.path for r in full])


def _backend_pid(engine: Any) -> int:
    with engine.connect() as conn:
        return int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())


def _kill(postgres_url: str, pid: int) -> None:
    import psycopg

    plain = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))


def test_a_pooled_connection_that_died_while_idle_is_replaced(
        postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """No ping per checkout, but a connection idle past PING_AFTER_IDLE_SECONDS is
    pinged first: one killed while it sat in the pool is replaced, not handed out."""
    from issuer import _db

    engine = make_engine(postgres_url)
    try:
        first = _backend_pid(engine)
        assert _backend_pid(engine) == first  # reused within the second: no ping needed
        _kill(postgres_url, first)
        monkeypatch.setattr(_db, "PING_AFTER_IDLE_SECONDS", 0.0)  # as if idle long enough
        with session_scope(engine) as session:
            assert session.execute(text("SELECT 1")).scalar_one() == 1
        assert _backend_pid(engine) != first
    finally:
        engine.dispose()


def test_a_connection_reused_at_once_is_not_pinged(postgres_url: str) -> None:
    """The saving itself: back-to-back transactions send no ping between them (a
    connection killed in that second fails the next transaction, as a connection
    dying in use always did)."""
    from sqlalchemy import event

    engine = make_engine(postgres_url)
    sent: list[str] = []
    try:
        _backend_pid(engine)
        original = engine.dialect.do_ping

        def counting(dbapi_connection: Any) -> bool:
            sent.append("ping")
            return bool(original(dbapi_connection))

        engine.dialect.do_ping = counting  # type: ignore[method-assign]
        event.listen(engine, "before_cursor_execute",
                     lambda *args: sent.append("statement"))
        for _ in range(3):
            with session_scope(engine) as session:
                session.execute(text("SELECT 1")).scalar_one()
        assert sent == ["statement"] * 3
    finally:
        engine.dispose()


def test_the_service_checkpoints_a_sqlite_file_on_its_own_thread_and_stops_it(
        settings: Any) -> None:
    """The lifespan starts a WAL checkpointer for a SQLite file (none for PostgreSQL) and
    stops it with the service: no request's commit checkpoints under the write gate
    (bench/README.md, "Issuance on SQLite: the tail at the best concurrency")."""
    import threading

    from fastapi.testclient import TestClient

    from issuer._app import create_app
    from issuer.migrations import upgrade
    from tessera import sqlite as tessera_sqlite

    def running() -> int:
        return sum(t.name == "tessera-sqlite-checkpoint" and t.is_alive()
                   for t in threading.enumerate())

    before = running()
    engine = make_engine(settings.database_url)
    upgrade(engine)
    sqlite = engine.dialect.name == "sqlite"
    try:
        with TestClient(create_app(settings, engine=engine)):
            assert running() == before + sqlite
            if sqlite:
                with engine.begin() as conn:
                    assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one() \
                        == tessera_sqlite.BACKSTOP_PAGES
        assert running() == before
        if sqlite:
            with engine.begin() as conn:
                assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one() \
                    == tessera_sqlite.AUTOCHECKPOINT_PAGES
    finally:
        engine.dispose()
