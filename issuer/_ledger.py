"""The points ledger: append-only entries, lots, holds, idempotency, tiers.

Rules (DESIGN.md, "Points, redemption and the log"):

* Entries are never updated or deleted. A reversal is a new ``reverse``
  entry pointing at the one it undoes (at most one per entry, enforced by a
  unique column); a correction is an ``adjust`` with a reason and an operator.
* Every credit (earn, positive adjust) opens a :class:`PointLot`. Debits
  (redeem, negative adjust, expire, reversal of a credit) take from lots
  first-in first-out (soonest expiry, then oldest) and record a
  :class:`LotAllocation` per lot; reversing a debit writes negative
  allocations that put the points back into the very lots they came from.
  Balances therefore never go negative: a debit that the lots cannot cover
  is refused with ``insufficient_balance``, and a CHECK constraint on
  ``point_lot.remaining`` backs that up.
* Earned points are pending until ``available_at`` (the return window);
  lots expire at ``expires_at`` and an ``expire`` entry per lot is written
  the next time the member's ledger is touched. Expired lots never count,
  whether or not the sweep has run yet.
* Qualifying (tier) points are a separate column: redemption does not lower
  them, reversal of an earn does.
* Redemption is either a one-step ``redeem`` or ``hold`` -> ``capture``
  (possibly partial) / ``release``, like a card authorisation.
* Every write is idempotent under a client key scoped to the brand: the
  same key with the same arguments returns the stored response; with other
  arguments it is ``conflict``. Failed writes store nothing, so a client can
  retry after topping up.

Concurrency: every write first locks the member row (``SELECT ... FOR
UPDATE`` on PostgreSQL; on SQLite the whole transaction runs under ``BEGIN
IMMEDIATE``, see :mod:`issuer._db`) and reads balances after the lock, so two
redemptions can never both spend the same points.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, TypeVar

import sqlalchemy
from sqlalchemy import Insert, Select, Update, and_, bindparam, case, event, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlmodel import Session, col, func, select

from issuer import _translog
from issuer._admin import tiers_of
from issuer._db import MAIN_KEY, core, core_insert, core_with_writes, session_scope, table_of
from issuer._keystore import KeyStore
from issuer._models import (
    MAX_POINTS,
    Balance,
    DowngradePolicy,
    EntryKind,
    ExpiringNext,
    HoldStatus,
    IdempotencyRecord,
    LedgerEntry,
    LedgerEntryPublic,
    LotAllocation,
    Member,
    PointHold,
    PointHoldPublic,
    PointLot,
    Program,
    Tier,
    new_id,
)
from issuer._status_lists import revoke_current
from tessera.encoding import canonical_json
from tessera.errors import ErrorCode, TesseraError
from tessera.pointslog import Figures

__all__ = [
    "Entry",
    "Hold",
    "Lot",
    "MemberRow",
    "Outcome",
    "Then",
    "adjust",
    "balance",
    "capture_hold",
    "checked_balance",
    "create_hold",
    "earn",
    "evaluate_tier",
    "hold_public",
    "hold_row",
    "list_entries",
    "lock_member",
    "lock_member_by_number",
    "locked_member",
    "redeem",
    "release_expired_holds",
    "release_hold",
    "reverse",
    "run_write",
]

T = TypeVar("T")
MAX_HOLD_SECONDS: Final = 30 * 24 * 3600
_RETRYABLE_SQLSTATES: Final = frozenset({"40001", "40P01"})  # serialization failure, deadlock


@dataclass(frozen=True)
class Outcome:
    """The response of a ledger write; ``replayed`` when it came from the idempotency store."""

    status_code: int
    body: dict[str, Any]
    replayed: bool


def run_write(engine: Engine, fn: Callable[[Session], T], *, attempts: int = 3,
              durable: bool = True, keystore: KeyStore | None = None) -> T:
    """Run ``fn`` in its own transaction, retrying races the database reports.

    A unique violation (the same idempotency key racing on two members, a
    concurrent enrolment) or a PostgreSQL serialization failure/deadlock is
    retried; the retry sees the winner's row and answers replay or conflict.
    With ``keystore``, ledger writes in ``fn`` answer with a signed inclusion
    promise of their log leaves (``log_promise``, :func:`issuer._translog.promise`).
    """
    for attempt in range(attempts):
        try:
            with session_scope(engine, durable=durable) as session:
                if keystore is not None:
                    session.info[_translog.KEYSTORE] = keystore
                return fn(session)
        except IntegrityError as exc:
            if attempt == attempts - 1:
                raise TesseraError(ErrorCode.CONFLICT, "conflicting concurrent write") from exc
        except DBAPIError as exc:
            sqlstate = getattr(exc.orig, "sqlstate", None)
            if sqlstate not in _RETRYABLE_SQLSTATES or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


# -- reads ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class Lot:
    """A :class:`PointLot` as the write path reads it: a plain row, no ORM object (loading
    and instrumenting one cost more than the query, bench/README.md "Redemption, fourth
    pass (session 6)"). ``remaining`` changes only through :func:`_set_remaining` (a Core
    ``UPDATE`` and this copy together)."""

    id: int
    member_id: str
    entry_id: int
    amount: int
    remaining: int
    available_at: datetime
    expires_at: datetime | None


@dataclass(slots=True)
class Hold:
    """A :class:`PointHold` as the write path reads and writes it (a plain row, as
    :class:`Lot`); it closes through :func:`_close_hold`."""

    id: str
    brand_id: str
    member_id: str
    points: int
    reference: str | None
    status: str
    created_at: datetime
    expires_at: datetime
    closed_at: datetime | None = None
    captured_points: int | None = None


def _live(lot: Lot, now: datetime) -> bool:
    return lot.remaining > 0 and (lot.expires_at is None or lot.expires_at > now)


# The hot reads are built once, with bound parameters: building a statement and its
# cache key cost about a third of each query (py-spy, bench/README.md "Issuance
# profile (session 4)"); a prebuilt statement memoizes its cache key. Lots and holds
# are read as plain rows (issuer._db.core: no autoflush; every write to them on the
# write path is a Core statement, and the rest flush before they read).
_LOT_TABLE: Final = table_of(PointLot)
_HOLD_TABLE: Final = table_of(PointHold)
_LIVE_LOTS: Final = and_(_LOT_TABLE.c.member_id == bindparam("member_id"),
                         _LOT_TABLE.c.remaining > 0)
_LOTS: Final = sqlalchemy.select(_LOT_TABLE).where(_LIVE_LOTS)
_LOT_OF_ENTRY: Final = sqlalchemy.select(_LOT_TABLE).where(
    _LOT_TABLE.c.entry_id == bindparam("entry_id"))
_SET_REMAINING: Final = (update(_LOT_TABLE).where(_LOT_TABLE.c.id == bindparam("_pk"))
                         .values(remaining=bindparam("remaining")))
_REFILL: Final = (update(_LOT_TABLE).where(_LOT_TABLE.c.id == bindparam("_pk"))
                  .values(remaining=_LOT_TABLE.c.remaining + bindparam("refill")))
_HELD: Final = and_(_HOLD_TABLE.c.member_id == bindparam("member_id"),
                    _HOLD_TABLE.c.status == HoldStatus.HELD,
                    _HOLD_TABLE.c.expires_at > bindparam("now"))
_OPEN_HOLDS: Final = sqlalchemy.select(_HOLD_TABLE).where(_HELD)
_HOLD: Final = sqlalchemy.select(_HOLD_TABLE).where(_HOLD_TABLE.c.id == bindparam("id"))
_CLOSE_HOLD: Final = (update(_HOLD_TABLE).where(_HOLD_TABLE.c.id == bindparam("_pk"))
                      .values(status=bindparam("status"), closed_at=bindparam("closed_at"),
                              captured_points=bindparam("captured_points")))
# Entries without qualifying points add nothing to the sums: leaving them out (a constant,
# as ix_ledger_entry_member_qualifying's condition says) reads only those that count.
_COUNTS: Final = col(LedgerEntry.qualifying_points) != sqlalchemy.literal_column("0")
_QUALIFYING_SUM: Final = select(func.coalesce(func.sum(LedgerEntry.qualifying_points), 0)).where(
    col(LedgerEntry.member_id) == bindparam("member_id"), _COUNTS,
    col(LedgerEntry.qualifying_at) > bindparam("since"),
    col(LedgerEntry.qualifying_at) <= bindparam("now"))
_PRIOR: dict[int, Select[Any]] = {}


def _prior(windows: int) -> Select[Any]:
    """What a write reads after the member's lock, in one statement (built once per
    number of periods): the idempotency record a key names (if any) with the member's
    qualifying sums over ``windows`` periods (part 0, one row always: the sums'
    aggregate, the record outer-joined to it), the member's live lots (part 1) and
    open holds (part 2), each part's columns NULL in the others' rows.

    All of it is read after the lock, in a statement of its own: under READ COMMITTED
    it sees every write committed before the lock was granted (a subquery of the
    locking ``SELECT ... FOR UPDATE`` would not: it reads the snapshot taken before
    the wait, bench/README.md "Redemption, third pass (session 5)"). Every write reads
    the lots and open holds anyway (the expiry sweep, the balance it answers with):
    one round trip instead of three (bench/README.md "Redemption, sixth pass
    (session 8)"). Each part is its own indexed lookup (the record by its unique key,
    lots and holds by their member indexes).
    """
    stmt = _PRIOR.get(windows)
    if stmt is None:
        entries, record = table_of(LedgerEntry), table_of(IdempotencyRecord)
        sums = sqlalchemy.select(*(func.coalesce(func.sum(case(
            (entries.c.qualifying_at > bindparam(f"since_{i}"), entries.c.qualifying_points),
            else_=0)), 0).label(f"q{i}") for i in range(windows))).where(
            entries.c.member_id == bindparam("member_id"), _COUNTS,
            entries.c.qualifying_at > bindparam("since"),
            entries.c.qualifying_at <= bindparam("now")).subquery("sums")
        head = [record.c.fingerprint, record.c.status_code, record.c.response,
                *(sums.c[f"q{i}"] for i in range(windows))]

        def nulls(columns: Any, prefix: str) -> list[Any]:
            # Typed NULLs: PostgreSQL types a UNION column from its parts (NULL alone is
            # text); the first part's column types decide the row processors.
            return [sqlalchemy.cast(sqlalchemy.null(), c.type).label(prefix + c.name)
                    for c in columns]

        def own(columns: Any, prefix: str) -> list[Any]:
            return [c.label(prefix + c.name) for c in columns]

        part: Any = sqlalchemy.literal_column("0").label("part")
        first = sqlalchemy.select(part, *head, *nulls(_LOT_TABLE.c, "l_"),
                                  *nulls(_HOLD_TABLE.c, "h_")).select_from(sums.outerjoin(
            record, and_(record.c.brand_id == bindparam("brand_id"),
                         record.c.key == bindparam("key"))))
        lots = sqlalchemy.select(sqlalchemy.literal_column("1"), *nulls(head, "x_"),
                                 *own(_LOT_TABLE.c, "l_"), *nulls(_HOLD_TABLE.c, "h_")
                                 ).where(_LIVE_LOTS)
        holds = sqlalchemy.select(sqlalchemy.literal_column("2"), *nulls(head, "x_"),
                                  *nulls(_LOT_TABLE.c, "l_"), *own(_HOLD_TABLE.c, "h_")
                                  ).where(_HELD)
        # A SELECT over the UNION ALL (core() plans SELECTs; PostgreSQL flattens it).
        parts = sqlalchemy.union_all(first, lots, holds).subquery("parts")
        stmt = _PRIOR[windows] = sqlalchemy.select(*parts.c)
    return stmt


_LOT_KEYS: Final = tuple(c.name for c in _LOT_TABLE.c)
_HOLD_KEYS: Final = tuple(c.name for c in _HOLD_TABLE.c)


def _windows(tiers: list[Tier]) -> list[int]:
    """Every qualification period a write may ask the member's sum over: each tier's
    (:func:`evaluate_tier`), or the 365 days :func:`balance` shows without tiers."""
    return sorted({t.qualification_period_days for t in tiers}) or [365]
_INSERT_IDEMPOTENCY: Final = core_insert(IdempotencyRecord)
_INSERT_ENTRY: Final = core_insert(LedgerEntry)
_INSERT_ALLOCATION: Final = core_insert(LotAllocation)
_INSERT_HOLD: Final = core_insert(PointHold)
_INSERT_LOT: Final = core_insert(PointLot)
_MEMBER_TABLE: Final = table_of(Member)
_LOCK_MEMBER: Final = sqlalchemy.select(_MEMBER_TABLE).where(
    _MEMBER_TABLE.c.id == bindparam("member_id"),
    _MEMBER_TABLE.c.brand_id == bindparam("brand_id")).with_for_update()
_LOCK_MEMBER_OBJECT: Final = (select(Member)
                              .where(col(Member.id) == bindparam("member_id"),
                                     col(Member.brand_id) == bindparam("brand_id"))
                       .with_for_update().execution_options(populate_existing=True))


# A write reads the member's lots and open holds up to three times (the sweep, the
# action, the balance it answers with). Under the member's lock nobody else can change
# them, and this transaction changes them only through the very rows it read (the
# session's identity map gives one object per row), so each is read once per
# transaction and member and filtered again on every use; a row this transaction adds
# joins them (_remember: _credit, create_hold), a refilled lot makes them be read again
# (_forget: reverse). Outside a write (a balance read) there is no lock and nothing to
# share: the memo lives and dies with the transaction either way.
_LOTS_READ: Final = "tessera.ledger.lots"
_HOLDS_READ: Final = "tessera.ledger.holds"


def _forget(session: Session, member_id: str) -> None:
    session.info.get(_LOTS_READ, {}).pop(member_id, None)
    for key in [k for k in session.info.get(_HOLDS_READ, {}) if k[0] == member_id]:
        session.info[_HOLDS_READ].pop(key, None)


def _remember(session: Session, *, lot: Lot | None = None, hold: Hold | None = None) -> None:
    """A lot or hold this transaction just wrote joins the member's read rows (what
    reading them again would add)."""
    if lot is not None and lot.member_id in session.info.get(_LOTS_READ, {}):
        session.info[_LOTS_READ][lot.member_id].append(lot)
    if hold is not None:
        for (member_id, _at), rows in session.info.get(_HOLDS_READ, {}).items():
            if member_id == hold.member_id:
                rows.append(hold)  # _open_holds filters by status and expiry on use


def _read_lots(session: Session, member_id: str) -> list[Lot]:
    memo: dict[str, list[Lot]] = session.info.setdefault(_LOTS_READ, {})
    if member_id not in memo:
        memo[member_id] = [Lot(**row._mapping)
                           for row in core(session, _LOTS, {"member_id": member_id})]
    return memo[member_id]


def _lots(session: Session, member_id: str) -> list[Lot]:
    return [lot for lot in _read_lots(session, member_id) if lot.remaining > 0]


def _lot_of_entry(session: Session, member_id: str, entry_id: int) -> Lot:
    """The lot a credit opened: this transaction's copy when it has read it (one object
    per row, as the identity map gave), else read."""
    found = next((lot for lot in _read_lots(session, member_id) if lot.entry_id == entry_id),
                 None)
    return found or Lot(**core(session, _LOT_OF_ENTRY, {"entry_id": entry_id}).one()._mapping)


def _set_remaining(session: Session, lot: Lot, remaining: int) -> None:
    if core(session, _SET_REMAINING, {"_pk": lot.id, "remaining": remaining}).rowcount != 1:
        raise TesseraError(ErrorCode.INTERNAL_ERROR, "point_lot row to update is gone")
    lot.remaining = remaining


_HOLDS_KNOWN: Final = "tessera.ledger.holds_known"  # Session.info: hold id -> Hold


def _known(session: Session, holds: list[Hold]) -> list[Hold]:
    """Holds read or written after the member's lock: :func:`hold_row` answers from them."""
    known: dict[str, Hold] = session.info.setdefault(_HOLDS_KNOWN, {})
    for hold in holds:
        known[hold.id] = hold
    return holds


