"""tessera.pointslog: leaf encoding and pseudonyms."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tessera.errors import ErrorCode, TesseraError
from tessera.merkle import leaf_hash
from tessera.pointslog import (
    Allocation,
    HoldRef,
    LogLeaf,
    LotOpen,
    fold,
    member_pseudonym,
    parse_leaf,
    total,
)

SECRET = bytes(range(32))


def _leaf(**kw: object) -> LogLeaf:
    args: dict = dict(entry=7, member=member_pseudonym(SECRET, "m1"), delta=-50,  # type: ignore[type-arg]
                      kind="redeem", reason=None,
                      time=datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=UTC),
                      idempotency_key="k")
    args.update(kw)
    return LogLeaf.of(**args)


def test_leaf_bytes_are_canonical_and_hashed_per_rfc9162() -> None:
    leaf = _leaf()
    raw = leaf.to_bytes()
    assert json.loads(raw)["time"] == "2026-01-01T12:00:00.123Z"
    assert raw == json.dumps(json.loads(raw), separators=(",", ":"), sort_keys=True).encode()
    assert leaf.hash == leaf_hash(raw)
    # Same instant in another zone, same leaf.
    other = _leaf(time=datetime(2026, 1, 1, 14, 0, 0, 123999, tzinfo=timezone(timedelta(hours=2))))
    assert other.hash == leaf.hash
    assert parse_leaf(json.loads(raw)) == leaf


def test_pseudonym_is_keyed() -> None:
    a = member_pseudonym(SECRET, "m1")
    assert a == member_pseudonym(SECRET, "m1") != member_pseudonym(SECRET, "m2")
    assert a != member_pseudonym(bytes(32), "m1")
    with pytest.raises(TesseraError):
        member_pseudonym(b"short", "m1")


def test_total() -> None:
    assert total([_leaf(delta=100, kind="earn"), _leaf(delta=-30)]) == 70


@pytest.mark.parametrize("change", [
    {"v": 3}, {"v": 1}, {"v": True}, {"kind": "mint"}, {"delta": "5"}, {"delta": True},
    {"extra": 1}, {"reason": 5}, {"time": None}, {"alloc": None}, {"alloc": [[1, 2]]},
    {"alloc": [{"lot": 1}]}, {"lot": {"available_at": "2026-01-01T00:00:00Z"}},
    {"lot": {"available_at": "yesterday", "expires_at": None}},
    {"hold": {"id": "h", "points": 5}}, {"hold": "h"},
])
def test_parse_refuses(change: dict) -> None:  # type: ignore[type-arg]
    body = _leaf().as_json() | change
    with pytest.raises(TesseraError) as info:
        parse_leaf(body)
    assert info.value.code in (ErrorCode.MALFORMED, ErrorCode.UNSUPPORTED_FORMAT)


@given(st.dictionaries(st.text(max_size=20), st.one_of(st.integers(), st.text(), st.none()),
                       max_size=10))
def test_parse_never_crashes(value: dict) -> None:  # type: ignore[type-arg]
    with contextlib.suppress(TesseraError):
        parse_leaf(value)


# -- fold: the figures a member's leaves imply -----------------------------------------------

T0 = datetime(2026, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)


def _credit(entry: int, points: int, *, pending: int = 0, valid: int | None = None) -> LogLeaf:
    return _leaf(entry=entry, delta=points, kind="earn", time=T0,
                 lot=LotOpen.of(T0 + pending * DAY, T0 + valid * DAY if valid else None))


def _debit(entry: int, *taken: tuple[int, int], kind: str = "redeem",
           hold: HoldRef | None = None) -> LogLeaf:
    return _leaf(entry=entry, delta=-sum(p for _, p in taken), kind=kind, time=T0,
                 alloc=[Allocation(lot, p) for lot, p in taken], hold=hold)


def test_fold_follows_lots_holds_pending_and_expiry() -> None:
    hold = _leaf(entry=5, delta=0, kind="hold", time=T0,
                 hold=HoldRef("h1", 30, "2026-01-03T00:00:00.000Z"))
    leaves = [_credit(1, 100, valid=10), _credit(2, 50, pending=3), _credit(3, 70, valid=20),
              _debit(4, (1, 40)), hold]
    at = T0 + DAY
    got = fold(leaves, at=at)
    assert (got.total, got.available, got.pending, got.held) == (180, 100, 50, 30)
    assert got.expiring_next == (60, T0 + 10 * DAY)
    assert {lot.entry: lot.remaining for lot in got.lots} == {1: 60, 2: 50, 3: 70}
    # Two days later the hold has lapsed; after day 3 the pending lot matures.
    assert fold(leaves, at=T0 + 4 * DAY).available == 180
    # Past day 10 the first lot is gone whether or not an expire leaf was written.
    later = fold(leaves, at=T0 + 11 * DAY)
    assert (later.available, later.expiring_next) == (120, (70, T0 + 20 * DAY))
    swept = fold([*leaves, _debit(6, (1, 60), kind="expire")], at=T0 + 11 * DAY)
    assert swept.available == 120 and swept.total == 120
    # Capture closes the hold; a reversal gives the points back to their lot.
    captured = fold([*leaves, _debit(6, (3, 30), hold=HoldRef("h1")),
                     _leaf(entry=7, delta=30, kind="reverse", time=T0,
                           alloc=[Allocation(3, -30)])], at=at)
    assert (captured.held, captured.available, captured.total) == (0, 130, 180)
    released = fold([*leaves, _leaf(entry=6, delta=0, kind="release", time=T0,
                                    hold=HoldRef("h1"))], at=at)
    assert (released.held, released.available) == (0, 130)


@pytest.mark.parametrize("leaves", [
    [_credit(1, 10), _debit(2, (1, 11))],                      # lot below zero
    [_credit(1, 10), _debit(2, (9, 1))],                       # lot never opened
    [_credit(1, 10), _leaf(entry=2, delta=-5, kind="redeem")],  # debit without allocation
    [_credit(1, 10), _leaf(entry=2, delta=5, kind="reverse", alloc=[Allocation(1, -5)])],
    [_credit(1, 10), _credit(1, 10)],                          # a lot opened twice
    [_leaf(entry=1, delta=0, kind="release", hold=HoldRef("h"))],  # closing what is not open
    [_leaf(entry=1, delta=0, kind="release")],
    [_credit(1, 10), _leaf(entry=2, delta=0, kind="hold",
                           hold=HoldRef("h", 5, "2026-01-03T00:00:00.000Z")),
     _debit(3, (1, 6), hold=HoldRef("h"))],                   # captures more than held
])
def test_fold_refuses_a_history_that_breaks_the_ledgers_rules(leaves: list[LogLeaf]) -> None:
    with pytest.raises(TesseraError) as info:
        fold(leaves, at=T0)
    assert info.value.code is ErrorCode.MALFORMED


def test_version_1_leaves_parse_and_verify_but_support_only_totals() -> None:
    old = {"v": 1, "entry": 1, "member": "m", "delta": 10, "kind": "earn", "reason": None,
           "time": "2026-01-01T00:00:00.000Z", "idempotency_key": None}
    leaf = parse_leaf(old)
    assert leaf.to_bytes() == json.dumps(old, separators=(",", ":"), sort_keys=True).encode()
    assert total([leaf]) == 10
    with pytest.raises(TesseraError) as info:
        fold([leaf], at=T0)
    assert info.value.code is ErrorCode.UNSUPPORTED_FORMAT
    with pytest.raises(TesseraError):
        parse_leaf(old | {"kind": "hold"})  # v1 knew no holds


def test_v2_leaves_round_trip() -> None:
    for leaf in (_credit(1, 10, pending=2, valid=5), _debit(2, (1, 4), hold=HoldRef("h")),
                 _leaf(kind="hold", delta=0, hold=HoldRef("h", 5, "2026-01-03T00:00:00.000Z"))):
        assert parse_leaf(json.loads(leaf.to_bytes())) == leaf


def test_a_snapshot_carries_a_version_1_history_into_the_figures() -> None:
    from tessera.pointslog import CarriedLot, Carry

    old = [parse_leaf({"v": 1, "entry": e, "member": "m", "delta": d, "kind": k,
                       "reason": None, "time": "2026-01-01T00:00:00.000Z",
                       "idempotency_key": None})
           for e, d, k in ((1, 100, "earn"), (2, 50, "earn"), (3, -30, "redeem"))]
    carry = Carry(lots=(CarriedLot(1, 100, 70, "2026-01-01T00:00:00.000Z",
                                   "2026-01-05T00:00:00.000Z"),
                        CarriedLot(2, 50, 50, "2026-01-01T00:00:00.000Z", None)),
                  holds=(HoldRef("h", 20, "2026-01-03T00:00:00.000Z"),))
    snapshot = _leaf(entry=4, delta=0, kind="snapshot", time=T0, carry=carry)
    assert parse_leaf(json.loads(snapshot.to_bytes())) == snapshot
    got = fold([*old, snapshot, _debit(5, (1, 10))], at=T0 + DAY)
    assert (got.total, got.available, got.held, got.expiring_next) == (
        110, 90, 20, (60, T0 + 4 * DAY))
    # Lots that do not hold what the history logged are refused.
    short = dataclasses.replace(snapshot, carry=Carry(lots=carry.lots[:1]))
    with pytest.raises(TesseraError) as info:
        fold([*old, short], at=T0)
    assert info.value.code is ErrorCode.MALFORMED
    # Before its snapshot such a history supports its total only.
    with pytest.raises(TesseraError) as info:
        fold([*old, _credit(6, 5)], at=T0)
    assert info.value.code is ErrorCode.UNSUPPORTED_FORMAT
