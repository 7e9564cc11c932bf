"""The points transparency log in SQL: appends from the ledger, proofs, crash safety."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest
from sqlmodel import Session, select

from issuer import _ledger, _translog
from issuer._db import session_scope
from issuer._log_models import LogLeafData, PendingLeaf, TransparencyLog, TreeHead
from issuer._models import LedgerEntry
from tessera import merkle
from tessera.encoding import b64url_decode
from tessera.errors import ErrorCode, TesseraError

from .conftest import Service


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# An independent RFC 9162 §2.1 implementation, straight from the definitions
# (recursive, slices), sharing no code with tessera.merkle.
def _mth(leaves: list[bytes]) -> bytes:
    if not leaves:
        return _h(b"")
    if len(leaves) == 1:
        return _h(b"\x00" + leaves[0])
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return _h(b"\x01" + _mth(leaves[:k]) + _mth(leaves[k:]))


def _path(m: int, leaves: list[bytes]) -> list[bytes]:
    n = len(leaves)
    if n == 1:
        return []
    k = 1 << ((n - 1).bit_length() - 1)
    if m < k:
        return [*_path(m, leaves[:k]), _mth(leaves[k:])]
    return [*_path(m - k, leaves[k:]), _mth(leaves[:k])]


def _subproof(m: int, leaves: list[bytes], complete: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if complete else [_mth(leaves)]
    k = 1 << ((n - 1).bit_length() - 1)
    if m <= k:
        return [*_subproof(m, leaves[:k], complete), _mth(leaves[k:])]
    return [*_subproof(m - k, leaves[k:], False), _mth(leaves[:k])]


def _setup(service: Service, members: int = 2) -> tuple[str, list[dict[str, Any]]]:
    service.brand("air")
    program = service.program("air")
    return "air", [service.enrol("air", program["id"]) for _ in range(members)]


def _brand_id(service: Service) -> str:
    with Session(service.engine) as s:
        return str(s.exec(select(TransparencyLog.brand_id)).one())


def _leaf_texts(service: Service, brand_id: str) -> list[bytes]:
    with Session(service.engine) as s:
        rows = s.exec(select(LogLeafData).where(LogLeafData.brand_id == brand_id)
                      .order_by(LogLeafData.idx)).all()
        assert all(r.data is not None for r in rows)
        return [r.data.encode() for r in rows if r.data is not None]


def test_every_ledger_write_is_a_leaf_and_proofs_match_rfc9162(service: Service) -> None:
    slug, members = _setup(service)
    a, b = members
    for i in range(6):
        assert service.post(slug, f"/admin/v1/members/{a['id']}/points/earn",
                            {"points": 100 + i}).status_code == 201
        assert service.post(slug, f"/admin/v1/members/{b['id']}/points/earn",
                            {"points": 10}).status_code == 201
    assert service.post(slug, f"/admin/v1/members/{a['id']}/points/redeem",
                        {"points": 50}).status_code == 201
    brand_id = _brand_id(service)
    assert _leaf_texts(service, brand_id) == []  # promised, pending: no write touched the tree
    assert service.integrate() == 13
    assert service.integrate() == 0  # idempotent: nothing is integrated twice
    texts = _leaf_texts(service, brand_id)
    assert len(texts) == 13
    with session_scope(service.engine) as s:
        assert _translog.check_log(s, brand_id) == []
        entries = s.exec(select(LedgerEntry).order_by(LedgerEntry.id)).all()
        assert len(entries) == 13
    for size in range(1, 14):
        r = service.client.get(f"/brands/{slug}/log/proof/consistency",
                               params={"first": size, "second": 13})
        assert r.status_code == 200, r.text
        got = [b64url_decode(p) for p in r.json()["proof"]]
        assert got == (_subproof(size, texts, True) if size < 13 else [])
        merkle.verify_consistency(size, 13, got, _mth(texts[:size]), _mth(texts))
        for index in range(size):
            r = service.client.get(f"/brands/{slug}/log/proof/inclusion",
                                   params={"index": index, "size": size})
            assert r.status_code == 200
            proof = [b64url_decode(p) for p in r.json()["proof"]]
            assert proof == _path(index, texts[:size])
            merkle.verify_inclusion(merkle.leaf_hash(texts[index]), index, size, proof,
                                    _mth(texts[:size]))
    r = service.client.get(f"/brands/{slug}/log/sth")
    assert r.status_code == 200
    head = r.json()
    assert head["tree_size"] == 13 and b64url_decode(head["root_hash"]) == _mth(texts)
    # The leaves name members only by pseudonym.
    assert all(a["id"].encode() not in t and a["did"].encode() not in t for t in texts)


def test_sth_is_signed_by_the_brand_did_key(service: Service) -> None:
    slug, (a, _) = _setup(service)
    service.post(slug, f"/admin/v1/members/{a['id']}/points/earn", {"points": 5})
    head = service.client.get(f"/brands/{slug}/log/sth").json()
    doc = service.client.get(f"/brands/{slug}/did.json").json()
    from tessera.did import DIDDocument
    from tessera.jose import decode_unverified

    kid = decode_unverified(head["sth"]).header["kid"]
    key = DIDDocument(doc["id"], doc).key(kid)
    sth = merkle.SignedTreeHead.verify(head["sth"], key, log_id=doc["id"])
    assert sth.tree_size == 1
    # Same size, same head: signed once.
    assert service.client.get(f"/brands/{slug}/log/sth").json()["sth"] == head["sth"]


def test_bad_proof_requests(service: Service) -> None:
    slug, (a, _) = _setup(service)
    service.post(slug, f"/admin/v1/members/{a['id']}/points/earn", {"points": 5})
    for path, params in (("inclusion", {"index": 1, "size": 1}),
                         ("inclusion", {"index": 0, "size": 2}),
                         ("consistency", {"first": 2, "second": 1}),
                         ("consistency", {"first": 0, "second": 5}),
                         ("inclusion", {"index": -1, "size": 1})):
        r = service.client.get(f"/brands/{slug}/log/proof/{path}", params=params)
        assert r.status_code == 422, (path, params, r.text)
        assert r.json()["code"] == "invalid_request"
    assert service.client.get("/brands/nope/log/sth").status_code == 404


@pytest.mark.parametrize("where", ["before_append", "after_append", "after_tier"])
def test_crash_between_ledger_and_log_leaves_both_consistent(
        service: Service, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    slug, (a, _) = _setup(service)
    service.post(slug, f"/admin/v1/members/{a['id']}/points/earn", {"points": 100})
    service.integrate()
    brand_id = _brand_id(service)
    real_append = _translog.append_for_member
    real_tier = _ledger.evaluate_tier

    def crash(*args: Any, **kwargs: Any) -> Any:
        if where == "after_append":
            real_append(*args, **kwargs)
        raise RuntimeError("injected crash")

    def tier_crash(*args: Any, **kwargs: Any) -> Any:
        real_tier(*args, **kwargs)
        raise RuntimeError("injected crash")

    if where == "after_tier":
        monkeypatch.setattr(_ledger, "evaluate_tier", tier_crash)
    else:
        monkeypatch.setattr(_translog, "append_for_member", crash)
    with pytest.raises(RuntimeError, match="injected"):  # the test client re-raises
        service.post(slug, f"/admin/v1/members/{a['id']}/points/redeem", {"points": 40},
                     key="crash-1")
    with session_scope(service.engine) as s:
        assert len(s.exec(select(LedgerEntry)).all()) == 1
        assert _translog.log_state(s, brand_id).size == 1
        assert _translog.pending_count(s, brand_id) == 0
        assert _translog.check_log(s, brand_id) == []
    monkeypatch.undo()  # the process "restarts"
    r = service.post(slug, f"/admin/v1/members/{a['id']}/points/redeem", {"points": 40},
                     key="crash-1")
    assert r.status_code == 201 and r.json()["balance"]["available"] == 60
    with session_scope(service.engine) as s:
        assert len(s.exec(select(LedgerEntry)).all()) == 2
        assert _translog.check_log(s, brand_id) == []


def _died_after_commit(service: Service, slug: str, member: dict[str, Any]) -> list[str]:
    """Writes committed and promised; then the worker dies before any integration."""
    promises = []
    for i in range(5):
        r = service.post(slug, f"/admin/v1/members/{member['id']}/points/earn",
                         {"points": 10 + i})
        assert r.status_code == 201, r.text
        promises.append(r.json()["log_promise"])
    return promises


def test_a_crash_between_write_and_integration_loses_nothing(service: Service) -> None:
    """The pending leaves are durable rows: a new process (a fresh engine, a new
    sequencer) integrates every promised leaf, in order, and keeps each promise."""
    from issuer._db import make_engine
    from tessera.did import DIDDocument

    slug, (a, _) = _setup(service)
    promises = _died_after_commit(service, slug, a)
    brand_id = _brand_id(service)
    service.engine.dispose()  # the old worker's connections are gone
    fresh = make_engine(service.settings.database_url)
    try:
        state = service.client.app.state.tessera  # type: ignore[attr-defined]
        sequencer = _translog.Sequencer(fresh, keystore=state.keystore, clock=service.clock)
        assert sequencer.run_once() == 5
        assert sequencer.run_once() == 0
        with session_scope(fresh) as s:
            assert _translog.check_log(s, brand_id) == []
            assert _translog.pending_count(s, brand_id) == 0
            head = s.get(TreeHead, (brand_id, 5))
            assert head is not None  # the batch signed its head
            rows = s.exec(select(LogLeafData).where(LogLeafData.brand_id == brand_id)
                          .order_by(LogLeafData.idx)).all()
            leaf_hashes = [merkle.leaf_hash((r.data or "").encode()) for r in rows]
    finally:
        fresh.dispose()
    doc = service.client.get(f"/brands/{slug}/did.json").json()
    for token, expected in zip(promises, leaf_hashes, strict=True):
        kid = token.split(".")[0]
        from tessera.jose import decode_unverified

        key = DIDDocument(doc["id"], doc).key(decode_unverified(token).header["kid"])
        promise = merkle.InclusionPromise.verify(token, key, log_id=doc["id"])
        assert promise.leaf_hashes == (expected,) and promise.mmd == 1000 and kid


@pytest.mark.parametrize("where", ["append_leaves", "sign_batch_head"])
def test_a_crash_inside_a_batch_integrates_nothing(service: Service,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   where: str) -> None:
    slug, (a, _) = _setup(service)
    _died_after_commit(service, slug, a)
    brand_id = _brand_id(service)
    real = getattr(_translog, where)

    def crash(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)
        raise RuntimeError("injected crash")

    monkeypatch.setattr(_translog, where, crash)
    with pytest.raises(RuntimeError, match="injected"):
        service.integrate()
    with session_scope(service.engine) as s:
        assert _translog.log_state(s, brand_id).size == 0
        assert _translog.pending_count(s, brand_id) == 5
        assert s.exec(select(LogLeafData)).all() == []
        assert _translog.check_log(s, brand_id) == []
    monkeypatch.undo()
    assert service.integrate() == 5
    with session_scope(service.engine) as s:
        assert _translog.log_state(s, brand_id).size == 5
        assert _translog.check_log(s, brand_id) == []


def test_readers_integrate_on_demand(service: Service) -> None:
    """Nothing waits on the sequencer's timer: a head asked for covers every write."""
    slug, (a, b) = _setup(service)
    for m in (a, b, a):
        service.post(slug, f"/admin/v1/members/{m['id']}/points/earn", {"points": 7})
    head = service.client.get(f"/brands/{slug}/log/sth").json()
    assert head["tree_size"] == 3
    brand_id = _brand_id(service)
    with session_scope(service.engine) as s:
        assert _translog.pending_count(s, brand_id) == 0
        # ... and that head was signed by the batch that integrated them.
        assert s.get(TreeHead, (brand_id, 3)) is not None