def _open_holds(session: Session, member_id: str, now: datetime) -> list[Hold]:
    memo: dict[tuple[str, datetime], list[Hold]] = session.info.setdefault(_HOLDS_READ, {})
    key = (member_id, now)
    if key not in memo:
        memo[key] = _known(session, [Hold(**row._mapping) for row in core(
            session, _OPEN_HOLDS, {"member_id": member_id, "now": now})])
    return [h for h in memo[key] if h.status == HoldStatus.HELD and h.expires_at > now]


def _read_hold(session: Session, hold_id: str) -> Hold | None:
    row = core(session, _HOLD, {"id": hold_id}).first()
    return None if row is None else Hold(**row._mapping)


def hold_row(session: Session, hold_id: str) -> Hold | None:
    """A hold as this transaction last wrote or read it under its member's lock, else as
    the database holds it (a redemption's answer names its hold's expiry: no second read
    of a hold the write just placed or closed)."""
    known: dict[str, Hold] = session.info.get(_HOLDS_KNOWN, {})
    return known.get(hold_id) or _read_hold(session, hold_id)


def _close_hold(session: Session, hold: Hold, *, status: HoldStatus, now: datetime,
                captured_points: int | None = None) -> None:
    if core(session, _CLOSE_HOLD, {"_pk": hold.id, "status": status, "closed_at": now,
                                   "captured_points": captured_points}).rowcount != 1:
        raise TesseraError(ErrorCode.INTERNAL_ERROR, "point_hold row to update is gone")
    _closed(session, hold, status=status, now=now, captured_points=captured_points)


