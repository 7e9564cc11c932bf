"""tessera.pointslog: leaf encoding and pseudonyms."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tessera.encoding import canonical_json
from tessera.errors import ErrorCode, TesseraError
from tessera.merkle import leaf_hash
from tessera.pointslog import (
    Allocation,
    HoldRef,
    LogLeaf,
    LotOpen,
    fold,
    leaf_time,
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


@given(st.text(max_size=40), st.one_of(st.none(), st.text(max_size=40)))
def test_leaf_bytes_are_canonical_json_of_the_leaf(reason: str, key: str | None) -> None:
    # LogLeaf.to_bytes encodes with an encoder of its own: the same bytes as
    # canonical_json (UTF-8, not \u escapes), whatever text a leaf carries.
    leaf = _leaf(reason=reason, idempotency_key=key, kind="earn", delta=5,
                 lot=LotOpen.of(datetime(2026, 1, 2, tzinfo=UTC), None),
                 hold=HoldRef("h\u00e9", 3, "2026-01-03T00:00:00.000Z"),
                 alloc=[Allocation(1, 2)])
    assert leaf.to_bytes() == canonical_json(leaf.as_json())


_TEXTS = st.text(max_size=12)
_OPT_TEXTS = st.one_of(st.none(), _TEXTS)
_INTS = st.integers(-(2**62), 2**62)


@given(entry=_INTS, delta=_INTS, kind=_TEXTS, member=_TEXTS, reason=_OPT_TEXTS,
       key=_OPT_TEXTS, lot=st.one_of(st.none(), st.tuples(_TEXTS, _OPT_TEXTS)),
       alloc=st.lists(st.tuples(_INTS, _INTS), max_size=3),
       hold=st.one_of(st.none(), st.builds(HoldRef, _TEXTS),
                      st.builds(HoldRef, _TEXTS, _INTS, _OPT_TEXTS)))
def test_leaf_bytes_written_directly_are_canonical_json(
        entry: int, delta: int, kind: str, member: str, reason: str | None, key: str | None,
        lot: tuple[str, str | None] | None, alloc: list[tuple[int, int]],
        hold: HoldRef | None) -> None:
    # LogLeaf.to_bytes writes a version 2 leaf without carry as text directly instead of
    # encoding its dict: the same bytes as canonical_json for every field, null or not.
    leaf = LogLeaf(entry, member, delta, kind, reason, "2026-01-01T00:00:00.000Z", key,
                   LotOpen(*lot) if lot is not None else None,
                   tuple(Allocation(*a) for a in alloc), hold)
    assert leaf.to_bytes() == canonical_json(leaf.as_json())


def test_leaf_bytes_fall_back_to_the_encoder_for_what_is_not_written_directly() -> None:
    for leaf in (_leaf(delta=True), _leaf(alloc=[Allocation(True, 2)]),  # type: ignore[arg-type]
                 _leaf(hold=HoldRef("h", False, None))):  # type: ignore[arg-type]
        assert leaf.to_bytes() == canonical_json(leaf.as_json())
    assert b'"delta":true' in _leaf(delta=True).to_bytes()  # type: ignore[arg-type]


def test_leaf_time_of_any_zone_is_utc_milliseconds() -> None:
    at = datetime(2026, 3, 1, 0, 30, 0, 999999, tzinfo=timezone(timedelta(hours=1)))
    assert leaf_time(at) == "2026-02-28T23:30:00.999Z"
    assert leaf_time(at.astimezone(UTC)) == "2026-02-28T23:30:00.999Z"
    assert leaf_time(datetime(2026, 1, 1, tzinfo=UTC)) == "2026-01-01T00:00:00.000Z"


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
           hold: HoldRef | None = None, time: datetime = T0) -> LogLeaf:
    return _leaf(entry=entry, delta=-sum(p for _, p in taken), kind=kind, time=time,
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
    swept = fold([*leaves, _debit(6, (1, 60), kind="expire", time=T0 + 10 * DAY)],
                 at=T0 + 11 * DAY)
    assert swept.available == 120 and swept.total == 120
    # Capture closes the hold; a reversal gives the points back to their lot.
    captured = fold([*leaves, _debit(6, (1, 30), hold=HoldRef("h1")),
                     _leaf(entry=7, delta=30, kind="reverse", time=T0,
                           alloc=[Allocation(1, -30)])], at=at)
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


# -- debits take the lots in the ledger's order (issuer._ledger._debit) ------------------------


def _lots() -> list[LogLeaf]:
    """Lot 1 expires on day 20, lot 2 on day 10, lot 3 never, lot 4 on day 10 but is pending."""
    return [_credit(1, 100, valid=20), _credit(2, 50, valid=10), _credit(3, 70),
            _credit(4, 30, pending=5, valid=10), _credit(5, 40, valid=10)]


def _reverse(entry: int, *taken: tuple[int, int], time: datetime = T0) -> LogLeaf:
    return _debit(entry, *taken, kind="reverse", time=time)


@pytest.mark.parametrize("debit", [
    _debit(9, (2, 50), (5, 40), (1, 10)),                  # soonest expiry, then the oldest lot
    _debit(9, (2, 20), kind="adjust"),
    _debit(9, (2, 50), (5, 40), (1, 100), (3, 5)),         # the lot that never expires last
    _reverse(9, (4, 30)),                  # reversing a credit drains its own lot, even pending
    _reverse(9, (1, 100)),                 # ... or one that expires later than the others
    _reverse(9, (2, 40)),                  # ... or plain FIFO when that lot is gone
])
def test_fold_accepts_the_ledgers_lot_order(debit: LogLeaf) -> None:
    got = fold([*_lots(), debit], at=T0)
    assert got.total == 290 + debit.delta


@pytest.mark.parametrize("debit", [
    _debit(9, (1, 10)),                             # the longest-lived lot, others expire first
    _debit(9, (5, 40)),                             # same expiry as lot 2, but younger
    _debit(9, (2, 40), (5, 10)),                    # lot 2 not drained before the next
    _debit(9, (2, 50), (5, 40), (3, 10)),           # the never-expiring lot before lot 1
    _debit(9, (4, 10)),                             # a pending lot
    _debit(9, (5, 40), (2, 50)),                    # right lots, but not ...
    _debit(9, (2, 30), (2, 20)),                    # ... a lot named twice
    _debit(9, (2, 20), kind="expire", time=T0 + 10 * DAY),    # an expiry takes all that is left
    _debit(9, (1, 100), kind="expire", time=T0 + 10 * DAY),   # of a lot that has expired
    _debit(9, (2, 50), (5, 40), kind="expire", time=T0 + 10 * DAY),  # one lot per expiry
    _debit(9, (2, 10), kind="earn"),                # only debits take points
    _reverse(9, (3, 50)),                           # a reversal: no lot opened with 50
    _leaf(entry=9, delta=5, kind="adjust", time=T0, alloc=[Allocation(2, -5)]),
    _leaf(entry=9, delta=0, kind="reverse", time=T0,
          alloc=[Allocation(2, 5), Allocation(1, -5)]),
])
def test_fold_refuses_a_debit_out_of_the_ledgers_lot_order(debit: LogLeaf) -> None:
    with pytest.raises(TesseraError) as info:
        fold([*_lots(), debit], at=T0)
    assert info.value.code is ErrorCode.MALFORMED


def test_the_lot_order_follows_time_expiry_and_reversals() -> None:
    lots = _lots()
    # Day 6: lot 4 has matured and ties with lots 2 and 5 on expiry; it is older than 5.
    assert fold([*lots, _debit(9, (2, 50), (4, 30), (5, 15), time=T0 + 6 * DAY)],
                at=T0 + 6 * DAY).total == 195
    with pytest.raises(TesseraError):
        fold([*lots, _debit(9, (2, 50), (5, 40), (4, 5), time=T0 + 6 * DAY)], at=T0 + 6 * DAY)
    # Day 10: lots 2, 4 and 5 expired. Each goes with an expire of all it holds, and a
    # debit skips them whether or not that was written yet.
    swept = [_debit(9, (2, 50), kind="expire", time=T0 + 10 * DAY),
             _debit(10, (4, 30), kind="expire", time=T0 + 10 * DAY)]
    got = fold([*lots, *swept, _debit(11, (1, 20), time=T0 + 10 * DAY)], at=T0 + 10 * DAY)
    assert {lot.entry: lot.remaining for lot in got.lots} == {1: 80, 3: 70, 5: 40}
    # Points given back re-enter the order: lot 2 is again the first to expire.
    back = [_debit(9, (2, 50), (5, 5)), _reverse(10, (2, -50), (5, -5))]
    fold([*lots, *back, _debit(11, (2, 1))], at=T0)
    with pytest.raises(TesseraError):
        fold([*lots, *back, _debit(11, (5, 1))], at=T0)
    # A credit's own lot goes first once: it is reversed at most once.
    day6 = T0 + 6 * DAY
    again = [_debit(9, (2, 50), (5, 40), (1, 100), (3, 10)),
             _reverse(10, (3, 60), (4, 10), time=day6),  # lot 3's credit reversed: it goes first
             _reverse(11, (2, -50), (5, -40), (1, -100), (3, -10), time=day6)]
    fold([*lots, *again[:1], _reverse(10, (4, 30), (3, 40), time=day6)], at=day6)
    fold([*lots, *again], at=day6)
    with pytest.raises(TesseraError):
        fold([*lots, *again, _reverse(12, (3, 10), (2, 50), (4, 10), time=day6)], at=day6)
    fold([*lots, *again, _reverse(12, (2, 50), (4, 20), time=day6)], at=day6)  # plain FIFO


@pytest.mark.parametrize("back", [
    [(2, -50), (5, -40), (1, -10)],      # what it took, where it took it from
    [(1, -10), (2, -50), (5, -40)],      # in any order
])
def test_a_reversal_gives_back_what_one_debit_took(back: list[tuple[int, int]]) -> None:
    debit = _debit(9, (2, 50), (5, 40), (1, 10))
    fold([*_lots(), debit, _reverse(10, *back)], at=T0)


@pytest.mark.parametrize("back", [
    [(2, -50), (5, -40)],                # not all of it
    [(2, -50), (5, -30), (1, -20)],      # into a lot that expires sooner than it came from
    [(2, -50), (5, -40), (4, -10)],
])
def test_a_reversal_puts_nothing_into_other_lots(back: list[tuple[int, int]]) -> None:
    lots = [*_lots(), _debit(9, (2, 50), (5, 40), (1, 10)), _debit(10, (1, 20))]
    with pytest.raises(TesseraError) as info:
        fold([*lots, _reverse(11, *back)], at=T0)
    assert info.value.code is ErrorCode.MALFORMED
    # ... nor undoes one debit twice.
    fold([*lots, _reverse(11, (1, -20))], at=T0)
    with pytest.raises(TesseraError):
        fold([*lots, _reverse(11, (1, -20)), _reverse(12, (1, -20))], at=T0)


def test_a_snapshot_carries_lots_into_the_order() -> None:
    from tessera.pointslog import CarriedLot, Carry

    old = parse_leaf({"v": 1, "entry": 1, "member": "m", "delta": 90, "kind": "earn",
                      "reason": None, "time": "2026-01-01T00:00:00.000Z",
                      "idempotency_key": None})
    snapshot = _leaf(entry=4, delta=0, kind="snapshot", time=T0, carry=Carry(lots=(
        CarriedLot(1, 60, 60, "2026-01-01T00:00:00.000Z", None),
        CarriedLot(2, 30, 30, "2026-01-01T00:00:00.000Z", "2026-01-05T00:00:00.000Z"))))
    assert fold([old, snapshot, _debit(5, (2, 30), (1, 5))], at=T0).total == 55
    with pytest.raises(TesseraError) as info:
        fold([old, snapshot, _debit(5, (1, 5))], at=T0)
    assert info.value.code is ErrorCode.MALFORMED