def test_member_figures_see_pending_and_integrated_leaves_in_order(service: Service) -> None:
    slug, (a, _) = _setup(service)
    service.post(slug, f"/admin/v1/members/{a['id']}/points/earn", {"points": 100})
    service.integrate()
    service.post(slug, f"/admin/v1/members/{a['id']}/points/redeem", {"points": 30})
    service.post(slug, f"/admin/v1/members/{a['id']}/points/earn", {"points": 5})
    brand_id = _brand_id(service)
    with session_scope(service.engine) as s:
        assert _translog.pending_count(s, brand_id) == 2
        figures = _translog.member_figures(s, brand_id=brand_id, member_id=a["id"],
                                           at=service.clock.now)
        assert figures.available == 75
        assert _translog.check_log(s, brand_id) == []


def test_background_sequencer_runs_with_the_service(settings: Any) -> None:
    """With the service's lifespan, the sequencer integrates without any reader."""
    import dataclasses
    import time

    from fastapi.testclient import TestClient

    from issuer._app import create_app
    from issuer._db import make_engine
    from issuer.migrations import upgrade

    from .conftest import FakeClock

    live = dataclasses.replace(settings, log_sequencer_interval=0.05)
    engine = make_engine(live.database_url)
    upgrade(engine)
    clock = FakeClock()
    app = create_app(live, engine=engine, clock=clock)
    with TestClient(app) as client:
        service = Service(client=client, engine=engine, settings=live, clock=clock)
        slug, (a, _) = _setup(service)
        service.post(slug, f"/admin/v1/members/{a['id']}/points/earn", {"points": 3})
        brand_id = _brand_id(service)
        # Polls the database, asserts no duration: the sequencer's own tick does the work.
        for _ in range(600):
            with session_scope(engine) as s:
                if _translog.log_state(s, brand_id).size == 1:
                    break
            time.sleep(0.05)
        with session_scope(engine) as s:
            assert _translog.log_state(s, brand_id).size == 1
            assert _translog.pending_count(s, brand_id) == 0
            assert s.get(TreeHead, (brand_id, 1)) is not None
    engine.dispose()