def _closed(session: Session, hold: Hold, *, status: HoldStatus, now: datetime,
            captured_points: int | None = None) -> None:
    """The transaction's copies of a hold whose row was just closed."""
    hold.status, hold.closed_at, hold.captured_points = status, now, captured_points
    # A copy of the same row among the open holds the write read with its idempotency
    # record (_write) closes too: a release or an expiry reads its hold on its own.
    for rows in session.info.get(_HOLDS_READ, {}).values():
        for other in rows:
            if other.id == hold.id and other is not hold:
                other.status, other.closed_at, other.captured_points = (
                    status, now, captured_points)


_QUALIFYING: Final = "tessera.ledger.qualifying"  # Session.info: (member, now, days) -> sum


def _qualifying(session: Session, member_id: str, now: datetime, days: int) -> int:
    # A write asks the same sum up to five times (its tier, its balance): it is kept
    # for the transaction and forgotten whenever an entry with qualifying points is
    # written (_new_entry), the only thing that changes it.
    memo: dict[tuple[str, datetime, int], int] = session.info.setdefault(_QUALIFYING, {})
    key = (member_id, now, days)
    if key not in memo:
        memo[key] = int(core(session, _QUALIFYING_SUM, {
            "member_id": member_id, "since": now - timedelta(days=days), "now": now}).scalar_one())
    return memo[key]


def _window_days(tiers: list[Tier], current: Tier | None) -> int:
    """The window a member's qualifying balance is shown over: that of the next tier up."""
    above = [t for t in tiers if current is None or t.rank > current.rank]
    target = above[0] if above else current
    return target.qualification_period_days if target else 365


def _available(session: Session, member: MemberRow, now: datetime) -> int:
    """:func:`balance`'s ``available`` alone (what a hold needs; no tier, no window)."""
    lots = [lot for lot in _lots(session, member.id) if _live(lot, now)]
    matured = sum(lot.remaining for lot in lots if lot.available_at <= now)
    return max(0, matured - sum(h.points for h in _open_holds(session, member.id, now)))


def balance(session: Session, *, member: Member | MemberRow, now: datetime) -> Balance:
    lots = [lot for lot in _lots(session, member.id) if _live(lot, now)]
    matured = sum(lot.remaining for lot in lots if lot.available_at <= now)
    pending = sum(lot.remaining for lot in lots if lot.available_at > now)
    held = sum(h.points for h in _open_holds(session, member.id, now))
    expiring = [lot for lot in lots if lot.expires_at is not None]
    nxt = None
    if expiring:
        at = min(lot.expires_at for lot in expiring if lot.expires_at is not None)
        nxt = ExpiringNext(points=sum(lot.remaining for lot in expiring if lot.expires_at == at),
                           at=at)
    tiers = tiers_of(session, program_id=member.program_id)
    current = next((t for t in tiers if t.id == member.tier_id), None)
    return Balance(
        member_id=member.id,
        # A hold may outlive lots that expired under it; capture then fails,
        # but the shown balance stays at zero rather than below.
        available=max(0, matured - held),
        pending=pending,
        held=held,
        qualifying=_qualifying(session, member.id, now, _window_days(tiers, current)),
        tier=current.name if current else None,
        expiring_next=nxt,
        as_of=now,
    )


@dataclass(frozen=True, slots=True)
class LogReading:
    """What a member's log implied at ``now``, read before a write transaction
    (:func:`read_log`); :func:`reading_holds` tells, inside the write, whether it still
    does. The issuer reads it before taking SQLite's write gate, so the gate is not held
    over the member's leaves (bench/README.md "Issuance on SQLite, the gate's hold
    (session 8)")."""

    last_entry: int | None  # the member's last ledger entry when read
    figures: Figures | None  # None: the history cannot support it (v1 leaves, erased)
    checkpoint: tuple[int, str]  # a head of the tree holding every leaf of the member


# A member's last entry: one step of ix_ledger_entry_member (member_id, id).
_ENTRY_TABLE: Final = table_of(LedgerEntry)
_LAST_ENTRY: Final = (sqlalchemy.select(_ENTRY_TABLE.c.id)
                      .where(_ENTRY_TABLE.c.member_id == bindparam("member_id"))
                      .order_by(_ENTRY_TABLE.c.id.desc()).limit(1))


def read_log(session: Session, *, member: Member | MemberRow, now: datetime
             ) -> LogReading | None:
    """The member's log figures and a head covering them, or None when the write must
    read them itself (leaves still pending, which :func:`checked_balance` puts in the
    tree first; a log it would refuse).

    The last entry is read first: figures read after it hold at least the entries up
    to it, so when the write finds the same last entry, nothing was logged for the
    member since and the figures are the log's (every entry has its leaf, written in
    the entry's transaction under the member's lock, so a member's entries commit in
    id order)."""
    last = core(session, _LAST_ENTRY, {"member_id": member.id}).scalar()
    try:
        figures: Figures | None = _translog.member_figures(
            session, brand_id=member.brand_id, member_id=member.id, at=now)
    except TesseraError as exc:
        if exc.code is not ErrorCode.UNSUPPORTED_FORMAT:
            return None
        figures = None
    if _translog.has_pending(session, member.brand_id, member.id):
        return None
    return LogReading(last, figures, _translog.checkpoint(session, member.brand_id))


