"""Random sequences of ledger operations keep the invariants (hypothesis, SQLite in memory)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from datetime import timedelta
from typing import Any
from unittest import mock

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
    EntryKind,
    LedgerEntry,
    LotAllocation,
    Member,
    PointLot,
    Program,
)
from issuer.migrations import upgrade
from tessera.errors import TesseraError
from tessera.pointslog import parse_leaf
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


append = _translog.append_leaves


def _v1(real: Any) -> Any:
    """``append_leaves`` as a brand wrote before leaves carried lots and holds."""
    def append(session: Any, log: Any, records: Any, **kw: Any) -> Any:
        # The sequencer hands over pending leaves as their promised text alone.
        old = [_translog.LeafRecord(dataclasses.replace(
            r.leaf or parse_leaf(json.loads(r.raw)), v=1, lot=None, alloc=(), hold=None),
            r.entry_id) for r in records]
        return real(session, log, old, **kw)
    return append


def _no_hold_entries(real: Any) -> Any:
    """``_new_entry`` as it was before holds were ledger entries: they wrote none."""
    def new_entry(session: Any, member: Any, now: Any, **fields: Any) -> Any:
        if fields["kind"] in (EntryKind.HOLD, EntryKind.RELEASE):
            return LedgerEntry(brand_id=member.brand_id, member_id=member.id, created_at=now,
                               qualifying_points=0, qualifying_at=now, **fields)
        return real(session, member, now, **fields)
    return new_entry


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops, st.integers(0, 8))
@example([("earn", 100, 0), ("redeem", 50, 0), ("reverse", 1, 0), ("wait", 61, 0),
          ("earn", 10, 0)], 0)
@example([("earn", 100, 0), ("hold", 80, 0), ("capture", 0, 0), ("reverse", 1, 0)], 0)
@example([("earn", 100, 2), ("hold", 80, 0), ("wait", 4, 0), ("sweep", 0, 0), ("earn", 5, 0),
          ("wait", 61, 0), ("redeem", 1, 0)], 0)
@example([("earn", 100, 0), ("earn", 50, 0), ("redeem", 120, 0), ("earn", 5, 0),
          ("reverse", 0, 0), ("redeem", 1, 0)], 3)
# A debit before the snapshot drained lot 1; its reversal after it refills lot 1.
@example([("earn", 100, 0), ("earn", 50, 0), ("redeem", 120, 0), ("earn", 5, 0),
          ("reverse", 2, 0), ("redeem", 101, 0)], 3)
@example([("earn", 100, 0), ("hold", 50, 0), ("hold", 10, 0), ("release", 1, 0),
          ("earn", 5, 0), ("capture", 0, 0), ("wait", 4, 0), ("sweep", 0, 0)], 3)
def test_ledger_invariants(sequence: list[tuple[str, int, int]], legacy_steps: int) -> None:
    """``legacy_steps``: the first steps run as before leaves carried lots (version 1)."""
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
        legacy = contextlib.ExitStack()
        if i < legacy_steps:
            legacy.enter_context(mock.patch.object(_translog, "append_leaves", _v1(append)))
            legacy.enter_context(mock.patch.object(_translog, "carry_forward",
                                                   lambda *a, **kw: False))
            legacy.enter_context(mock.patch.object(_ledger, "_new_entry",
                                                   _no_hold_entries(_ledger._new_entry)))
        common: dict[str, Any] = {"brand_id": brand.id, "idempotency_key": f"k{i}", "now": now}
        mine = {**common, "member_id": member.id}
        try:
            with legacy, session_scope(engine) as s:
                try:
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
                finally:
                    if i < legacy_steps:  # in the tree as it was then: version 1
                        _translog.catch_up(s, brand.id, now=now)
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
            if i >= legacy_steps:  # else it would write the snapshot itself
                _ledger.checked_balance(s, member=row, now=now)
    engine.dispose()