def test_refused_write_appends_nothing(service: Service) -> None:
    slug, (a, _) = _setup(service)
    r = service.post(slug, f"/admin/v1/members/{a['id']}/points/redeem", {"points": 1})
    assert r.json()["code"] == "insufficient_balance"
    with session_scope(service.engine) as s:
        assert s.exec(select(LogLeafData)).all() == []
        assert s.exec(select(PendingLeaf)).all() == []


def test_check_log_sees_a_rewritten_row(service: Service) -> None:
    slug, (a, _) = _setup(service)
    for _ in range(3):
        service.post(slug, f"/admin/v1/members/{a['id']}/points/earn", {"points": 100})
    service.integrate()
    brand_id = _brand_id(service)
    with session_scope(service.engine) as s:
        entry = s.exec(select(LedgerEntry).order_by(LedgerEntry.id)).first()
        assert entry is not None
        entry.points = 1000
        s.add(entry)
    with session_scope(service.engine) as s:
        problems = _translog.check_log(s, brand_id)
    assert any("disagrees with ledger entry" in p for p in problems)


def test_sql_source_refuses_missing_nodes(service: Service) -> None:
    _setup(service)
    with session_scope(service.engine) as s:
        source = _translog.SqlHashSource(s, "nobody")
        with pytest.raises(TesseraError) as info:
            source.get_leaf_hash(0)
        assert info.value.code is ErrorCode.INVALID_REQUEST
        with pytest.raises(TesseraError):
            source.get_subtree_hash(1, 2)