def reading_holds(session: Session, *, member: Member | MemberRow, reading: LogReading,
                  now: datetime) -> bool:
    """Whether ``reading`` is still what the member's log implies, in the write transaction
    that locked the member (one statement: the member's last entry)."""
    _translog.carry_forward(session, brand_id=member.brand_id, member_id=member.id, now=now)
    last = core(session, _LAST_ENTRY, {"member_id": member.id}).scalar()
    return bool(last == reading.last_entry)


def checked_balance(session: Session, *, member: Member | MemberRow, now: datetime,
                    reading: LogReading | None = None) -> Balance:
    """The balance, refused unless it is what the member's log implies: what the brand signs.

    Lots and holds are a cache of the log (DESIGN.md, "Points, redemption and
    the log"); a row changed behind the ledger's back (a ``point_lot.remaining``
    rewritten in the database) must not reach a credential. A history whose
    first leaves predate lots in the log (v1) first gets its ``snapshot``
    (:func:`issuer._translog.carry_forward`); so does every ledger write.
    ``reading``: the log's figures read before this transaction, which
    :func:`reading_holds` found still current in it.
    """
    if reading is not None:
        shown = balance(session, member=member, now=now)
        if reading.figures is None:
            return shown
        return _as_logged(shown, reading.figures)
    _translog.carry_forward(session, brand_id=member.brand_id, member_id=member.id, now=now)
    # What is signed names a head of the tree (its checkpoint, read next by the
    # issuer): the member's pending leaves go into the tree first, so that head
    # covers every entry this balance counts.
    _translog.catch_up(session, member.brand_id, now=now, member_id=member.id,
                       keystore=session.info.get(_translog.KEYSTORE))
    shown = balance(session, member=member, now=now)
    try:
        implied = _translog.member_figures(session, brand_id=member.brand_id,
                                           member_id=member.id, at=now)
    except TesseraError as exc:
        if exc.code is ErrorCode.UNSUPPORTED_FORMAT:
            return shown
        raise TesseraError(ErrorCode.INTERNAL_ERROR,
                           "the points log breaks the ledger's rules") from exc
    return _as_logged(shown, implied)


def _as_logged(shown: Balance, implied: Figures) -> Balance:
    nxt = shown.expiring_next
    if (shown.available, shown.pending, shown.held,
            (nxt.points, nxt.at) if nxt is not None else None) != (
            implied.available, implied.pending, implied.held, implied.expiring_next):
        raise TesseraError(ErrorCode.INTERNAL_ERROR,
                           "the ledger's lots or holds disagree with its log")
    return shown


def list_entries(session: Session, *, member: Member, after: int = 0,
                 limit: int = 100) -> list[LedgerEntryPublic]:
    stmt = (select(LedgerEntry)
            .where(LedgerEntry.member_id == member.id, col(LedgerEntry.id) > after)
            .order_by(col(LedgerEntry.id)).limit(max(1, min(limit, 1000))))
    return [_entry_public(e) for e in session.exec(stmt)]


def _entry_public(entry: LedgerEntry | Entry) -> LedgerEntryPublic:
    return LedgerEntryPublic.model_validate(entry, from_attributes=True)


def hold_public(hold: PointHold | Hold, now: datetime) -> PointHoldPublic:
    public = PointHoldPublic.model_validate(hold, from_attributes=True)
    if hold.status == HoldStatus.HELD and hold.expires_at <= now:
        public.status = HoldStatus.EXPIRED
    return public


# -- the write path ----------------------------------------------------------------------------


_LOCKED: Final = "tessera.ledger.locked"  # Session.info: members this transaction locked


@dataclass(slots=True)
class MemberRow:
    """A :class:`Member` as a ledger write locks it: a plain row (as :class:`Lot`); its
    tier columns change through :func:`evaluate_tier` (a Core ``UPDATE`` and this copy)."""

    id: str
    brand_id: str
    program_id: str
    did: str
    membership_number: str
    tier_id: str | None
    tier_since: datetime | None
    tier_valid_until: datetime | None
    enrolled_at: datetime


def lock_member(session: Session, *, brand_id: str, member_id: str) -> MemberRow:
    """The member row, locked until the transaction ends (``SELECT ... FOR UPDATE``) and
    read after the lock. Once per transaction: a redemption locks the member before its
    checks and the ledger write after them needs no second round trip for the lock it
    already holds (no savepoint is ever rolled back under it: none is used)."""
    locked: dict[tuple[str, str], MemberRow] = session.info.setdefault(_LOCKED, {})
    member = locked.get((brand_id, member_id))
    if member is not None:
        return member
    row = core(session, _LOCK_MEMBER, {"member_id": member_id, "brand_id": brand_id}).first()
    if row is None:
        raise TesseraError(ErrorCode.NOT_FOUND, "no such member")
    member = locked[(brand_id, member_id)] = MemberRow(**row._mapping)
    return member


_LOCK_MEMBER_BY_NUMBER: Final = sqlalchemy.select(_MEMBER_TABLE).where(
    _MEMBER_TABLE.c.brand_id == bindparam("brand_id"),
    _MEMBER_TABLE.c.program_id == bindparam("program_id"),
    _MEMBER_TABLE.c.membership_number == bindparam("number")).with_for_update()


def lock_member_by_number(session: Session, *, brand_id: str, program_id: str,
                          number: str) -> MemberRow | None:
    """:func:`lock_member` for the member a membership number names in a program (one
    of its unique keys): found and locked in one statement, or ``None``."""
    row = core(session, _LOCK_MEMBER_BY_NUMBER, {
        "brand_id": brand_id, "program_id": program_id, "number": number}).first()
    if row is None:
        return None
    member = MemberRow(**row._mapping)
    session.info.setdefault(_LOCKED, {})[(brand_id, member.id)] = member
    return member


def locked_member(session: Session, *, brand_id: str, member_id: str) -> MemberRow | None:
    """The member as :func:`lock_member` locked it in this transaction, if it did."""
    locked: dict[tuple[str, str], MemberRow] = session.info.get(_LOCKED, {})
    return locked.get((brand_id, member_id))


def _lock_member(session: Session, *, brand_id: str, member_id: str) -> Member:
    """:func:`lock_member` as the ORM object (issuer._routes_oid4vci issues a credential
    to it); not kept for the transaction's ledger writes, which lock again (a no-op)."""
    member = session.exec(_LOCK_MEMBER_OBJECT,
                          params={"member_id": member_id, "brand_id": brand_id}).first()
    if member is None:
        raise TesseraError(ErrorCode.NOT_FOUND, "no such member")
    return member


@event.listens_for(Session, "after_commit")
@event.listens_for(Session, "after_rollback")
def _unlocked(session: Session) -> None:
    for memo in (_LOCKED, _QUALIFYING, _LOTS_READ, _HOLDS_READ, _HOLDS_KNOWN):
        session.info.pop(memo, None)


Then = Callable[[dict[str, Any]], Sequence[tuple[Insert | Update, Mapping[str, Any]]]]
"""A write's caller's own single-row INSERTs and UPDATEs, made from its answer's body
and sent with its last statement (``then`` of :func:`create_hold`, :func:`capture_hold`);
not called when the write is replayed."""


