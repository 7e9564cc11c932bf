"""What a leaf of a brand's points transparency log is, and what a member's leaves add up to.

Shared by the issuer and the wallet. Every ledger entry becomes one leaf: the
canonical JSON (key-sorted, compact, :func:`tessera.encoding.canonical_json`) of

``{"v": 2, "entry": <ledger entry id>, "member": <pseudonym>, "delta": <points>,
"kind": <earn|redeem|adjust|expire|reverse|hold|release|snapshot>, "reason": <text|null>,
"time": <RFC 3339 UTC>, "idempotency_key": <text|null>, "lot": <lot|null>,
"alloc": [<allocation>...], "hold": <hold|null>, "carry": <carry|null>}``

hashed with RFC 9162 ``leaf_hash`` (:mod:`tessera.merkle`). Version 2 carries
what the ledger keeps beside the log, so that every figure the brand signs
can be recomputed from the leaves alone (DESIGN.md: "state kept beside the
log (lots, holds) is a cache of it, and the audit recomputes it"):

* ``lot``: a credit opens a lot, ``{"available_at": T, "expires_at": T|null}``
  (pending until ``available_at``, the return window; gone at ``expires_at``);
  its amount is the leaf's delta and its name the leaf's ``entry``.
* ``alloc``: ``[{"lot": <entry that opened it>, "points": n}]``, what a debit
  took from each lot (negative when a reversal puts points back).
  ``delta == (lot amount) - sum(alloc)`` for every leaf. A debit lists its
  allocations in the order :func:`fold` requires, that of ``issuer._ledger._debit``.
* ``hold``: a ``hold`` leaf opens one, ``{"id", "points", "expires_at"}``;
  the ``redeem`` that captures it, the ``release`` and the zero-point
  ``expire`` that closes it name it as ``{"id"}``.
* ``carry``: a zero-point ``snapshot`` leaf written once for a member whose
  history began with version 1 leaves: ``{"lots": [{"lot", "amount",
  "remaining", "available_at", "expires_at"}], "holds": [<hold>...]}``, the
  lots and open holds the ledger kept at that moment (with the drained lots
  a reversal may still refill). Their points must add up to the history's
  total; from there on every figure is derivable.

:func:`fold` is the one definition of those figures (balance, available,
pending, held, lots with their expiry); the issuer checks what it signs
against it and the wallet's audit recomputes it. Version 1 leaves (``v: 1``,
without the last four members) still parse and verify; a history holding one
supports only its total until its ``snapshot``.

The member is a *pseudonym*: HMAC-SHA-256 of the member id under a secret of
the brand's log. Public readers see only pseudonyms and hashes; a member
erased later leaves hashes behind that still prove every other member's
entries.
"""

from __future__ import annotations

import bisect
import hashlib
import hmac
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from tessera.encoding import b64url_encode, parse_datetime
from tessera.errors import ErrorCode, TesseraError
from tessera.merkle import leaf_hash

__all__ = [
    "LEAF_KINDS",
    "LEAF_VERSION",
    "Allocation",
    "CarriedLot",
    "Carry",
    "Figures",
    "HoldRef",
    "LogLeaf",
    "LotOpen",
    "LotState",
    "OpenHold",
    "fold",
    "leaf_bytes",
    "leaf_time",
    "log_origin",
    "member_pseudonym",
    "parse_leaf",
    "total",
]

LEAF_VERSION: Final = 2
LEAF_KINDS: Final = frozenset({"earn", "redeem", "adjust", "expire", "reverse", "hold",
                               "release", "snapshot"})
_V1_KINDS: Final = frozenset({"earn", "redeem", "adjust", "expire", "reverse"})
_KEYS_V1: Final = frozenset({"v", "entry", "member", "delta", "kind", "reason", "time",
                             "idempotency_key"})
_KEYS: Final = _KEYS_V1 | {"lot", "alloc", "hold", "carry"}
MAX_TEXT: Final = 500
MAX_ALLOCATIONS: Final = 10_000