@pytest.mark.skipif(not os.environ.get("TESSERA_TEST_POSTGRES_URL"), reason="needs PostgreSQL")
def test_concurrent_appends_from_many_members_keep_one_tree(service: Service) -> None:
    from concurrent.futures import ThreadPoolExecutor

    slug, members = _setup(service, members=6)

    def earn(i: int) -> int:
        m = members[i % len(members)]
        return int(service.post(slug, f"/admin/v1/members/{m['id']}/points/earn",
                                {"points": 1 + i}).status_code)

    with ThreadPoolExecutor(8) as pool:
        # A sequencer racing the writers, as in production.
        batches = pool.submit(lambda: sum(service.integrate() for _ in range(20)))
        codes = list(pool.map(earn, range(40)))
        integrated = batches.result()
    assert codes == [201] * 40
    assert integrated + service.integrate() == 40
    brand_id = _brand_id(service)
    with session_scope(service.engine) as s:
        assert _translog.log_state(s, brand_id).size == 40
        assert _translog.check_log(s, brand_id) == []


@pytest.mark.skipif(not os.environ.get("TESSERA_TEST_POSTGRES_URL"), reason="needs PostgreSQL")
def test_competing_sequencers_integrate_each_leaf_once_in_order(service: Service) -> None:
    """Two workers' background sequencers (SKIP LOCKED) and a reader integrating on
    demand (waiting for the lock), all racing 60 writes: one gap-free tree, each
    leaf once, each member's leaves in write order, every signed head its tree's."""
    from concurrent.futures import ThreadPoolExecutor

    from issuer._admin import brand_by_slug

    slug, members = _setup(service, members=5)
    with session_scope(service.engine) as s:
        brand_id = brand_by_slug(s, slug=slug).id
    state = service.client.app.state.tessera  # type: ignore[attr-defined]
    workers = [_translog.Sequencer(service.engine, keystore=state.keystore, clock=service.clock)
               for _ in range(2)]

    def earn(i: int) -> int:
        m = members[i % len(members)]
        return int(service.post(slug, f"/admin/v1/members/{m['id']}/points/earn",
                                {"points": 1 + i}).status_code)

    def reader() -> int:
        done = 0
        for _ in range(15):
            with session_scope(service.engine) as s:
                done += _translog.catch_up(s, brand_id, now=service.clock.now)
        return done

    with ThreadPoolExecutor(8) as pool:
        integrated = [pool.submit(lambda w=w: sum(w.run_once() for _ in range(15)))
                      for w in workers] + [pool.submit(reader)]
        codes = list(pool.map(earn, range(60)))
        total = sum(f.result() for f in integrated)
    assert codes == [201] * 60
    assert total + service.integrate() == 60
    with session_scope(service.engine) as s:
        assert _translog.log_state(s, brand_id).size == 60
        assert _translog.check_log(s, brand_id) == []
        rows = s.exec(select(LogLeafData).where(LogLeafData.brand_id == brand_id)
                      .order_by(LogLeafData.idx)).all()
        assert [r.idx for r in rows] == list(range(60))
        by_member: dict[str, list[int]] = {}
        for r in rows:
            by_member.setdefault(r.member, []).append(r.entry_id)
        assert all(ids == sorted(ids) for ids in by_member.values())
        for head in s.exec(select(TreeHead).where(TreeHead.brand_id == brand_id)):
            assert b64url_decode(head.root_hash) == _translog.root_at(s, brand_id,
                                                                      head.tree_size)