def _write(session: Session, *, brand_id: str, member_id: str, idempotency_key: str,
           operation: str, args: dict[str, Any], now: datetime,
           action: Callable[[MemberRow], dict[str, Any]], then: Then | None = None) -> Outcome:
    if not idempotency_key or len(idempotency_key) > 255:
        raise TesseraError(ErrorCode.INVALID_REQUEST, "Idempotency-Key must be 1-255 chars")
    fingerprint = hashlib.sha256(canonical_json(
        {"op": operation, "member": member_id, **args})).hexdigest()
    # Lock first: a concurrent request with the same key waits here and
    # then finds the record this one stores.
    member = lock_member(session, brand_id=brand_id, member_id=member_id)
    # The qualifying sums come with the idempotency lookup (one statement, after the
    # lock). They stay right for the whole write: only an entry with qualifying points
    # changes them, and writing one drops them (_new_entry).
    windows = _windows(tiers_of(session, program_id=member.program_id))
    rows = core(session, _prior(len(windows)), {
        "brand_id": brand_id, "key": idempotency_key, "member_id": member.id, "now": now,
        "since": now - timedelta(days=windows[-1]),
        **{f"since_{i}": now - timedelta(days=days) for i, days in enumerate(windows)},
    }).all()
    prior = next(row for row in rows if row[0] == 0)
    # The lots and open holds as _read_lots and _open_holds would read them now, unless
    # this transaction has them already (its copies are the ones it changes).
    lots_read: dict[str, list[Lot]] = session.info.setdefault(_LOTS_READ, {})
    holds_read: dict[tuple[str, datetime], list[Hold]] = session.info.setdefault(
        _HOLDS_READ, {})
    first_lot = 4 + len(windows)
    first_hold = first_lot + len(_LOT_KEYS)
    if member.id not in lots_read:
        lots_read[member.id] = [Lot(**dict(zip(_LOT_KEYS, row[first_lot:first_hold], strict=True)))
                                for row in rows if row[0] == 1]
    if (member.id, now) not in holds_read:
        holds_read[(member.id, now)] = _known(session, [
            Hold(**dict(zip(_HOLD_KEYS, row[first_hold:], strict=True)))
            for row in rows if row[0] == 2])
    sums: dict[tuple[str, datetime, int], int] = session.info.setdefault(_QUALIFYING, {})
    for i, days in enumerate(windows):
        sums[(member.id, now, days)] = int(prior[4 + i])
    stored = prior if prior.fingerprint is not None else None
    if stored is not None:
        if stored.fingerprint != fingerprint:
            raise TesseraError(ErrorCode.CONFLICT,
                               "Idempotency-Key already used for a different request")
        return Outcome(stored.status_code, stored.response, replayed=True)
    # Before anything moves: a history of version 1 leaves gets its lots into the log.
    _translog.carry_forward(session, brand_id=brand_id, member_id=member.id, now=now)
    _sweep_expired(session, member=member, now=now)
    body = action(member)
    session.flush()
    # The log's pending leaf (when the write made one) goes with the last statement below,
    # in this transaction as its entry; nothing until then reads pending leaves.
    pending: list[tuple[Insert | Update, Mapping[str, Any]]] = []
    logged = _translog.append_for_member(session, brand_id=brand_id, member_id=member.id,
                                         idempotency_key=idempotency_key, writes=pending)
    signed = _translog.promise(session, brand_id=brand_id, leaf_hashes=logged, now=now)
    if signed is not None:
        body["log_promise"] = session.info[_translog.LAST_PROMISE] = signed
    evaluate_tier(session, member=member, now=now)
    body["balance"] = balance(session, member=member, now=now).model_dump(mode="json")
    session.flush()
    # The idempotency record is append-only and never read back in this transaction: a
    # Core INSERT, not an ORM object through the unit of work (bench/README.md
    # "Redemption profile (session 4)"). It goes with the revocation below, with the
    # caller's own single-row writes (``then``) after it: one statement on PostgreSQL
    # (bench/README.md "Redemption, sixth pass (session 8)").
    writes: list[tuple[Insert | Update, Mapping[str, Any]]] = [
        (_INSERT_IDEMPOTENCY, {"brand_id": brand_id, "key": idempotency_key,
                               "fingerprint": fingerprint, "status_code": 201,
                               "response": body, "created_at": now}), *pending]
    if then is not None:
        writes.extend(then(body))
    # The points credential states a balance that just changed: it is superseded
    # (revoked now; superseded_by is set when a fresh one is issued). Nothing above
    # reads a points credential's status (the tier's revocation is the membership's).
    revoke_current(session, member_id=member.id, credential_type="LoyaltyPointsCredential",
                   now=now, reason="superseded: points changed", writes=writes)
    return Outcome(201, body, replayed=False)


def _program(session: Session, member: MemberRow) -> Program:
    program = session.get(Program, member.program_id)
    assert program is not None  # foreign key
    return program


@dataclass(slots=True)
class Entry:
    """A :class:`LedgerEntry` this transaction wrote, as a plain row: building the SQLModel
    object (its attributes set through the ORM's instrumentation) cost more than the
    ``INSERT`` (bench/README.md "Redemption, fourth pass (session 6)")."""

    kind: EntryKind
    points: int
    brand_id: str
    member_id: str
    created_at: datetime
    qualifying_points: int = 0
    qualifying_at: datetime | None = None
    reason: str | None = None
    operator: str | None = None
    reference: str | None = None
    reverses_id: int | None = None
    hold_id: str | None = None
    id: int | None = None


_ENTRY_COLUMNS: Final = tuple(c.name for c in table_of(LedgerEntry).columns if c.name != "id")


def _new_entry(session: Session, member: MemberRow, now: datetime, *,
               writes: Sequence[tuple[Insert | Update, Mapping[str, Any]]] = (),
               **fields: Any) -> Entry:
    """``writes``: single-row writes sent with the entry's INSERT (one statement on
    PostgreSQL, :func:`issuer._db.core_with_writes`; a row the entry names, as a hold,
    may be among them)."""
    fields.setdefault("qualifying_points", 0)
    fields.setdefault("qualifying_at", now)
    if fields["qualifying_points"]:
        session.info.pop(_QUALIFYING, None)
    entry = Entry(brand_id=member.brand_id, member_id=member.id, created_at=now, **fields)
    # Append-only: the row is inserted as a Core statement (its id from RETURNING) and
    # never joins the session's unit of work, which cost more than the INSERT itself.
    # The object stays the transaction's copy of it (note_written keeps it for the log).
    keys, counts = core_with_writes(session, _INSERT_ENTRY, {
        name: getattr(entry, name) for name in _ENTRY_COLUMNS}, writes)
    if len(keys) != 1 or any(n != 1 for n in counts):
        raise TesseraError(ErrorCode.INTERNAL_ERROR, "a ledger write wrote other rows")
    entry.id = int(keys[0][0])
    # The log reads an entry's columns, which an Entry has under the same names.
    _translog.note_written(session, entry)
    return entry


def _ms(value: datetime) -> datetime:
    """``value`` at the millisecond precision of log leaves, so the log and the lots agree."""
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def _credit(session: Session, member: MemberRow, entry: Entry, points: int, now: datetime,
            *, pending_days: int) -> None:
    validity = _program(session, member).points_validity_days
    assert entry.id is not None
    lot = Lot(id=0, member_id=member.id, entry_id=entry.id, amount=points, remaining=points,
              available_at=_ms(now + timedelta(days=pending_days)),
              expires_at=_ms(now + timedelta(days=validity)) if validity else None)
    key = core(session, _INSERT_LOT, {
        "member_id": lot.member_id, "entry_id": lot.entry_id, "amount": lot.amount,
        "remaining": lot.remaining, "available_at": lot.available_at,
        "expires_at": lot.expires_at}).inserted_primary_key
    assert key is not None
    lot.id = int(key[0])
    _remember(session, lot=lot)
    # The log reads a lot's entry_id, available_at and expires_at, which a Lot has.
    _translog.note_written(session, lot=lot)


