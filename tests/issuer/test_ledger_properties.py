"""Random sequences of ledger operations keep the invariants (hypothesis, SQLite in memory)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import func
from sqlmodel import select

from issuer import _ledger, _translog
from issuer._admin import create_brand
from issuer._db import make_engine, session_scope
from issuer._keystore import SqlKeyStore
from issuer._models import (
    BrandCreate,
    LedgerEntry,
    LotAllocation,
    Member,
    PointLot,
    Program,
)
from issuer.migrations import upgrade
from tessera.errors import TesseraError
from tests.issuer.conftest import T0

ops = st.lists(st.one_of(
    st.tuples(st.just("earn"), st.integers(1, 500), st.sampled_from([0, 0, 0, 2])),
    st.tuples(st.just("redeem"), st.integers(1, 300), st.just(0)),
    st.tuples(st.just("adjust"), st.integers(-400, 400).filter(bool), st.just(0)),
    st.tuples(st.just("reverse"), st.integers(0, 30), st.just(0)),
    st.tuples(st.just("hold"), st.integers(1, 400), st.just(0)),
    st.tuples(st.just("capture"), st.integers(0, 10), st.just(0)),
    st.tuples(st.just("release"), st.integers(0, 10), st.just(0)),
    st.tuples(st.just("wait"), st.integers(1, 40), st.just(0)),
    st.tuples(st.just("sweep"), st.just(0), st.just(0)),
), max_size=30)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
@example([("earn", 100, 0), ("redeem", 50, 0), ("reverse", 1, 0), ("wait", 61, 0),
          ("earn", 10, 0)])
@example([("earn", 100, 0), ("hold", 80, 0), ("capture", 0, 0), ("reverse", 1, 0)])
@example([("earn", 100, 2), ("hold", 80, 0), ("wait", 4, 0), ("sweep", 0, 0), ("earn", 5, 0),
          ("wait", 61, 0), ("redeem", 1, 0)])
def test_ledger_invariants(sequence: list[tuple[str, int, int]]) -> None:
    engine = make_engine("sqlite://")
    upgrade(engine)
    with session_scope(engine) as s:
        brand, _ = create_brand(s, keystore=SqlKeyStore(b"m" * 32),
                                data=BrandCreate(slug="b", name="B"), did="did:web:x:b")
        program = Program(brand_id=brand.id, name="p", return_window_days=2,
                          points_validity_days=60)
        s.add(program)
        s.flush()
        member = Member(brand_id=brand.id, program_id=program.id, did="did:key:z",
                        membership_number="1")
        s.add(member)
    now = T0
    holds: list[str] = []
    entries: list[int] = []
    for i, (op, n, pending) in enumerate(sequence):
        common: dict[str, Any] = {"brand_id": brand.id, "idempotency_key": f"k{i}", "now": now}
        mine = {**common, "member_id": member.id}
        try:
            with session_scope(engine) as s:
                if op == "earn":
                    out = _ledger.earn(s, points=n, pending_days=pending, **mine)
                elif op == "redeem":
                    out = _ledger.redeem(s, points=n, **mine)
                elif op == "adjust":
                    out = _ledger.adjust(s, points=n, reason="r", operator="o", **mine)
                elif op == "reverse" and entries:
                    out = _ledger.reverse(s, entry_id=entries[n % len(entries)], reason="r",
                                          **mine)
                elif op == "hold":
                    out = _ledger.create_hold(s, points=n, ttl_seconds=86400 * 3, **mine)
                    holds.append(out.body["hold"]["id"])
                elif op == "sweep":
                    _ledger.release_expired_holds(s, now=now)
                    continue
                elif op in ("capture", "release") and holds:
                    fn = _ledger.capture_hold if op == "capture" else _ledger.release_hold
                    out = fn(s, hold_id=holds[n % len(holds)], **common)
                else:
                    now += timedelta(days=n)
                    continue
                if "entry" in out.body:
                    entries.append(out.body["entry"]["id"])
                bal = out.body["balance"]
                assert bal["available"] >= 0 and bal["pending"] >= 0 and bal["held"] >= 0
        except TesseraError:
            pass
        with session_scope(engine) as s:
            for lot in s.exec(select(PointLot)):
                taken = s.exec(select(func.coalesce(func.sum(LotAllocation.amount), 0))
                               .where(LotAllocation.lot_id == lot.id)).one()
                assert lot.remaining == lot.amount - taken
                assert 0 <= lot.remaining <= lot.amount
            total = s.exec(select(func.coalesce(func.sum(LedgerEntry.points), 0))).one()
            assert total == s.exec(select(func.coalesce(func.sum(PointLot.remaining), 0))).one()
            assert total >= 0
            reversed_ids = [e.reverses_id for e in s.exec(select(LedgerEntry))
                            if e.reverses_id is not None]
            assert len(reversed_ids) == len(set(reversed_ids))
            # The lots and holds are a cache of the log: replaying the leaves
            # (tessera.pointslog.fold) gives the same lots, holds and figures.
            assert _translog.check_log(s, brand.id) == []
            row = s.get(Member, member.id)
            assert row is not None
            _ledger.checked_balance(s, member=row, now=now)
    engine.dispose()