def test_a_pending_leaf_altered_before_integration_is_logged_as_written_and_flagged(
        service: Service) -> None:
    """The sequencer moves a pending row's text into the tree as promised, without parsing
    it back (bench/README.md "Session 6 (the log's own cost per earn)"): a row altered
    after the write is not silently repaired or dropped, and the brand's self-check names
    it before and after integration."""
    slug, (member,) = _setup(service, members=1)
    assert service.post(slug, f"/admin/v1/members/{member['id']}/points/earn",
                        {"points": 100}).status_code == 201
    brand_id = _brand_id(service)
    with session_scope(service.engine) as s:
        pending = s.exec(select(PendingLeaf).where(PendingLeaf.brand_id == brand_id)).one()
        assert '"delta":100' in pending.data
        pending.data = pending.data.replace('"delta":100', '"delta":900')
        s.add(pending)
    with session_scope(service.engine) as s:
        problems = _translog.check_log(s, brand_id)
        assert any(p.startswith(f"pending leaf {pending.seq} disagrees") for p in problems)
    assert service.integrate() == 1
    assert _leaf_texts(service, brand_id) == [pending.data.encode()]
    with session_scope(service.engine) as s:
        problems = _translog.check_log(s, brand_id)
        assert any(p.startswith("leaf 0 disagrees with ledger entry") for p in problems)