def _debit(session: Session, member: MemberRow, entry: Entry, points: int, now: datetime,
           *, reserved: int, first: Lot | None = None) -> None:
    """Take ``points`` FIFO from matured live lots, ``reserved`` of them being held elsewhere.

    ``first`` (the lot of a credit being reversed) is drained before any
    other, even while still pending: that is the return-window case.
    """
    assert entry.id is not None
    for lot, take in _taking(session, member, points, now, reserved=reserved, first=first):
        _set_remaining(session, lot, lot.remaining - take)
        core(session, _INSERT_ALLOCATION, {"entry_id": entry.id, "lot_id": lot.id,
                                             "amount": take})
        # All of this entry's allocations are made here: the log takes them from
        # here instead of reading them back (issuer._translog.append_for_member).
        _translog.note_written(session, taken=(entry.id, lot.entry_id, take))


def _taking(session: Session, member: MemberRow, points: int, now: datetime, *,
            reserved: int, first: Lot | None = None) -> list[tuple[Lot, int]]:
    """The lots :func:`_debit` takes ``points`` from and how many from each, in order;
    ``insufficient_balance`` when they are not there."""
    lots = [lot for lot in _lots(session, member.id)
            if _live(lot, now) and lot.available_at <= now and lot is not first]
    lots.sort(key=lambda lot: (lot.expires_at is None, lot.expires_at or now, lot.id or 0))
    free = sum(lot.remaining for lot in lots) - reserved
    if first is not None and _live(first, now):
        free += first.remaining
        lots.insert(0, first)
    if free < points:
        raise TesseraError(ErrorCode.INSUFFICIENT_BALANCE,
                           f"{points} points requested, {max(free, 0)} available")
    need = points
    taking: list[tuple[Lot, int]] = []
    for lot in lots:
        if need == 0:
            break
        take = min(lot.remaining, need)
        need -= take
        taking.append((lot, take))
    return taking


def _sweep_expired(session: Session, *, member: MemberRow, now: datetime) -> None:
    expired = [lot for lot in _lots(session, member.id)
               if lot.expires_at is not None and lot.expires_at <= now]
    expired.sort(key=lambda lot: (lot.expires_at, lot.id))
    for lot in expired:
        assert lot.expires_at is not None
        entry = _new_entry(session, member, now, kind=EntryKind.EXPIRE, points=-lot.remaining,
                           reason=f"lot {lot.id} expired at {lot.expires_at.isoformat()}",
                           reference=f"lot:{lot.id}")
        assert entry.id is not None
        core(session, _INSERT_ALLOCATION, {"entry_id": entry.id, "lot_id": lot.id,
                                             "amount": lot.remaining})
        _set_remaining(session, lot, 0)


def _held(session: Session, member: MemberRow, now: datetime) -> int:
    return sum(h.points for h in _open_holds(session, member.id, now))


def _check_points(points: int, *, allow_zero: bool = False, signed: bool = False) -> None:
    low = -MAX_POINTS if signed else (0 if allow_zero else 1)
    if isinstance(points, bool) or not isinstance(points, int) or not low <= points <= MAX_POINTS:
        raise TesseraError(ErrorCode.INVALID_REQUEST, "points out of range")


# -- operations ------------------------------------------------------------------------------


def earn(session: Session, *, brand_id: str, member_id: str, idempotency_key: str, points: int,
         now: datetime, qualifying_points: int | None = None, reference: str | None = None,
         reason: str | None = None, pending_days: int | None = None) -> Outcome:
    _check_points(points)
    qualifying = points if qualifying_points is None else qualifying_points
    _check_points(qualifying, allow_zero=True)
    if pending_days is not None and not 0 <= pending_days <= 365:
        raise TesseraError(ErrorCode.INVALID_REQUEST, "pending_days must be 0-365")

    def action(member: MemberRow) -> dict[str, Any]:
        window = (_program(session, member).return_window_days
                  if pending_days is None else pending_days)
        entry = _new_entry(session, member, now, kind=EntryKind.EARN, points=points,
                           qualifying_points=qualifying, reference=reference, reason=reason)
        _credit(session, member, entry, points, now, pending_days=window)
        return {"entry": _entry_public(entry).model_dump(mode="json")}

    return _write(session, brand_id=brand_id, member_id=member_id,
                  idempotency_key=idempotency_key, operation="earn", now=now, action=action,
                  args={"points": points, "qualifying_points": qualifying,
                        "reference": reference, "reason": reason,
                        "pending_days": pending_days})


def redeem(session: Session, *, brand_id: str, member_id: str, idempotency_key: str,
           points: int, now: datetime, reference: str | None = None) -> Outcome:
    _check_points(points)

    def action(member: MemberRow) -> dict[str, Any]:
        entry = _new_entry(session, member, now, kind=EntryKind.REDEEM, points=-points,
                           reference=reference)
        _debit(session, member, entry, points, now, reserved=_held(session, member, now))
        return {"entry": _entry_public(entry).model_dump(mode="json")}

    return _write(session, brand_id=brand_id, member_id=member_id,
                  idempotency_key=idempotency_key, operation="redeem", now=now, action=action,
                  args={"points": points, "reference": reference})


def adjust(session: Session, *, brand_id: str, member_id: str, idempotency_key: str,
           points: int, reason: str, operator: str, now: datetime,
           qualifying_points: int = 0) -> Outcome:
    """A customer-service correction; it needs a reason and the operator who made it."""
    _check_points(points, signed=True)
    _check_points(qualifying_points, signed=True)
    if points == 0 and qualifying_points == 0:
        raise TesseraError(ErrorCode.INVALID_REQUEST, "an adjustment must change something")
    if not reason.strip() or not operator.strip():
        raise TesseraError(ErrorCode.INVALID_REQUEST, "an adjustment needs a reason and operator")

    def action(member: MemberRow) -> dict[str, Any]:
        if qualifying_points < 0:
            total = session.exec(select(func.coalesce(func.sum(LedgerEntry.qualifying_points), 0))
                                 .where(LedgerEntry.member_id == member.id)).one()
            if int(total) + qualifying_points < 0:
                raise TesseraError(ErrorCode.INSUFFICIENT_BALANCE,
                                   "qualifying points would go negative")
        entry = _new_entry(session, member, now, kind=EntryKind.ADJUST, points=points,
                           qualifying_points=qualifying_points, reason=reason,
                           operator=operator)
        if points > 0:
            _credit(session, member, entry, points, now, pending_days=0)
        elif points < 0:
            _debit(session, member, entry, -points, now, reserved=_held(session, member, now))
        return {"entry": _entry_public(entry).model_dump(mode="json")}

    return _write(session, brand_id=brand_id, member_id=member_id,
                  idempotency_key=idempotency_key, operation="adjust", now=now, action=action,
                  args={"points": points, "qualifying_points": qualifying_points,
                        "reason": reason, "operator": operator})