def member_pseudonym(secret: bytes, member_id: str) -> str:
    """The member's name in the log; the label keeps this HMAC from meaning anything else."""
    if len(secret) < 32:
        raise TesseraError(ErrorCode.INVALID_REQUEST, "pseudonym secret must be 32+ bytes")
    mac = hmac.new(secret, b"tessera-log-member:" + member_id.encode(), hashlib.sha256)
    return b64url_encode(mac.digest())


def leaf_time(value: datetime) -> str:
    """A time as leaves write it: UTC, millisecond precision, ``Z``."""
    if value.tzinfo is None:
        raise TesseraError(ErrorCode.INVALID_REQUEST, "leaf time must be timezone-aware")
    # Millisecond precision: PostgreSQL keeps microseconds, SQLite may not keep
    # the offset; truncating keeps the leaf identical wherever it is rebuilt.
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class LotOpen:
    """The lot a credit opens: pending until ``available_at``, gone at ``expires_at``."""

    available_at: str
    expires_at: str | None

    @classmethod
    def of(cls, available_at: datetime, expires_at: datetime | None) -> LotOpen:
        return cls(leaf_time(available_at), leaf_time(expires_at) if expires_at else None)

    def as_json(self) -> dict[str, Any]:
        return {"available_at": self.available_at, "expires_at": self.expires_at}


@dataclass(frozen=True)
class Allocation:
    """``points`` taken from the lot opened by entry ``lot`` (negative: given back)."""

    lot: int
    points: int


@dataclass(frozen=True)
class HoldRef:
    """A hold: opened with ``points`` and ``expires_at``, closed by naming its ``id``."""

    id: str
    points: int | None = None
    expires_at: str | None = None

    def as_json(self) -> dict[str, Any]:
        if self.points is None:
            return {"id": self.id}
        return {"id": self.id, "points": self.points, "expires_at": self.expires_at}


@dataclass(frozen=True)
class CarriedLot:
    """A lot as the ledger kept it when a version 1 history was carried into the log."""

    lot: int
    amount: int
    remaining: int
    available_at: str
    expires_at: str | None

    def as_json(self) -> dict[str, Any]:
        return {"lot": self.lot, "amount": self.amount, "remaining": self.remaining,
                "available_at": self.available_at, "expires_at": self.expires_at}


@dataclass(frozen=True)
class Carry:
    lots: tuple[CarriedLot, ...] = ()
    holds: tuple[HoldRef, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {"lots": [lot.as_json() for lot in self.lots],
                "holds": [hold.as_json() for hold in self.holds]}


@dataclass(frozen=True)
class LogLeaf:
    entry: int
    member: str
    delta: int
    kind: str
    reason: str | None
    time: str
    idempotency_key: str | None
    lot: LotOpen | None = None
    alloc: tuple[Allocation, ...] = ()
    hold: HoldRef | None = None
    carry: Carry | None = None
    v: int = LEAF_VERSION

    @classmethod
    def of(cls, *, entry: int, member: str, delta: int, kind: str, reason: str | None,
           time: datetime, idempotency_key: str | None, lot: LotOpen | None = None,
           alloc: Sequence[Allocation] = (), hold: HoldRef | None = None,
           carry: Carry | None = None) -> LogLeaf:
        return cls(entry, member, delta, kind, reason, leaf_time(time), idempotency_key,
                   lot, tuple(alloc), hold, carry)

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "v": self.v, "entry": self.entry, "member": self.member, "delta": self.delta,
            "kind": self.kind, "reason": self.reason, "time": self.time,
            "idempotency_key": self.idempotency_key}
        if self.v >= 2:
            body["lot"] = self.lot.as_json() if self.lot else None
            body["alloc"] = [{"lot": a.lot, "points": a.points} for a in self.alloc]
            body["hold"] = self.hold.as_json() if self.hold else None
            body["carry"] = self.carry.as_json() if self.carry else None
        return body

    def to_bytes(self) -> bytes:
        # canonical_json's settings on an encoder built once (json.dumps with options
        # builds one per call): every ledger write serialises its leaves here.
        if self.v != 2 or self.carry is not None or type(self.entry) is not int \
                or type(self.delta) is not int or not _ints(self.alloc, self.hold):
            return _CANONICAL(self.as_json()).encode()
        # The leaf of a ledger write, written out directly in canonical_json's key order
        # and escapes (tests/tessera/test_pointslog.py compares the two on any text):
        # no dicts built and sorted on each write (bench/README.md, "Session 8").
        text, lot, hold = _TEXT, self.lot, self.hold
        alloc = ",".join([f'{{"lot":{a.lot},"points":{a.points}}}' for a in self.alloc])
        return (
            f'{{"alloc":[{alloc}],"carry":null,"delta":{self.delta},"entry":{self.entry},'
            f'"hold":{"null" if hold is None else _hold_text(hold)},'
            f'"idempotency_key":{_nullable(self.idempotency_key)},"kind":{text(self.kind)},'
            f'"lot":{"null" if lot is None else _lot_text(lot)},"member":{text(self.member)},'
            f'"reason":{_nullable(self.reason)},"time":{text(self.time)},"v":2}}'
        ).encode()

    @property
    def hash(self) -> bytes:
        return leaf_hash(self.to_bytes())


_CANONICAL: Final = json.JSONEncoder(separators=(",", ":"), sort_keys=True,
                                    ensure_ascii=False).encode
# The string escapes of that encoder (ensure_ascii off), for LogLeaf.to_bytes.
_TEXT: Final[Callable[[str], str]] = json.encoder.encode_basestring


def _nullable(value: str | None) -> str:
    return "null" if value is None else _TEXT(value)


def _lot_text(lot: LotOpen) -> str:
    return f'{{"available_at":{_TEXT(lot.available_at)},"expires_at":{_nullable(lot.expires_at)}}}'


def _hold_text(hold: HoldRef) -> str:
    if hold.points is None:
        return f'{{"id":{_TEXT(hold.id)}}}'
    return (f'{{"expires_at":{_nullable(hold.expires_at)},"id":{_TEXT(hold.id)},'
            f'"points":{hold.points}}}')


def _ints(alloc: Sequence[Allocation], hold: HoldRef | None) -> bool:
    """Whether the numbers LogLeaf.to_bytes writes as text are plain ints (as JSON would)."""
    return (all(type(a.lot) is int and type(a.points) is int for a in alloc) if alloc else True) \
        and (hold is None or hold.points is None or type(hold.points) is int)


def leaf_bytes(leaf: LogLeaf) -> bytes:
    return leaf.to_bytes()


def _int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or abs(value) > 2**62:
        raise TesseraError(ErrorCode.MALFORMED, f"leaf {what} must be an integer")
    return value


def _text(value: Any, what: str, *, optional: bool) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise TesseraError(ErrorCode.MALFORMED, f"leaf {what} must be a string")
    return value


def _when(value: Any, what: str, *, optional: bool = False) -> str | None:
    text = _text(value, what, optional=optional)
    if text is not None:
        parse_datetime(text, f"leaf {what}")
    return text


def _object(value: Any, keys: frozenset[str], what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping) or set(value) != keys:
        raise TesseraError(ErrorCode.MALFORMED, f"leaf {what} has missing or unknown members")
    return value


def _lot(value: Any) -> LotOpen | None:
    if value is None:
        return None
    body = _object(value, frozenset({"available_at", "expires_at"}), "lot")
    available = _when(body["available_at"], "lot available_at")
    assert available is not None
    return LotOpen(available, _when(body["expires_at"], "lot expires_at", optional=True))


def _alloc(value: Any) -> tuple[Allocation, ...]:
    if not isinstance(value, list) or len(value) > MAX_ALLOCATIONS:
        raise TesseraError(ErrorCode.MALFORMED, "leaf alloc must be a list")
    out = []
    for item in value:
        body = _object(item, frozenset({"lot", "points"}), "allocation")
        out.append(Allocation(_int(body["lot"], "allocation lot"),
                              _int(body["points"], "allocation points")))
    return tuple(out)