def reverse(session: Session, *, brand_id: str, member_id: str, idempotency_key: str,
            entry_id: int, reason: str, now: datetime, operator: str | None = None) -> Outcome:
    """Undo an earn, redeem or adjust with a new ``reverse`` entry (the original is untouched)."""
    if not reason.strip():
        raise TesseraError(ErrorCode.INVALID_REQUEST, "a reversal needs a reason")

    def action(member: MemberRow) -> dict[str, Any]:
        original = session.get(LedgerEntry, entry_id)
        if original is None or original.member_id != member.id:
            raise TesseraError(ErrorCode.NOT_FOUND, "no such ledger entry for this member")
        if original.kind in (EntryKind.REVERSE, EntryKind.EXPIRE, EntryKind.HOLD,
                             EntryKind.RELEASE, EntryKind.SNAPSHOT):
            raise TesseraError(ErrorCode.INVALID_REQUEST,
                               f"a {original.kind} entry cannot be reversed; use an adjustment")
        done = select(LedgerEntry).where(LedgerEntry.reverses_id == original.id)
        if session.exec(done).first() is not None:
            raise TesseraError(ErrorCode.CONFLICT, "entry already reversed")
        entry = _new_entry(session, member, now, kind=EntryKind.REVERSE,
                           points=-original.points,
                           qualifying_points=-original.qualifying_points,
                           qualifying_at=original.qualifying_at, reason=reason,
                           operator=operator, reference=original.reference,
                           reverses_id=original.id)
        assert entry.id is not None
        if original.points > 0:
            lot = _lot_of_entry(session, member.id, entry_id)
            _debit(session, member, entry, original.points, now,
                   reserved=_held(session, member, now), first=lot)
        elif original.points < 0:
            allocations = session.exec(select(LotAllocation).where(
                LotAllocation.entry_id == original.id)).all()
            for alloc in allocations:
                # In the database itself: the lot may be one this transaction has no copy of.
                if core(session, _REFILL, {"_pk": alloc.lot_id,
                                           "refill": alloc.amount}).rowcount != 1:
                    raise TesseraError(ErrorCode.INTERNAL_ERROR, "point_lot row is gone")
                _forget(session, member.id)  # a drained lot may be live again
                core(session, _INSERT_ALLOCATION, {"entry_id": entry.id,
                                                     "lot_id": alloc.lot_id,
                                                     "amount": -alloc.amount})
        return {"entry": _entry_public(entry).model_dump(mode="json")}

    return _write(session, brand_id=brand_id, member_id=member_id,
                  idempotency_key=idempotency_key, operation="reverse", now=now, action=action,
                  args={"entry_id": entry_id, "reason": reason, "operator": operator})


def create_hold(session: Session, *, brand_id: str, member_id: str, idempotency_key: str,
                points: int, now: datetime, reference: str | None = None,
                ttl_seconds: int = 3600, then: Then | None = None) -> Outcome:
    """Reserve points (an authorisation): they stop being available but stay in their lots.

    ``then``: the caller's own writes, made from the answer (:data:`Then`)."""
    _check_points(points)
    if not 1 <= ttl_seconds <= MAX_HOLD_SECONDS:
        raise TesseraError(ErrorCode.INVALID_REQUEST, "hold ttl_seconds out of range")

    def action(member: MemberRow) -> dict[str, Any]:
        free = _available(session, member, now)
        if free < points:
            raise TesseraError(ErrorCode.INSUFFICIENT_BALANCE,
                               f"{points} points requested, {free} available")
        hold = Hold(id=new_id(), brand_id=member.brand_id, member_id=member.id,
                    points=points, reference=reference, status=HoldStatus.HELD,
                    created_at=now, expires_at=_ms(now + timedelta(seconds=ttl_seconds)))
        _known(session, [hold])
        _remember(session, hold=hold)
        # The log reads a hold's id, points and expires_at, which a Hold has.
        _translog.note_written(session, hold=hold)
        # A Core INSERT of a plain row (no SQLModel object, no flush), sent with its
        # entry's; the answer and a capture in this transaction find it among the holds
        # it knows (hold_row).
        _new_entry(session, member, now, kind=EntryKind.HOLD, points=0, hold_id=hold.id,
                   reference=reference, writes=[(_INSERT_HOLD, {
                       "id": hold.id, "brand_id": hold.brand_id, "member_id": hold.member_id,
                       "points": hold.points, "reference": hold.reference,
                       "status": hold.status, "created_at": hold.created_at,
                       "expires_at": hold.expires_at, "closed_at": None,
                       "captured_points": None})])
        return {"hold": hold_public(hold, now).model_dump(mode="json")}

    return _write(session, brand_id=brand_id, member_id=member_id,
                  idempotency_key=idempotency_key, operation="hold", now=now, action=action,
                  args={"points": points, "reference": reference, "ttl": ttl_seconds},
                  then=then)


def _hold_member(session: Session, brand_id: str, hold_id: str) -> str:
    hold = _read_hold(session, hold_id)
    if hold is None or hold.brand_id != brand_id:
        raise TesseraError(ErrorCode.NOT_FOUND, "no such hold")
    return hold.member_id


def _open_hold(session: Session, hold_id: str, now: datetime,
               owner: tuple[str, str] | None = None, *, read: Hold | None = None) -> Hold:
    """The hold, read after the member's lock (``read``: already), still open;
    ``owner``: (brand, member) it must belong to, when the caller has not checked that
    already."""
    hold = read or _read_hold(session, hold_id)
    if hold is not None:
        _known(session, [hold])
    if hold is None or (owner is not None and (hold.brand_id, hold.member_id) != owner):
        raise TesseraError(ErrorCode.NOT_FOUND, "no such hold")
    if hold.status == HoldStatus.EXPIRED:
        raise TesseraError(ErrorCode.EXPIRED, "hold expired")
    if hold.status != HoldStatus.HELD:
        raise TesseraError(ErrorCode.CONFLICT, f"hold is already {hold.status}")
    return hold


def capture_hold(session: Session, *, brand_id: str, hold_id: str, idempotency_key: str,
                 now: datetime, points: int | None = None, member_id: str | None = None,
                 then: Then | None = None) -> Outcome:
    """Turn a hold into a ``redeem`` entry; a partial capture releases the rest.

    ``member_id``: whose hold the caller knows it to be (a redemption names its
    member): the hold is then read once, after the member's lock, and must be theirs.
    ``then``: the caller's own writes, made from the answer (:data:`Then`).
    """
    if points is not None:
        _check_points(points)
    if member_id is None:
        member_id = _hold_member(session, brand_id, hold_id)
    owner = member_id

    def action(member: MemberRow) -> dict[str, Any]:
        # The member's open holds (read after the lock) are needed below anyway: an
        # open hold among them needs no read of its own (one statement fewer).
        hold = next((h for h in _open_holds(session, member.id, now)
                     if h.id == hold_id and h.brand_id == brand_id), None)
        if hold is None:
            hold = _open_hold(session, hold_id, now, owner=(brand_id, owner))
        if hold.expires_at <= now:
            raise TesseraError(ErrorCode.EXPIRED, "hold expired")
        amount = hold.points if points is None else points
        if amount > hold.points:
            raise TesseraError(ErrorCode.INVALID_REQUEST, "cannot capture more than was held")
        # The debit's lot updates and the hold's close go with the entry's INSERT (one
        # statement on PostgreSQL, bench/README.md "Redemption, sixth pass (session
        # 8)"), and so does its allocation when it takes from one lot. From several, the
        # allocations follow one by one: their ids keep the order the log lists them in
        # (the writes of one statement run in no set order).
        taking = _taking(session, member, amount, now,
                         reserved=_held(session, member, now) - hold.points)
        writes: list[tuple[Insert | Update, Mapping[str, Any]]] = [
            (_SET_REMAINING, {"_pk": lot.id, "remaining": lot.remaining - take})
            for lot, take in taking]
        writes.append((_CLOSE_HOLD, {"_pk": hold.id, "status": HoldStatus.CAPTURED,
                                     "closed_at": now, "captured_points": amount}))
        if len(taking) == 1:
            writes.append((_INSERT_ALLOCATION, {"entry_id": MAIN_KEY, "lot_id": taking[0][0].id,
                                                "amount": taking[0][1]}))
        entry = _new_entry(session, member, now, kind=EntryKind.REDEEM, points=-amount,
                           reference=hold.reference, hold_id=hold.id, writes=writes)
        assert entry.id is not None
        for lot, take in taking:
            lot.remaining -= take
            if len(taking) != 1:
                core(session, _INSERT_ALLOCATION, {"entry_id": entry.id, "lot_id": lot.id,
                                                     "amount": take})
            _translog.note_written(session, taken=(entry.id, lot.entry_id, take))
        _closed(session, hold, status=HoldStatus.CAPTURED, captured_points=amount, now=now)
        _translog.note_written(session, hold=hold)
        return {"hold": hold_public(hold, now).model_dump(mode="json"),
                "entry": _entry_public(entry).model_dump(mode="json")}

    return _write(session, brand_id=brand_id, member_id=member_id,
                  idempotency_key=idempotency_key, operation="capture", now=now, action=action,
                  args={"hold": hold_id, "points": points}, then=then)