def _hold(value: Any) -> HoldRef | None:
    if value is None:
        return None
    if isinstance(value, Mapping) and set(value) == {"id"}:
        ident = _text(value["id"], "hold id", optional=False)
        assert ident is not None
        return HoldRef(ident)
    body = _object(value, frozenset({"id", "points", "expires_at"}), "hold")
    ident = _text(body["id"], "hold id", optional=False)
    assert ident is not None
    return HoldRef(ident, _int(body["points"], "hold points"),
                   _when(body["expires_at"], "hold expires_at"))


def _carry(value: Any) -> Carry | None:
    if value is None:
        return None
    body = _object(value, frozenset({"lots", "holds"}), "carry")
    lots, holds = body["lots"], body["holds"]
    if not isinstance(lots, list) or not isinstance(holds, list) \
            or len(lots) + len(holds) > MAX_ALLOCATIONS:
        raise TesseraError(ErrorCode.MALFORMED, "leaf carry must hold lists")
    carried = []
    for item in lots:
        lot = _object(item, frozenset({"lot", "amount", "remaining", "available_at",
                                       "expires_at"}), "carried lot")
        available = _when(lot["available_at"], "carried lot available_at")
        assert available is not None
        carried.append(CarriedLot(_int(lot["lot"], "carried lot"),
                                  _int(lot["amount"], "carried lot amount"),
                                  _int(lot["remaining"], "carried lot remaining"), available,
                                  _when(lot["expires_at"], "carried lot expires_at",
                                        optional=True)))
    opened = []
    for item in holds:
        hold = _hold(item)
        if hold is None or hold.points is None:
            raise TesseraError(ErrorCode.MALFORMED, "a carried hold states its points")
        opened.append(hold)
    return Carry(tuple(carried), tuple(opened))


def parse_leaf(value: Mapping[str, Any]) -> LogLeaf:
    """A leaf as served by the log API, checked strictly (unknown members refused)."""
    if not isinstance(value, Mapping) or "v" not in value:
        raise TesseraError(ErrorCode.MALFORMED, "leaf has missing or unknown members")
    version = value["v"]
    if version not in (1, LEAF_VERSION) or isinstance(version, bool):
        raise TesseraError(ErrorCode.UNSUPPORTED_FORMAT, "unknown leaf version")
    if set(value) != (_KEYS_V1 if version == 1 else _KEYS):
        raise TesseraError(ErrorCode.MALFORMED, "leaf has missing or unknown members")
    kind = value["kind"]
    if kind not in (_V1_KINDS if version == 1 else LEAF_KINDS):
        raise TesseraError(ErrorCode.MALFORMED, "unknown leaf kind")
    time = _text(value["time"], "time", optional=False)
    assert time is not None
    member = _text(value["member"], "member", optional=False)
    assert member is not None
    extra: dict[str, Any] = {}
    if version >= 2:
        extra = {"lot": _lot(value["lot"]), "alloc": _alloc(value["alloc"]),
                 "hold": _hold(value["hold"]), "carry": _carry(value["carry"])}
    return LogLeaf(entry=_int(value["entry"], "entry"), member=member,
                   delta=_int(value["delta"], "delta"), kind=kind,
                   reason=_text(value["reason"], "reason", optional=True), time=time,
                   idempotency_key=_text(value["idempotency_key"], "idempotency_key",
                                         optional=True), v=int(version), **extra)


def total(leaves: Iterable[LogLeaf]) -> int:
    """The balance the log supports: the sum of the deltas (pending and held included)."""
    return sum(leaf.delta for leaf in leaves)


# -- the figures a member's leaves imply ---------------------------------------------------------


@dataclass(frozen=True)
class LotState:
    entry: int
    amount: int
    remaining: int
    available_at: datetime
    expires_at: datetime | None


@dataclass(frozen=True)
class OpenHold:
    id: str
    points: int
    expires_at: datetime


@dataclass(frozen=True)
class Figures:
    """What the log says of one member at ``at``, computed as the ledger's balance is.

    ``available`` is matured, unexpired lots less live holds (never below
    zero), ``pending`` the unexpired lots still in their return window,
    ``held`` the holds not yet closed nor past their expiry, and
    ``expiring_next`` the points of the live lots that expire first and when.
    ``lots`` and ``holds`` are the state the ledger keeps beside the log:
    every lot with points left, every hold not closed.
    """

    at: datetime
    total: int
    available: int
    pending: int
    held: int
    expiring_next: tuple[int, datetime] | None
    lots: tuple[LotState, ...] = field(default=())
    holds: tuple[OpenHold, ...] = field(default=())


def _bad(leaf: LogLeaf, why: str) -> TesseraError:
    return TesseraError(ErrorCode.MALFORMED, f"leaf of entry {leaf.entry}: {why}")


def _dt(value: str) -> datetime:
    return parse_datetime(value, "leaf time")


_NEVER: Final = datetime.max.replace(tzinfo=UTC)


def _queue_key(entry: int, lot: list[Any]) -> tuple[bool, datetime, int]:
    """The order ``issuer._ledger._debit`` takes lots in: soonest expiry, never-expiring last,
    then the oldest lot (a member's lot ids and the entries opening them grow together)."""
    return (lot[3] is None, lot[3] or _NEVER, entry)


def _fifo(lots: Mapping[int, list[Any]], queue: Sequence[tuple[bool, datetime, int]],
          need: int, at: datetime, first: int | None) -> dict[int, int]:
    """What ``issuer._ledger._debit`` allocates for ``need`` points at ``at``.

    Mirrors it exactly: matured (``available_at <= at``), unexpired lots with
    points left, in :func:`_queue_key` order, each drained before the next;
    ``first`` (the lot of a credit being reversed, pending or not) before all.
    """
    out: dict[int, int] = {}
    if first is not None:
        out[first] = min(lots[first][1], need)
        need -= out[first]
    for _, _, entry in queue:
        if need == 0:
            break
        lot = lots[entry]
        if entry == first or lot[2] > at or (lot[3] is not None and lot[3] <= at):
            continue
        out[entry] = min(lot[1], need)
        need -= out[entry]
    return out


def _check_debit(leaf: LogLeaf, lots: Mapping[int, list[Any]],
                 queue: Sequence[tuple[bool, datetime, int]], reversed_lots: set[int]) -> None:
    """A debit takes its points in the ledger's first-earned, first-expired order.

    DESIGN.md: "expiry by lot (first earned, first expired)". Without this a
    brand could spend a member's longest-lived lot and let the short-lived
    ones expire, and every other rule of the fold would still hold.
    """
    taken = [(a.lot, a.points) for a in leaf.alloc]
    if leaf.lot is not None or any(points <= 0 for _, points in taken) \
            or len({lot for lot, _ in taken}) != len(taken):
        raise _bad(leaf, "a debit takes points from distinct lots and opens none")
    at = _dt(leaf.time)
    if leaf.kind == "expire":
        # issuer._ledger._sweep_expired: one entry per lot past its expiry, taking all it holds.
        ((entry, points),) = taken if len(taken) == 1 else ((None, 0),)
        lot = lots.get(entry) if entry is not None else None
        if lot is None or lot[3] is None or lot[3] > at or points != lot[1]:
            raise _bad(leaf, "an expiry takes all that is left of one expired lot")
        return
    if leaf.kind not in ("redeem", "adjust", "reverse"):
        raise _bad(leaf, f"a {leaf.kind} takes no points from lots")
    need = sum(points for _, points in taken)
    # In the order taken, as the ledger writes them (issuer._translog: by allocation id).
    if taken == list(_fifo(lots, queue, need, at, None).items()):
        return
    if leaf.kind == "reverse":
        # The reversal of a credit drains the credit's own lot first (the
        # return-window case). The leaf does not name that credit, but its lot
        # opened with the points now taken back, and is reversed at most once.
        entry = taken[0][0]
        lot = lots[entry]
        if lot[0] == need and entry not in reversed_lots and (lot[3] is None or lot[3] > at) \
                and taken == list(_fifo(lots, queue, need, at, entry).items()):
            reversed_lots.add(entry)
            return
    raise _bad(leaf, "a debit must take from the lots that expire first (first earned, "
                     "first expired)")