def release_hold(session: Session, *, brand_id: str, hold_id: str, idempotency_key: str,
                 now: datetime) -> Outcome:
    member_id = _hold_member(session, brand_id, hold_id)

    def action(member: MemberRow) -> dict[str, Any]:
        current = _read_hold(session, hold_id)
        if current is not None and current.status == HoldStatus.EXPIRED:
            # Already given back by release_expired_holds: releasing it is a no-op.
            return {"hold": hold_public(current, now).model_dump(mode="json")}
        hold = _open_hold(session, hold_id, now, read=current)
        _close_hold(session, hold, status=HoldStatus.RELEASED, now=now)
        _new_entry(session, member, now, kind=EntryKind.RELEASE, points=0, hold_id=hold.id,
                   reference=hold.reference)
        return {"hold": hold_public(hold, now).model_dump(mode="json")}

    return _write(session, brand_id=brand_id, member_id=member_id,
                  idempotency_key=idempotency_key, operation="release", now=now, action=action,
                  args={"hold": hold_id})


def release_expired_holds(session: Session, *, now: datetime, brand_id: str | None = None,
                          limit: int = 500) -> list[PointHoldPublic]:
    """Close holds past their expiry (all brands, or one), oldest members first; the cron job.

    An expired hold already reserves nothing (balances skip it), so this
    moves no points: it records that they came back. Each hold gets one
    ``expire`` entry of zero points naming it (``hold_id``), written through
    the same path as every ledger write (member lock, idempotency under
    ``tessera:hold-expiry:<hold id>``, transparency log), and its status
    becomes ``expired`` so it can be neither captured nor expired again.
    Returns the holds this call closed; a concurrent or repeated run finds
    them closed under the member lock and skips them.
    """
    stmt = select(PointHold).where(PointHold.status == HoldStatus.HELD,
                                   col(PointHold.expires_at) <= now)
    if brand_id is not None:
        stmt = stmt.where(PointHold.brand_id == brand_id)
    # Member order: concurrent runs take member locks in the same order.
    stmt = stmt.order_by(col(PointHold.member_id), col(PointHold.id)).limit(max(1, limit))
    candidates = [(h.id, h.brand_id, h.member_id) for h in session.exec(stmt)]
    released: list[PointHoldPublic] = []
    for hold_id, hold_brand, member_id in candidates:
        lock_member(session, brand_id=hold_brand, member_id=member_id)
        hold = _read_hold(session, hold_id)
        if hold is None or hold.status != HoldStatus.HELD:
            continue  # captured, released or expired by someone else meanwhile

        def action(member: MemberRow, hold: Hold = hold) -> dict[str, Any]:
            entry = _new_entry(
                session, member, now, kind=EntryKind.EXPIRE, points=0, hold_id=hold.id,
                reference=hold.reference,
                reason=f"hold {hold.id} expired at {hold.expires_at.isoformat()}; "
                       f"{hold.points} held points released")
            _close_hold(session, hold, status=HoldStatus.EXPIRED, now=now)
            return {"hold": hold_public(hold, now).model_dump(mode="json"),
                    "entry": _entry_public(entry).model_dump(mode="json")}

        outcome = _write(session, brand_id=hold_brand, member_id=member_id,
                         idempotency_key=f"tessera:hold-expiry:{hold_id}",
                         operation="hold-expiry", args={"hold": hold_id}, now=now,
                         action=action)
        if not outcome.replayed:
            released.append(hold_public(hold, now))
    return released


# -- tiers ----------------------------------------------------------------------------------------


_SET_MEMBER: dict[tuple[str, ...], Update] = {}


def _set_tier(session: Session, member: Member | MemberRow, changes: dict[str, Any]) -> None:
    """The member's tier columns: an ORM member through the unit of work (its caller's
    session flushes it), a locked :class:`MemberRow` as a Core ``UPDATE`` now."""
    if isinstance(member, Member):
        for name, value in changes.items():
            setattr(member, name, value)
        session.add(member)
        return
    if not changes:
        return
    key = tuple(sorted(changes))
    stmt = _SET_MEMBER.get(key)
    if stmt is None:
        stmt = _SET_MEMBER[key] = (update(_MEMBER_TABLE)
                                   .where(_MEMBER_TABLE.c.id == bindparam("_pk"))
                                   .values({name: bindparam(name) for name in key}))
    if core(session, stmt, {"_pk": member.id, **changes}).rowcount != 1:
        raise TesseraError(ErrorCode.INTERNAL_ERROR, "member row to update is gone")
    for name, value in changes.items():
        setattr(member, name, value)


def evaluate_tier(session: Session, *, member: Member | MemberRow, now: datetime) -> None:
    """Move the member to the tier the rules give now.

    The earned tier is the highest whose threshold the member's qualifying
    points over that tier's own (rolling) qualification period reach. Up is
    immediate and starts a new qualification period; down follows the
    current tier's policy: ``immediate``; ``end_of_grace`` (hold the tier
    until valid-until + grace, then drop to the earned tier); ``one_step``
    (after the grace, one rank at a time, each with a fresh period).
    """
    tiers = tiers_of(session, program_id=member.program_id)
    if not tiers:
        return
    earned: Tier | None = None
    for tier in tiers:  # ascending rank; thresholds ascend too (validated on create)
        if _qualifying(session, member.id, now, tier.qualification_period_days) \
                >= tier.qualifying_points:
            earned = tier
    current = next((t for t in tiers if t.id == member.tier_id), None)

    def move(tier: Tier | None) -> None:
        changes: dict[str, Any] = {}
        if tier is None or current is None or tier.id != current.id:
            changes["tier_since"] = now
            # A membership credential naming the old tier no longer holds.
            revoke_current(session, member_id=member.id,
                           credential_type="LoyaltyMembershipCredential", now=now,
                           reason="superseded: tier changed")
        tier_id = tier.id if tier else None
        valid_until = (now + timedelta(days=tier.qualification_period_days)
                       if tier is not None and tier.qualifying_points > 0 else None)
        # Written only when they change: an assignment, even of the same value, made an
        # ORM member dirty and sent the flush through the unit of work on every write.
        if member.tier_id != tier_id:
            changes["tier_id"] = tier_id
        if member.tier_valid_until != valid_until:
            changes["tier_valid_until"] = valid_until
        _set_tier(session, member, changes)

    earned_rank = earned.rank if earned else -1
    if current is None or earned_rank >= current.rank:
        if earned is not None:
            move(earned)  # up, or requalified: the period restarts
        return
    policy = DowngradePolicy(current.downgrade_policy)
    if policy is DowngradePolicy.IMMEDIATE:
        move(earned)
        return
    until = member.tier_valid_until
    if until is not None and now < until + timedelta(days=current.grace_period_days):
        return
    if policy is DowngradePolicy.ONE_STEP:
        lower = [t for t in tiers if t.rank < current.rank]
        move(lower[-1] if lower else earned)
    else:
        move(earned)