def fold(leaves: Iterable[LogLeaf], *, at: datetime) -> Figures:
    """Replay one member's leaves (in log order) into the figures they imply at ``at``.

    Pure and total over well-formed input: a history that breaks the ledger's
    own rules (a lot taken below zero or above its amount, an allocation from
    a lot never opened, a delta that is not credit minus allocations, a hold
    closed twice or captured above its amount, a snapshot whose lots do not
    add up to the history's total, a debit that does not take from the lots in
    the ledger's order: soonest expiry first, see :func:`_fifo`) is ``malformed``.
    Version 1 leaves carry no lots: until a ``snapshot`` leaf states them only
    the total is followed, and a history still in that state is
    ``unsupported_format``.
    """
    if at.tzinfo is None:
        raise TesseraError(ErrorCode.INVALID_REQUEST, "fold time must be timezone-aware")
    lots: dict[int, list[Any]] = {}  # entry -> [amount, remaining, available_at, expires_at]
    queue: list[tuple[bool, datetime, int]] = []  # lots with points left, in debit order
    reversed_lots: set[int] = set()
    # Debits a reversal may still undo (issuer._ledger.reverse: redeem and adjust, once
    # each): those logged with lots, by what they took, and those before the
    # snapshot, by their points only.
    undoable: dict[tuple[tuple[int, int], ...], int] = {}
    earlier: dict[int, int] = {}
    holds: dict[str, OpenHold] = {}
    closed: set[str] = set()
    balance = 0
    known = True  # False from a version 1 leaf until a snapshot
    for leaf in leaves:
        if leaf.v < 2 or (not known and leaf.kind != "snapshot"):
            known = False
            balance += leaf.delta
            if leaf.kind in ("redeem", "adjust") and leaf.delta < 0:
                earlier[-leaf.delta] = earlier.get(-leaf.delta, 0) + 1
            elif leaf.kind == "reverse" and earlier.get(leaf.delta, 0) > 0:
                earlier[leaf.delta] -= 1
            continue
        if leaf.kind == "snapshot" or leaf.carry is not None:
            if leaf.kind != "snapshot" or leaf.carry is None or leaf.delta != 0 \
                    or leaf.lot is not None or leaf.alloc or leaf.hold is not None:
                raise _bad(leaf, "a snapshot carries lots and holds, and nothing else")
            lots, holds, closed, reversed_lots = {}, {}, set(), set()
            for c in leaf.carry.lots:
                if not 0 <= c.remaining <= c.amount or c.amount <= 0 or c.lot in lots:
                    raise _bad(leaf, f"carried lot {c.lot} is not a lot")
                lots[c.lot] = [c.amount, c.remaining, _dt(c.available_at),
                               _dt(c.expires_at) if c.expires_at else None]
            for h in leaf.carry.holds:
                if h.points is None or h.expires_at is None or h.points <= 0 or h.id in holds:
                    raise _bad(leaf, f"carried hold {h.id} is not a hold")
                holds[h.id] = OpenHold(h.id, h.points, _dt(h.expires_at))
            queue = sorted(_queue_key(entry, lot) for entry, lot in lots.items() if lot[1] > 0)
            if sum(lot[1] for lot in lots.values()) != balance:
                raise _bad(leaf, f"carried lots hold other than the {balance} points logged")
            known = True
            continue
        credit = 0
        if leaf.lot is not None:
            if leaf.delta <= 0 or leaf.entry in lots:
                raise _bad(leaf, "a lot must open once with a positive amount")
            credit = leaf.delta
            lots[leaf.entry] = [leaf.delta, leaf.delta, _dt(leaf.lot.available_at),
                                _dt(leaf.lot.expires_at) if leaf.lot.expires_at else None]
            bisect.insort(queue, _queue_key(leaf.entry, lots[leaf.entry]))
        if any(a.lot not in lots or a.points == 0 for a in leaf.alloc):
            raise _bad(leaf, "allocation from a lot never opened")
        if any(a.points > 0 for a in leaf.alloc):
            _check_debit(leaf, lots, queue, reversed_lots)
            if leaf.kind in ("redeem", "adjust"):
                key = tuple(sorted((a.lot, a.points) for a in leaf.alloc))
                undoable[key] = undoable.get(key, 0) + 1
        elif leaf.alloc:
            # issuer._ledger.reverse puts back what the debit took, lot by lot.
            key = tuple(sorted((a.lot, -a.points) for a in leaf.alloc))
            if leaf.kind != "reverse":
                raise _bad(leaf, "only a reversal gives points back to lots")
            if undoable.get(key, 0) > 0:
                undoable[key] -= 1
            elif earlier.get(leaf.delta, 0) > 0:  # a debit whose lots predate the log's
                earlier[leaf.delta] -= 1
            else:
                raise _bad(leaf, "a reversal gives back what one debit took, to its lots")
        taken = 0
        for a in leaf.alloc:
            lot = lots[a.lot]
            was = lot[1]
            lot[1] -= a.points
            if not 0 <= lot[1] <= lot[0]:
                raise _bad(leaf, f"lot {a.lot} would hold {lot[1]} of {lot[0]} points")
            order = _queue_key(a.lot, lot)
            if was > 0 and lot[1] == 0:
                del queue[bisect.bisect_left(queue, order)]
            elif was == 0 and lot[1] > 0:
                bisect.insort(queue, order)
            taken += a.points
        if leaf.delta != credit - taken:
            raise _bad(leaf, "delta is not the lot opened less the points allocated")
        balance += leaf.delta
        ref = leaf.hold
        if leaf.kind == "hold":
            if ref is None or ref.points is None or ref.expires_at is None or ref.points <= 0 \
                    or ref.id in holds or ref.id in closed or leaf.delta != 0:
                raise _bad(leaf, "a hold opens once, with points and an expiry")
            holds[ref.id] = OpenHold(ref.id, ref.points, _dt(ref.expires_at))
        elif ref is not None:
            opened = holds.pop(ref.id, None)
            if opened is None or ref.points is not None:
                raise _bad(leaf, f"closes hold {ref.id}, which is not open")
            if -leaf.delta > opened.points:
                raise _bad(leaf, "captures more than was held")
            closed.add(ref.id)
        elif leaf.kind == "release":
            raise _bad(leaf, "a release names its hold")
    if not known:
        raise TesseraError(ErrorCode.UNSUPPORTED_FORMAT,
                           "the history begins before lots were logged (v1) and has no snapshot")
    live = [(entry, lot) for entry, lot in lots.items()
            if lot[1] > 0 and (lot[3] is None or lot[3] > at)]
    matured = sum(lot[1] for _, lot in live if lot[2] <= at)
    pending = sum(lot[1] for _, lot in live if lot[2] > at)
    held = sum(h.points for h in holds.values() if h.expires_at > at)
    expiring = [lot[3] for _, lot in live if lot[3] is not None]
    nxt = None
    if expiring:
        first = min(expiring)
        nxt = (sum(lot[1] for _, lot in live if lot[3] == first), first)
    return Figures(
        at=at, total=balance, available=max(0, matured - held), pending=pending, held=held,
        expiring_next=nxt,
        lots=tuple(LotState(entry, lot[0], lot[1], lot[2], lot[3])
                   for entry, lot in lots.items() if lot[1] > 0),
        holds=tuple(holds.values()))


def log_origin(brand_did: str) -> str:
    """The C2SP checkpoint origin of a brand's log: its URL prefix without the scheme.

    tlog-tiles §Parameters: the origin SHOULD be the schema-less URL prefix of
    the log. Derived from the brand's did:web (the folder of its did.json), so
    the issuer and every member compute the same line from the DID alone.
    """
    from tessera.did import did_web_url

    return did_web_url(brand_did).removeprefix("https://").removesuffix("/did.json") + "/log"
