"""The points transparency log of each brand, in SQL, with a sequencer.

A ledger write does not touch the tree. :func:`append_for_member` runs from
the ledger's write path after the entries are flushed and records each new
entry's leaf (:mod:`tessera.pointslog`) as a :class:`PendingLeaf` row *in the
write's own transaction*: no lock on the log row, no tree work, so writes of
one brand no longer queue behind each other on the log. A crash before the
commit leaves neither entry nor pending leaf; a commit leaves both, durably.
The write answers at once with a signed :class:`tessera.merkle.InclusionPromise`
over the leaf hashes (Certificate Transparency's SCT, RFC 6962 §3.2): the
leaves will be in every tree head signed :data:`MAX_MERGE_DELAY_MS` after it.

The *sequencer* (:func:`integrate`, Trillian's sequencer) moves pending
leaves into the RFC 9162 tree in batches: in ``seq`` order, at the next free
indexes (gap-free), in one transaction per batch that also deletes the
pending rows (a crash mid-batch integrates nothing; a second run finds
nothing left: idempotent), and signs one tree head per batch
(:func:`sign_batch_head`). It runs

* in the background of every issuer worker (:class:`Sequencer`), one batch
  per brand at a time: PostgreSQL elects it per batch with ``SELECT ... FOR
  UPDATE SKIP LOCKED`` on the brand's log row (another worker's batch is
  skipped, not waited for); SQLite's write gate (:mod:`tessera.sqlite`)
  already admits one writer at a time;
* on demand (:func:`catch_up`) when a reader needs the tree to hold what the
  ledger holds: the log routes, a member's entries, a points credential's
  checkpoint, a settlement; so nothing ever waits for the timer;
* from the CLI (``tessera issuer log integrate``).

Lock order: a ledger write locks the member row and inserts pending rows;
an integration locks only the brand's :class:`TransparencyLog` row; a reader
that integrates takes the member row (shared) first. Proofs read stored
complete-subtree hashes through :class:`SqlHashSource`; a whole proof is
fetched in one query (the RFC 9162 recursion is first run against a recorder
to learn which nodes it needs).
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, TypeVar

from sqlalchemy import bindparam, exists, insert, literal, union_all, update
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, func, select

from issuer._db import core
from issuer._log_models import LogLeafData, LogNode, PendingLeaf, TransparencyLog, TreeHead
from issuer._models import (
    Brand,
    EntryKind,
    LedgerEntry,
    LotAllocation,
    Member,
    PointHold,
    PointLot,
)
from tessera import merkle
from tessera.encoding import b64url_decode, b64url_encode, parse_json_object
from tessera.errors import ErrorCode, TesseraError
from tessera.pointslog import (
    Allocation,
    CarriedLot,
    Carry,
    Figures,
    HoldRef,
    LogLeaf,
    LotOpen,
    fold,
    leaf_time,
    member_pseudonym,
    parse_leaf,
)
from tessera.sqlite import READ_ONLY
from tessera.typing import Signer

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.sql.dml import Insert, Update

    from issuer._keystore import KeyStore
    from issuer._ledger import Entry, Hold, Lot

__all__ = [
    "INTEGRATE_BATCH",
    "KEYSTORE",
    "LAST_PROMISE",
    "MAX_MERGE_DELAY_MS",
    "LeafRecord",
    "Sequencer",
    "SqlHashSource",
    "append_for_member",
    "append_leaves",
    "carry_forward",
    "catch_up",
    "check_log",
    "checkpoint",
    "consistency_proof",
    "current_head",
    "erase_member",
    "erase_member_leaves",
    "export_member",
    "inclusion_proof",
    "integrate",
    "integrate_all",
    "log_state",
    "member_figures",
    "member_leaves",
    "note_written",
    "pending_count",
    "promise",
    "pseudonym",
    "root_at",
    "sign_batch_head",
    "signed_head",
]

T = TypeVar("T")
MAX_ENTRIES_PAGE: Final = 1000
_PLACEHOLDER: Final = b"\0" * merkle.HASH_SIZE
MAX_MERGE_DELAY_MS: Final = 1000
"""Every leaf is in each tree head signed this long after its promise (documented MMD)."""
INTEGRATE_BATCH: Final = 1000
"""Pending leaves the sequencer integrates per transaction (and per signed head)."""
SEQUENCER_INTERVAL_SECONDS: Final = 0.1
SEQUENCER_HOLD_BACK_SECONDS: Final = 0.4
LAST_PROMISE: Final = "tessera_log_last_promise"
"""``Session.info`` key of the promise the transaction's last ledger write signed."""
KEYSTORE: Final = "tessera_log_keystore"
"""``Session.info`` key of the brand key store a ledger write signs its promise with."""
_log = logging.getLogger("tessera.issuer.translog")


@dataclass(frozen=True)
class LeafRecord:
    """A leaf to append: its JSON and the ledger entry it records.

    ``raw``: the exact bytes already promised (a pending leaf's text), hashed
    as they are rather than re-serialised. A pending leaf moved into the tree
    comes as ``raw`` and ``member`` alone (``leaf`` ``None``): its text was
    made by :func:`append_for_member` and is stored as it was promised, so the
    sequencer does not parse it back.
    """

    leaf: LogLeaf | None
    entry_id: int
    raw: bytes | None = None
    member: str | None = None


def log_state(session: Session, brand_id: str, *, lock: bool = False) -> TransparencyLog:
    """The brand's log row, created on first use (a racing creator makes the write retry)."""
    stmt = select(TransparencyLog).where(TransparencyLog.brand_id == brand_id)
    if lock:
        stmt = stmt.with_for_update()
    row = session.exec(stmt.execution_options(populate_existing=True)).first()
    if row is None:
        row = TransparencyLog(brand_id=brand_id, size=0, frontier=[],
                              pseudonym_secret=secrets.token_hex(32))
        session.add(row)
        session.flush()
    return row


_secrets: dict[str, bytes] = {}
_pseudonyms: dict[tuple[str, str], str] = {}


def _pseudonym_secret(session: Session, brand_id: str) -> bytes:
    # Written once with the log row and never changed: cached per process.
    secret = _secrets.get(brand_id)
    if secret is None:
        secret = bytes.fromhex(log_state(session, brand_id).pseudonym_secret)
        if len(_secrets) >= 10_000:
            _secrets.clear()
        _secrets[brand_id] = secret
    return secret


def pseudonym(session: Session, brand_id: str, member_id: str) -> str:
    # A function of the member id and a secret that never changes: one HMAC per
    # member and process, not one per ledger write.
    key = (brand_id, member_id)
    name = _pseudonyms.get(key)
    if name is None:
        name = member_pseudonym(_pseudonym_secret(session, brand_id), member_id)
        if len(_pseudonyms) >= 100_000:
            _pseudonyms.clear()
        _pseudonyms[key] = name
    return name


def _aware(value: datetime) -> datetime:
    # SQLite hands back naive datetimes for what was written aware (UTC).
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


NEW_ENTRIES: Final = "tessera_log_new_entries"
NEW_LOTS: Final = "tessera_log_new_lots"
NEW_HOLDS: Final = "tessera_log_new_holds"
NEW_ALLOCATIONS: Final = "tessera_log_new_allocations"
_caught_up: set[tuple[str, str]] = set()


def note_written(session: Session, entry: Entry | None = None, *,
                 lot: Lot | None = None, hold: Hold | None = None,
                 taken: tuple[int, int, int] | None = None) -> None:
    """The ledger's write path hands over each entry, lot and hold it writes in this
    transaction, so :func:`append_for_member` need not read them back (and the
    session's identity map, which holds rows weakly, keeps them for the answer)."""
    if entry is not None:
        session.info.setdefault(NEW_ENTRIES, []).append(entry)
    if lot is not None:
        session.info.setdefault(NEW_LOTS, {})[lot.entry_id] = lot
    if hold is not None:
        session.info.setdefault(NEW_HOLDS, {})[hold.id] = hold
    if taken is not None:  # (debit entry, the entry of the lot it took from, points)
        session.info.setdefault(NEW_ALLOCATIONS, {}).setdefault(taken[0], []).append(
            Allocation(taken[1], taken[2]))


# Built once (the hot path of every ledger write): the member's entries with no leaf,
# in the tree or pending.
_UNLOGGED: Final = (
    select(LedgerEntry)
    .where(col(LedgerEntry.member_id) == bindparam("member"),
           col(LedgerEntry.brand_id) == bindparam("brand"),
           ~exists().where(col(LogLeafData.entry_id) == col(LedgerEntry.id)),
           ~exists().where(col(PendingLeaf.entry_id) == col(LedgerEntry.id)))
    .order_by(col(LedgerEntry.id)))


def append_for_member(session: Session, *, brand_id: str, member_id: str,
                      idempotency_key: str | None,
                      writes: list[tuple[Insert | Update, Mapping[str, Any]]] | None = None,
                      ) -> list[bytes]:
    """Record the member's ledger entries that have no leaf yet as pending; their leaf hashes.

    The caller holds the member row locked, so only this transaction can be
    creating the member's leaves (and the sequencer moves a row from pending
    to the tree in one transaction: a single statement sees it in one place).

    ``writes``: when given, a single pending leaf's INSERT is appended to it for the
    caller to send with its transaction's last statement (issuer._ledger._write: one
    statement on PostgreSQL, :func:`issuer._db.core_with_writes`), before anything in
    the transaction reads pending leaves again; several leaves are still inserted here
    (their ``seq`` in their entries' order).
    """
    # The ledger's plain rows (issuer._ledger.Entry/Lot/Hold) where the write handed them
    # over, ORM rows where they are read back: both have the columns used below.
    written: list[Entry] = session.info.get(NEW_ENTRIES, [])
    key = (brand_id, member_id)
    if len(written) == 1 and key in _caught_up:
        one = _one_record(session, written[0], key, idempotency_key)
        if one is not None:
            session.info[NEW_ENTRIES] = []
            return _pend(session, brand_id, [one], now=_aware(written[0].created_at),
                         writes=writes)
    fresh = [e for e in written if e.member_id == member_id and e.brand_id == brand_id]
    pending: list[Entry | LedgerEntry]
    if key in _caught_up:
        pending = sorted(fresh, key=lambda e: e.id or 0)
    else:
        read: list[LedgerEntry] = list(session.exec(_UNLOGGED, params={
            "member": member_id, "brand": brand_id}))
        pending = [*read]
        if {e.id for e in pending} == {e.id for e in fresh}:
            # Nothing older was left without a leaf: from now on this process
            # takes the member's new entries from the write itself, no query.
            if len(_caught_up) >= 100_000:
                _caught_up.clear()
            _caught_up.add(key)
    session.info[NEW_ENTRIES] = [e for e in written if e not in fresh]
    if not pending:
        return []
    name = pseudonym(session, brand_id, member_id)
    ids = [entry.id for entry in pending]
    # Only credits open lots (the ledger hands over those it just opened);
    # only debits, expiries and reversals take from them.
    noted: dict[int, Lot | PointLot] = session.info.get(NEW_LOTS, {})
    lots = {i: noted[i] for i in ids if i is not None and i in noted}
    unknown = [e.id for e in pending if e.points > 0 and e.id not in lots]
    if unknown:
        lots.update({lot.entry_id: lot for lot in session.exec(
            select(PointLot).where(col(PointLot.entry_id).in_(unknown)))})
    allocations: dict[int, list[Allocation]] = {}
    taking = [e.id for e in pending if e.points < 0 or e.kind == EntryKind.REVERSE]
    noted_taken: dict[int, list[Allocation]] = session.info.get(NEW_ALLOCATIONS, {})
    if taking and all(i in noted_taken for i in taking):
        # Every allocation of these entries was made by the ledger's _debit in this
        # transaction, which hands each over in the order it wrote them.
        allocations = {i: noted_taken[i] for i in taking if i is not None}
    elif taking:
        for entry_id, lot_entry, points in session.exec(
                select(LotAllocation.entry_id, PointLot.entry_id, LotAllocation.amount)
                .join(PointLot, col(PointLot.id) == col(LotAllocation.lot_id))
                .where(col(LotAllocation.entry_id).in_(ids))
                .order_by(col(LotAllocation.id))):
            allocations.setdefault(entry_id, []).append(Allocation(lot_entry, points))
    noted_holds: dict[str, Hold | PointHold] = session.info.get(NEW_HOLDS, {})
    holds = {i: noted_holds[i] for e in pending if (i := e.hold_id) in noted_holds}
    hold_ids = [e.hold_id for e in pending if e.hold_id is not None and e.hold_id not in holds]
    if hold_ids:
        holds.update({hold.id: hold for hold in session.exec(
            select(PointHold).where(col(PointHold.id).in_(hold_ids)))})
    records = []
    for entry in pending:
        assert entry.id is not None
        lot = lots.get(entry.id)
        hold: HoldRef | None = None
        if entry.hold_id is not None:
            opened = holds[entry.hold_id]
            hold = (HoldRef(opened.id, opened.points, leaf_time(_aware(opened.expires_at)))
                    if entry.kind == EntryKind.HOLD else HoldRef(opened.id))
        records.append(_record(entry, name, idempotency_key, lot,
                               allocations.get(entry.id, ()), hold))
    return _pend(session, brand_id, records, now=_aware(pending[-1].created_at),
                 writes=writes)


def _one_record(session: Session, entry: Entry, key: tuple[str, str],
                idempotency_key: str | None) -> LeafRecord | None:
    """The leaf of most ledger writes, one entry the write handed over with its lot or its
    allocations, built without the general case's lists and reads; ``None`` for anything
    else (a hold, a reversal, something to read back), which the general case builds."""
    if (entry.brand_id, entry.member_id) != key or entry.hold_id is not None \
            or entry.kind == EntryKind.REVERSE or entry.id is None:
        return None
    noted: dict[int, Lot | PointLot] = session.info.get(NEW_LOTS, {})
    lot = noted.get(entry.id)
    alloc: Sequence[Allocation] = ()
    if entry.points > 0 and lot is None:
        return None
    if entry.points < 0:
        taken: dict[int, list[Allocation]] = session.info.get(NEW_ALLOCATIONS, {})
        if entry.id not in taken:
            return None
        alloc = taken[entry.id]
    return _record(entry, pseudonym(session, *key), idempotency_key, lot, alloc, None)


def _record(entry: Entry | LedgerEntry, member: str, idempotency_key: str | None,
            lot: Lot | PointLot | None, alloc: Sequence[Allocation],
            hold: HoldRef | None) -> LeafRecord:
    """The leaf of one ledger entry, from the lot it opened, the allocations it took and
    the hold it names (both :func:`append_for_member` paths build leaves here)."""
    assert entry.id is not None
    return LeafRecord(LogLeaf.of(
        entry=entry.id, member=member, delta=entry.points, kind=str(entry.kind),
        reason=entry.reason, time=_aware(entry.created_at), idempotency_key=idempotency_key,
        lot=LotOpen.of(_aware(lot.available_at),
                       _aware(lot.expires_at) if lot.expires_at else None)
        if lot is not None else None, alloc=alloc, hold=hold), entry.id)


def _pend(session: Session, brand_id: str, records: Sequence[LeafRecord], *,
          now: datetime,
          writes: list[tuple[Insert | Update, Mapping[str, Any]]] | None = None,
          ) -> list[bytes]:
    """Queue leaves for the sequencer; return their leaf hashes. ``writes``: see
    :func:`append_for_member`."""
    if not records:
        return []
    rows, hashes = [], []
    for record in records:
        assert record.leaf is not None
        raw = record.leaf.to_bytes()
        hashes.append(merkle.leaf_hash(raw))
        rows.append({"brand_id": brand_id, "entry_id": record.entry_id,
                     "member": record.leaf.member, "data": raw.decode(), "created_at": now})
    if len(rows) == 1 and writes is not None:
        # The one leaf of most writes goes with the write's last statement (bench/README.md
        # "Redemption, sixth pass (session 8)"): the same transaction as its entry, and its
        # hash, promised above, is of these very bytes.
        writes.append((_INSERT_PENDING, rows[0]))
    elif len(rows) == 1:
        # The one leaf of a write: issuer._db.core runs the prebuilt insert on the
        # DBAPI cursor (cursor listeners still see it), without SQLAlchemy's execution
        # context, which cost more than the insert itself.
        core(session, _INSERT_PENDING, rows[0])
    else:
        session.execute(_INSERT_PENDING, rows)  # Core executemany
    return hashes


def promise(session: Session, *, brand_id: str, leaf_hashes: Sequence[bytes],
            now: datetime) -> str | None:
    """The signed inclusion promise of a write's leaves, with the key store the write's
    session carries (``session.info[KEYSTORE]``, set by :func:`issuer._ledger.run_write`);
    ``None`` when it carries none (a library caller without keys) or nothing was logged."""
    keystore: KeyStore | None = session.info.get(KEYSTORE)
    if keystore is None or not leaf_hashes:
        return None
    did, signer = _promise_signer(session, keystore, brand_id)
    return merkle.InclusionPromise.sign(leaf_hashes, signer, timestamp=now,
                                        mmd_ms=MAX_MERGE_DELAY_MS, log_id=did).signature


_PROMISE_SIGNER_TTL: Final = 5.0
_promise_signers: dict[tuple[int, str], tuple[float, str, Signer]] = {}


def _promise_signer(session: Session, keystore: KeyStore, brand_id: str
                    ) -> tuple[str, Signer]:
    """The brand's DID and signer, looked up at most every few seconds per process.

    A promise or tree head signed with a key rotated out seconds ago still
    verifies: a retired key stays in the brand's DID document (issuer._keystore).
    """
    key = (id(keystore), brand_id)
    cached = _promise_signers.get(key)
    clock = time.monotonic()
    if cached is not None and clock - cached[0] < _PROMISE_SIGNER_TTL:
        return cached[1], cached[2]
    brand = session.get(Brand, brand_id)
    assert brand is not None  # foreign key of the member
    signer = keystore.signer(session, brand_id=brand_id, did=brand.did)
    if len(_promise_signers) >= 10_000:
        _promise_signers.clear()
    _promise_signers[key] = (clock, brand.did, signer)
    return brand.did, signer


_not_legacy: set[tuple[str, str]] = set()


def carry_forward(session: Session, *, brand_id: str, member_id: str,
                  now: datetime) -> bool:
    """Write the ``snapshot`` leaf of a member whose history began with version 1 leaves.

    Those leaves do not say which lots and holds their points are in, so the
    lots and holds the ledger keeps are stated once, as they are now (the
    member row is locked), in a zero-point ``snapshot`` entry; from there on
    every figure is derivable from the log. Returns whether one was written.
    """
    if (brand_id, member_id) in _not_legacy:
        return False
    name = pseudonym(session, brand_id, member_id)
    # Integrated leaves come before pending ones, so the first is in the tree
    # whenever the member has any there; a history that is all pending is new.
    first = session.exec(select(LogLeafData.data).where(
        LogLeafData.brand_id == brand_id, LogLeafData.member == name)
        .order_by(col(LogLeafData.idx)).limit(1)).first()
    if first is None or parse_json_object(first).get("v") != 1:
        # A first leaf never changes, and one still to come is version 2: no
        # need to look again in this process (one query less per write).
        if len(_not_legacy) >= 100_000:
            _not_legacy.clear()
        _not_legacy.add((brand_id, member_id))
        return False
    if session.exec(select(LedgerEntry.id).where(
            LedgerEntry.member_id == member_id,
            LedgerEntry.kind == EntryKind.SNAPSHOT)).first() is not None:
        return False
    append_for_member(session, brand_id=brand_id, member_id=member_id, idempotency_key=None)
    # Lots with points left, and drained lots a debit not yet reversed took from:
    # _ledger.reverse may put points back into those, and the log must know them.
    undo = aliased(LedgerEntry)
    reversal = select(undo.id).where(undo.reverses_id == col(LotAllocation.entry_id))
    refillable = (select(LotAllocation.lot_id)
                  .join(LedgerEntry, col(LedgerEntry.id) == col(LotAllocation.entry_id))
                  .where(col(LedgerEntry.kind).in_([EntryKind.REDEEM, EntryKind.ADJUST]),
                         col(LotAllocation.amount) > 0, ~exists(reversal)))
    lots = session.exec(select(PointLot).where(
        PointLot.member_id == member_id,
        (col(PointLot.remaining) > 0) | col(PointLot.id).in_(refillable))
        .order_by(col(PointLot.id))).all()
    holds = session.exec(select(PointHold).where(PointHold.member_id == member_id,
                                                 PointHold.status == "held")
                         .order_by(col(PointHold.id))).all()
    entry = LedgerEntry(brand_id=brand_id, member_id=member_id, created_at=now,
                        kind=EntryKind.SNAPSHOT, points=0, qualifying_points=0,
                        qualifying_at=now,
                        reason="lots and holds carried into the log (leaf version 2)")
    session.add(entry)
    session.flush()
    assert entry.id is not None
    carry = Carry(
        lots=tuple(CarriedLot(lot.entry_id, lot.amount, lot.remaining,
                              leaf_time(_aware(lot.available_at)),
                              leaf_time(_aware(lot.expires_at)) if lot.expires_at else None)
                   for lot in lots),
        holds=tuple(HoldRef(h.id, h.points, leaf_time(_aware(h.expires_at))) for h in holds))
    _pend(session, brand_id, [LeafRecord(LogLeaf.of(
        entry=entry.id, member=name, delta=0, kind=str(EntryKind.SNAPSHOT), reason=entry.reason,
        time=now, idempotency_key=None, carry=carry), entry.id)], now=now)
    return True


@dataclass
class _LogRow:
    """The brand's log row as the sequencer reads and writes it (driver SQL, no ORM)."""

    brand_id: str
    size: int
    frontier: list[str]


def append_leaves(session: Session, log: TransparencyLog | _LogRow,
                  records: Sequence[LeafRecord], *, leaf_rows: bool = True) -> list[int]:
    """Append to a log row the caller has locked: O(1) amortised node rows per leaf.

    ``log`` is the ORM row (written back with a flush) or, from :func:`integrate`, the
    row it read with driver SQL (written back with one driver ``UPDATE``).
    ``leaf_rows=False`` stores the hashes only (a bulk load whose leaf texts
    live elsewhere, as the benchmark does); proofs need nothing more.
    """
    frontier = [b64url_decode(h) for h in log.frontier]
    size = log.size
    brand_id = log.brand_id
    levels: list[int] = []
    idxs: list[int] = []
    hashes: list[bytes] = []
    leaf_idxs: list[int] = []
    entries: list[int] = []
    members: list[str] = []
    texts: list[str] = []
    leaf_hash, node_hash = merkle.leaf_hash, merkle.node_hash
    for record in records:
        if record.raw is not None and record.member is not None:
            raw, member = record.raw, record.member
        else:
            assert record.leaf is not None
            raw = record.raw if record.raw is not None else record.leaf.to_bytes()
            member = record.leaf.member
        current = leaf_hash(raw)
        index = size
        levels.append(0)
        idxs.append(index)
        hashes.append(current)
        level = 0
        # A node whose index is odd at its level is a right child: fold it
        # into its left sibling, the last complete subtree on the frontier.
        while (index >> level) & 1:
            current = node_hash(frontier.pop(), current)
            level += 1
            levels.append(level)
            idxs.append(index >> level)
            hashes.append(current)
        frontier.append(current)
        size += 1
        leaf_idxs.append(index)
        entries.append(record.entry_id)
        members.append(member)
        texts.append(raw.decode())
    connection = session.connection()
    sql = _APPEND_SQL.get(connection.dialect.name) or _append_sql(connection.dialect)
    if hashes:
        # Driver SQL, no SQLAlchemy parameter processing (no column here needs a bind
        # processor): on SQLite an executemany of tuples (a C loop); on PostgreSQL one
        # statement whose one parameter is the rows as JSON (one json.dumps), since
        # psycopg adapts every row of an executemany, and every element of an array,
        # in Python (bench/README.md, "Session 7").
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(sql[0], (brand_id, json.dumps([
                [level, idx, h.hex()] for level, idx, h in zip(levels, idxs, hashes,
                                                               strict=True)])))
            if leaf_rows:
                connection.exec_driver_sql(sql[1], (brand_id, json.dumps([
                    [*leaf] for leaf in zip(leaf_idxs, entries, members, texts,
                                            strict=True)])))
        else:
            connection.exec_driver_sql(sql[0], [
                (brand_id, *node) for node in zip(levels, idxs, hashes, strict=True)])
            if leaf_rows:
                connection.exec_driver_sql(sql[1], [
                    (brand_id, *leaf) for leaf in zip(leaf_idxs, entries, members, texts,
                                                      strict=True)])
    log.size = size
    log.frontier = [b64url_encode(h) for h in frontier]
    if isinstance(log, _LogRow):
        connection.exec_driver_sql(sql[3], (size, json.dumps(log.frontier), brand_id))
    else:
        session.add(log)
        session.flush()
    return leaf_idxs


_APPEND_SQL: dict[str, tuple[str, ...]] = {}


def _append_sql(dialect: Any) -> tuple[str, ...]:
    """The sequencer's statements in the driver's paramstyle: node insert, leaf insert,
    pending delete, log row update, log row read (with its lock, then without waiting),
    pending read, head insert. Only placeholders are interpolated."""
    pg = dialect.name == "postgresql"
    mark = "?" if dialect.paramstyle == "qmark" else "%s"
    marks = ", ".join([mark] * 5)
    read_log = f"SELECT size, frontier FROM transparency_log WHERE brand_id = {mark}"  # noqa: S608
    statements = (
        "INSERT INTO log_node (brand_id, level, idx, hash) SELECT %s, (r->>0)::smallint, "
        "(r->>1)::bigint, decode(r->>2, 'hex') FROM json_array_elements(%s::json) AS r" if pg else
        f"INSERT INTO log_node (brand_id, level, idx, hash) VALUES ({', '.join([mark] * 4)})",  # noqa: S608
        "INSERT INTO log_leaf (brand_id, idx, entry_id, member, data) SELECT %s, "
        "(r->>0)::bigint, (r->>1)::bigint, r->>2, r->>3 FROM json_array_elements(%s::json) AS r"
        if pg else
        f"INSERT INTO log_leaf (brand_id, idx, entry_id, member, data) VALUES ({marks})",  # noqa: S608
        "DELETE FROM log_pending WHERE seq = ANY(string_to_array(%s, ',')::bigint[])" if pg else
        f"DELETE FROM log_pending WHERE seq = {mark}",  # noqa: S608
        f"UPDATE transparency_log SET size = {mark}, frontier = {mark}{'::json' if pg else ''} "  # noqa: S608
        f"WHERE brand_id = {mark}",
        read_log + (" FOR UPDATE" if pg else ""),
        read_log + (" FOR UPDATE SKIP LOCKED" if pg else ""),
        f"SELECT seq, entry_id, member, data FROM log_pending WHERE brand_id = {mark} "  # noqa: S608
        f"ORDER BY seq LIMIT {mark}",
        f"INSERT INTO log_tree_head (brand_id, tree_size, root_hash, signed_at, jws) "  # noqa: S608
        f"VALUES ({marks})")
    _APPEND_SQL[dialect.name] = statements
    return statements


def _lock_log(session: Session, brand_id: str, *, wait: bool) -> _LogRow | None:
    """The brand's log row, locked for this transaction; ``None`` when ``wait`` is off and
    another sequencer holds it (PostgreSQL ``SKIP LOCKED``; SQLite's write gate has
    already made this transaction the only writer)."""
    connection = session.connection()
    sql = _APPEND_SQL.get(connection.dialect.name) or _append_sql(connection.dialect)
    row = connection.exec_driver_sql(sql[4] if wait else sql[5], (brand_id,)).first()
    if row is None:
        return None
    frontier = row[1]
    if isinstance(frontier, str):  # SQLite: the JSON column's text
        frontier = json.loads(frontier)
    return _LogRow(brand_id, int(row[0]), list(frontier))


def integrate(session: Session, brand_id: str, *, now: datetime,
              keystore: KeyStore | None = None, limit: int = INTEGRATE_BATCH,
              wait: bool = True) -> int:
    """One sequencer batch: up to ``limit`` pending leaves into the tree; how many.

    Oldest first (``seq``), at the next indexes, with their node rows, and the
    pending rows deleted, all in the caller's transaction: committed, every
    leaf of the batch is in the tree exactly once; rolled back, all are
    still pending. With ``keystore`` the new head is signed
    (:func:`sign_batch_head`); without, the next head handed out signs it.
    Driver SQL throughout (a batch was ~3,000 Python calls of ORM before its
    first leaf; bench/README.md, "Session 7").
    """
    log = _lock_log(session, brand_id, wait=wait)
    if log is None:
        return 0
    connection = session.connection()
    sql = _APPEND_SQL.get(connection.dialect.name) or _append_sql(connection.dialect)
    rows = connection.exec_driver_sql(sql[6], (brand_id, max(1, limit))).all()
    if not rows:
        return 0
    # The text as promised, hashed as it is: append_for_member made it, and
    # check_log re-reads every stored leaf against the ledger.
    records = [LeafRecord(None, int(entry_id), data.encode(), member)
               for _, entry_id, member, data in rows]
    append_leaves(session, log, records)
    seqs = [int(row[0]) for row in rows]
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(sql[2], (",".join(map(str, seqs)),))
    else:
        connection.exec_driver_sql(sql[2], [(seq,) for seq in seqs])
    if keystore is not None:
        did, signer = _promise_signer(session, keystore, brand_id)
        sign_batch_head(session, brand_id=brand_id, log_id=did, now=now, signer=lambda: signer,
                        grown=(log.size, _frontier_root(log.frontier)))
    return len(records)


def pending_count(session: Session, brand_id: str, *, member: str | None = None) -> int:
    stmt = select(func.count()).select_from(PendingLeaf).where(PendingLeaf.brand_id == brand_id)
    if member is not None:
        stmt = stmt.where(PendingLeaf.member == member)
    return int(session.exec(stmt).one())


def has_pending(session: Session, brand_id: str, member_id: str) -> bool:
    """Whether the member has leaves not yet in the tree (what :func:`catch_up` probes)."""
    probe = select(PendingLeaf.seq).where(PendingLeaf.brand_id == brand_id,
                                          PendingLeaf.member == pseudonym(session, brand_id,
                                                                          member_id))
    return session.exec(probe.limit(1)).first() is not None


def catch_up(session: Session, brand_id: str, *, now: datetime,
             keystore: KeyStore | None = None, member_id: str | None = None) -> int:
    """On-demand integration for a reader: everything pending (when ``member_id`` is
    given, only if that member has something pending) is put in the tree now, in
    this transaction. Returns how many leaves; 0 takes no lock."""
    probe = select(PendingLeaf.seq).where(PendingLeaf.brand_id == brand_id)
    if member_id is not None:
        probe = probe.where(PendingLeaf.member == pseudonym(session, brand_id, member_id))
    if session.exec(probe.limit(1)).first() is None:
        return 0
    total = 0
    while True:
        done = integrate(session, brand_id, now=now, keystore=keystore)
        total += done
        if done < INTEGRATE_BATCH:
            return total


def integrate_all(engine: Engine, *, keystore: KeyStore | None, clock: Callable[[], datetime],
                  brand_id: str | None = None, wait: bool = True) -> int:
    """Integrate every pending leaf (of one brand, or all), one transaction per batch.

    What the background :class:`Sequencer` runs each tick (``wait=False``:
    a brand whose log another worker is integrating is left to it) and what
    ``tessera issuer log integrate`` runs. Returns the number of leaves.
    """
    from issuer._db import read_scope

    with read_scope(engine) as session:
        stmt = select(PendingLeaf.brand_id).distinct()
        if brand_id is not None:
            stmt = stmt.where(PendingLeaf.brand_id == brand_id)
        brands = sorted(session.exec(stmt).all())
    return sum(_integrate_brand(engine, brand, keystore=keystore, clock=clock, wait=wait)
               for brand in brands)


def _integrate_brand(engine: Engine, brand_id: str, *, keystore: KeyStore | None,
                     clock: Callable[[], datetime], wait: bool) -> int:
    from issuer._db import session_scope

    total = 0
    while True:
        with session_scope(engine) as session:
            done = integrate(session, brand_id, now=clock(), keystore=keystore, wait=wait)
        total += done
        if done < INTEGRATE_BATCH:
            return total


class Sequencer:
    """The background sequencer of one issuer worker.

    It looks (one read, no lock) for brands with pending leaves; a brand's leaves are
    integrated ``interval + hold_back`` after the sequencer's last look that could not
    have seen them (they arrived after it), or as soon as a full batch is waiting.
    It looks again at that deadline, or after ``interval + hold_back`` when nothing is
    waiting, never sooner than ``interval``. So a leaf waits at most ``interval +
    hold_back`` plus the look and the batch, as when it looked every ``interval``
    (well within :data:`MAX_MERGE_DELAY_MS`), while a busy log is looked at once per
    batch instead of every ``interval`` (bench/README.md, "Session 7"); batches grow
    with the write rate (one commit and one signed head per batch, not per write).

    Every worker (and every instance) runs one; they never integrate the same
    brand at the same time (see the module docstring). A failing tick is
    logged once and retried.
    """

    def __init__(self, engine: Engine, *, keystore: KeyStore | None,
                 clock: Callable[[], datetime],
                 interval: float = SEQUENCER_INTERVAL_SECONDS,
                 hold_back: float = SEQUENCER_HOLD_BACK_SECONDS,
                 after_batch: Callable[[str], None] | None = None) -> None:
        self.engine, self.keystore, self.clock = engine, keystore, clock
        self.interval, self.hold_back = interval, hold_back
        # Called with the brand id once a brand's batches are committed (its witnesses
        # are sent the new checkpoint: issuer._witnessing.witness_brand).
        self.after_batch = after_batch
        self._due: dict[str, float] = {}
        self._looked: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _look(self) -> dict[str, int]:
        """Pending leaves per brand: one statement on a plain connection (no session)."""
        with self.engine.connect() as connection:
            connection = connection.execution_options(**{READ_ONLY: True})
            rows = connection.exec_driver_sql(_LOOK_SQL).all()
            connection.rollback()
        return {str(brand_id): int(count) for brand_id, count in rows}

    def run_once(self, *, force: bool = True) -> int:
        """One tick; ``force`` integrates whatever is pending, due or not."""
        return self._tick(force=force)[0]

    def _tick(self, *, force: bool) -> tuple[int, float]:
        """Look, integrate what is due; how many leaves, and the seconds to the next look."""
        waiting = self._look()
        now = time.monotonic()
        # Leaves not there at the last look arrived after it: due that long after it.
        since = self._looked if self._looked is not None else now
        self._looked = now
        for brand_id in list(self._due):
            if brand_id not in waiting:
                del self._due[brand_id]
        total = 0
        period = self.interval + self.hold_back
        for brand_id, count in sorted(waiting.items()):
            due = self._due.setdefault(brand_id, since + period)
            if force or count >= INTEGRATE_BATCH or now >= due:
                done = _integrate_brand(self.engine, brand_id, keystore=self.keystore,
                                        clock=self.clock, wait=False)
                total += done
                if done:
                    del self._due[brand_id]
                # else another worker's batch holds the log: still due, looked at again
                # after ``interval``.
                if done and self.after_batch is not None:
                    self.after_batch(brand_id)
        if not self._due:
            return total, period
        return total, min(period, max(self.interval,
                                      min(self._due.values()) - time.monotonic()))

    def _loop(self) -> None:
        failing = ""
        while not self._stop.is_set():
            delay = self.interval
            try:
                delay = self._tick(force=False)[1]
                failing = ""
            except Exception as exc:  # a database hiccup must not end the sequencer
                if str(exc) != failing:  # once per new failure, not every tick
                    _log.exception("transparency log sequencer tick failed")
                failing = str(exc)
            self._stop.wait(delay)

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="tessera-log-sequencer",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None


_LOOK_SQL: Final = "SELECT brand_id, count(*) FROM log_pending GROUP BY brand_id"


def _table(model: Any) -> Any:
    return model.__table__


_INSERT_PENDING: Final = insert(_table(PendingLeaf))


def _frontier_root(frontier: Sequence[str]) -> bytes:
    if not frontier:
        return merkle.EMPTY_ROOT
    hashes = [b64url_decode(h) for h in frontier]
    root = hashes[-1]
    for left in reversed(hashes[:-1]):
        root = merkle.node_hash(left, root)
    return root


def current_head(session: Session, brand_id: str) -> tuple[int, bytes]:
    """Size and root of the log now, from the frontier: no node reads."""
    log = log_state(session, brand_id)
    return log.size, _frontier_root(log.frontier)


def checkpoint(session: Session, brand_id: str) -> tuple[int, str]:
    """The ``(tree_size, root_hash)`` of the tree now: what a points credential carries.

    Its issuer first puts the member's pending leaves in the tree
    (:func:`issuer._ledger.checked_balance` runs :func:`catch_up`), so the
    head named covers every entry the credential's balance counts.
    """
    size, root = current_head(session, brand_id)
    return size, b64url_encode(root)


# -- reading nodes -----------------------------------------------------------------------------


class _Recorder:
    def __init__(self) -> None:
        self.keys: set[tuple[int, int]] = set()

    def get_leaf_hash(self, index: int) -> bytes:
        self.keys.add((0, index))
        return _PLACEHOLDER

    def get_subtree_hash(self, start: int, size: int) -> bytes:
        self.keys.add((size.bit_length() - 1, start // size))
        return _PLACEHOLDER


class SqlHashSource:
    """:class:`tessera.merkle.HashSource` over ``log_node``; :meth:`run` batches a computation."""

    def __init__(self, session: Session, brand_id: str,
                 cache: dict[tuple[int, int], bytes] | None = None) -> None:
        self.session = session
        self.brand_id = brand_id
        self.cache = cache if cache is not None else {}

    def _get(self, level: int, idx: int) -> bytes:
        key = (level, idx)
        if key not in self.cache:
            self.fetch([key])
        if key not in self.cache:
            raise TesseraError(ErrorCode.INVALID_REQUEST, f"no log node {level}/{idx}")
        return self.cache[key]

    def get_leaf_hash(self, index: int) -> bytes:
        return self._get(0, index)

    def get_subtree_hash(self, start: int, size: int) -> bytes:
        level = size.bit_length() - 1
        if size < 2 or size != 1 << level or start % size:
            raise TesseraError(ErrorCode.INVALID_REQUEST, "not a complete, aligned subtree")
        return self._get(level, start // size)

    def fetch(self, keys: Iterable[tuple[int, int]]) -> None:
        wanted = sorted(set(keys) - set(self.cache))
        for chunk_start in range(0, len(wanted), 500):
            by_level: dict[int, list[int]] = {}
            for level, idx in wanted[chunk_start:chunk_start + 500]:
                by_level.setdefault(level, []).append(idx)
            # One primary-key search per level, glued with UNION ALL, as plain
            # driver SQL: a row-value IN over (level, idx), or an OR of levels,
            # made SQLite scan all of the brand's nodes, and compiling a fresh
            # SQLAlchemy UNION per proof cost more than the lookups.
            connection = self.session.connection()
            mark = "?" if connection.dialect.paramstyle == "qmark" else "%s"
            sql, params = [], []
            for level, idxs in by_level.items():
                # Only placeholders are interpolated; every value is a parameter.
                sql.append(f"SELECT level, idx, hash FROM log_node WHERE brand_id = {mark} "  # noqa: S608
                           f"AND level = {mark} AND idx IN ({', '.join([mark] * len(idxs))})")
                params.extend([self.brand_id, level, *idxs])
            rows = connection.exec_driver_sql(" UNION ALL ".join(sql), tuple(params))
            for level, idx, digest in rows:
                self.cache[(int(level), int(idx))] = bytes(digest)

    def run(self, fn: Callable[[merkle.HashSource], T]) -> T:
        """Run ``fn`` twice: against a recorder to learn its reads, then on one fetched batch."""
        recorder = _Recorder()
        fn(recorder)
        self.fetch(recorder.keys)
        return fn(self)


def _within(session: Session, brand_id: str, size: int) -> None:
    log = log_state(session, brand_id)
    if size > log.size:
        raise TesseraError(ErrorCode.INVALID_REQUEST, f"the log has only {log.size} entries")


def root_at(session: Session, brand_id: str, size: int) -> bytes:
    _within(session, brand_id, size)
    return SqlHashSource(session, brand_id).run(lambda s: merkle.root_hash(s, size))


def inclusion_proof(session: Session, brand_id: str, index: int, size: int) -> list[bytes]:
    _within(session, brand_id, size)
    return SqlHashSource(session, brand_id).run(
        lambda s: merkle.inclusion_proof(s, index, size))


def consistency_proof(session: Session, brand_id: str, first: int, second: int) -> list[bytes]:
    _within(session, brand_id, second)
    return SqlHashSource(session, brand_id).run(
        lambda s: merkle.consistency_proof(s, first, second))


def sign_batch_head(session: Session, *, brand_id: str, log_id: str,
                    signer: Callable[[], Signer], now: datetime,
                    grown: tuple[int, bytes] | None = None) -> TreeHead | None:
    """Sign the head of the tree as it stands (after a batch), once per size, and keep it.

    The one place a tree head is signed: each sequencer batch ends here, and
    so does a reader asking for a head the sequencer has not signed yet.
    ``grown``: the size and root a batch just appended up to (:func:`integrate`): a
    size never seen before, so never signed; the head is inserted with driver SQL,
    without reading the log row or looking for a stored head (returns ``None``).
    """
    if grown is not None:
        size, root = grown
        sth = merkle.SignedTreeHead.sign(size, root, signer(), timestamp=now, log_id=log_id)
        connection = session.connection()
        sql = _APPEND_SQL.get(connection.dialect.name) or _append_sql(connection.dialect)
        connection.exec_driver_sql(sql[7], (brand_id, size, b64url_encode(root),
                                            _signed_at(connection.dialect)(now), sth.signature))
        return None
    size, root = current_head(session, brand_id)
    stored = session.get(TreeHead, (brand_id, size))
    if stored is not None:
        return stored
    sth = merkle.SignedTreeHead.sign(size, root, signer(), timestamp=now, log_id=log_id)
    row = TreeHead(brand_id=brand_id, tree_size=size, root_hash=b64url_encode(root),
                   signed_at=now, jws=sth.signature)
    session.add(row)
    session.flush()
    return row


_SIGNED_AT: dict[str, Callable[[datetime], Any]] = {}


def _signed_at(dialect: Any) -> Callable[[datetime], Any]:
    """``log_tree_head.signed_at`` as SQLAlchemy binds it on this dialect (SQLite's text)."""
    bind = _SIGNED_AT.get(dialect.name)
    if bind is None:
        processor = _table(TreeHead).c.signed_at.type.bind_processor(dialect)
        bind = _SIGNED_AT[dialect.name] = processor or (lambda value: value)
    return bind


def signed_head(session: Session, *, brand_id: str, log_id: str,
                signer: Callable[[], Signer], now: datetime) -> TreeHead:
    """The signed head of the current tree (see :func:`sign_batch_head`)."""
    head = sign_batch_head(session, brand_id=brand_id, log_id=log_id, signer=signer, now=now)
    assert head is not None  # not a batch's (no ``grown``)
    return head


def member_leaves(session: Session, *, brand_id: str, member_id: str, size: int,
                  after: int = -1, limit: int = MAX_ENTRIES_PAGE
                  ) -> list[tuple[int, dict[str, Any] | None, list[bytes]]]:
    """The member's leaves below ``size`` with an inclusion proof each (one node query)."""
    _within(session, brand_id, size)
    name = pseudonym(session, brand_id, member_id)
    rows = list(session.exec(
        select(LogLeafData).where(LogLeafData.brand_id == brand_id, LogLeafData.member == name,
                                  col(LogLeafData.idx) > after, col(LogLeafData.idx) < size)
        .order_by(col(LogLeafData.idx)).limit(max(1, min(limit, MAX_ENTRIES_PAGE)))))
    source = SqlHashSource(session, brand_id)
    recorder = _Recorder()
    for row in rows:
        merkle.inclusion_proof(recorder, row.idx, size)
    source.fetch(recorder.keys)
    return [(row.idx, parse_json_object(row.data) if row.data is not None else None,
             merkle.inclusion_proof(source, row.idx, size)) for row in rows]


def member_figures(session: Session, *, brand_id: str, member_id: str,
                   at: datetime) -> Figures:
    """What the member's leaves imply at ``at`` (:func:`tessera.pointslog.fold`).

    ``unsupported_format`` when the history cannot support it: a leaf written
    before leaves carried lots (v1), or one whose text was erased.
    """
    name = pseudonym(session, brand_id, member_id)
    # One statement, so one snapshot: a batch the sequencer commits meanwhile
    # moves a leaf from pending to the tree, never out of sight of both.
    leaf, wait = _table(LogLeafData), _table(PendingLeaf)
    stmt = union_all(
        select(literal(0).label("part"), leaf.c.idx.label("pos"), leaf.c.data)
        .where(leaf.c.brand_id == brand_id, leaf.c.member == name),
        select(literal(1).label("part"), wait.c.seq.label("pos"), wait.c.data)
        .where(wait.c.brand_id == brand_id, wait.c.member == name)).order_by("part", "pos")
    leaves = []
    for _, _, data in session.execute(stmt):
        if data is None:
            raise TesseraError(ErrorCode.UNSUPPORTED_FORMAT, "the member's leaves were erased")
        leaves.append(parse_leaf(parse_json_object(data)))
    return fold(leaves, at=at)


def erase_member_leaves(session: Session, *, brand_id: str, member_id: str) -> int:
    """Drop the leaf texts of a member; the hashes (and every proof) stay."""
    name = pseudonym(session, brand_id, member_id)
    result = session.execute(
        update(LogLeafData)
        .where(col(LogLeafData.brand_id) == brand_id, col(LogLeafData.member) == name,
               col(LogLeafData.data).is_not(None))
        .values(data=None))
    return int(getattr(result, "rowcount", 0) or 0)


def check_log(session: Session, brand_id: str) -> list[str]:
    """Full self-check (operators, tests): ledger, leaves, nodes and frontier agree.

    Rebuilds the tree from the stored leaf hashes and compares every stored
    node, re-hashes every kept leaf text, and checks that every ledger entry
    of the brand has exactly one leaf, in the tree or pending, whose text
    still says what the entry says. Returns the problems found (empty when
    consistent). O(n).
    """
    problems: list[str] = []
    log = log_state(session, brand_id)
    nodes = {(int(level), int(idx)): bytes(h) for level, idx, h in session.execute(
        select(col(LogNode.level), col(LogNode.idx), col(LogNode.hash))
        .where(col(LogNode.brand_id) == brand_id))}
    tree = merkle.MemoryTree()
    for i in range(log.size):
        digest = nodes.get((0, i))
        if digest is None:
            problems.append(f"leaf {i} missing")
            return problems
        tree.append_leaf_hash(digest)
    for (level, idx), digest in nodes.items():
        if idx >= log.size >> level or tree.get_subtree_hash(idx << level, 1 << level) != digest:
            problems.append(f"node {level}/{idx} does not match its children")
    if tree.root_hash() != _frontier_root(log.frontier):
        problems.append("frontier does not match the nodes")
    entries = {int(e.id or 0): e for e in session.exec(
        select(LedgerEntry).where(LedgerEntry.brand_id == brand_id))}
    leaves = list(session.exec(select(LogLeafData).where(LogLeafData.brand_id == brand_id)))
    if len(leaves) != log.size:
        problems.append(f"{len(leaves)} leaf rows for a log of {log.size}")
    logged = set()
    for row in leaves:
        logged.add(row.entry_id)
        entry = entries.get(row.entry_id)
        if entry is None:
            problems.append(f"leaf {row.idx} records no ledger entry")
            continue
        if row.data is None:
            continue  # erased: only the hash remains
        if merkle.leaf_hash(row.data.encode()) != nodes.get((0, row.idx)):
            problems.append(f"leaf {row.idx} text does not match its hash")
        body = parse_json_object(row.data)
        if (body.get("entry"), body.get("delta"), body.get("kind")) != (
                entry.id, entry.points, str(entry.kind)):
            problems.append(f"leaf {row.idx} disagrees with ledger entry {entry.id}")
    for waiting in session.exec(select(PendingLeaf).where(PendingLeaf.brand_id == brand_id)):
        entry = entries.get(waiting.entry_id)
        if waiting.entry_id in logged or entry is None:
            problems.append(f"pending leaf {waiting.seq} records "
                            f"{'an entry already in the tree' if entry else 'no ledger entry'}")
            continue
        logged.add(waiting.entry_id)
        body = parse_json_object(waiting.data)
        if (body.get("entry"), body.get("delta"), body.get("kind")) != (
                entry.id, entry.points, str(entry.kind)):
            problems.append(f"pending leaf {waiting.seq} disagrees with ledger entry {entry.id}")
    missing = set(entries) - logged
    if missing:
        problems.append(f"ledger entries without a leaf: {sorted(missing)[:10]}")
    problems.extend(_check_cache(session, brand_id, {e.member_id for e in entries.values()}))
    return problems


def _check_cache(session: Session, brand_id: str, member_ids: Iterable[str]) -> list[str]:
    """The lots and open holds the ledger keeps are the ones its log implies."""
    problems: list[str] = []
    now = datetime.now(UTC)
    for member_id in sorted(member_ids):
        try:
            implied = member_figures(session, brand_id=brand_id, member_id=member_id, at=now)
        except TesseraError as exc:
            if exc.code is not ErrorCode.UNSUPPORTED_FORMAT:
                problems.append(f"member {member_id}: the log breaks the ledger's rules: "
                                f"{exc.detail}")
            continue
        kept = {int(lot.entry_id): (int(lot.remaining), _aware(lot.available_at),
                                    _aware(lot.expires_at) if lot.expires_at else None)
                for lot in session.exec(select(PointLot).where(
                    PointLot.member_id == member_id, col(PointLot.remaining) > 0))}
        if kept != {lot.entry: (lot.remaining, lot.available_at, lot.expires_at)
                    for lot in implied.lots}:
            problems.append(f"member {member_id}: point lots disagree with the log")
        held = {h.id: (h.points, _aware(h.expires_at)) for h in session.exec(
            select(PointHold).where(PointHold.member_id == member_id,
                                    PointHold.status == "held"))}
        if held != {h.id: (h.points, h.expires_at) for h in implied.holds}:
            problems.append(f"member {member_id}: open holds disagree with the log")
    return problems


# -- data-subject rights ---------------------------------------------------------------------


def export_member(session: Session, *, brand_id: str, member_id: str,
                  now: datetime) -> dict[str, Any]:
    """Everything the brand holds about a member (GDPR art. 15 and 20, PIPL art. 45)."""
    from issuer import _ledger
    from issuer._admin import get_member, member_public
    from issuer._log_models import MemberErasure, Redemption
    from issuer._models import IssuedCredential, PointHold

    member = get_member(session, brand_id=brand_id, member_id=member_id)
    catch_up(session, brand_id, now=now, member_id=member_id)  # every leaf with its index

    def rows(model: Any, **where: Any) -> list[dict[str, Any]]:
        stmt = select(model)
        for name, value in where.items():
            stmt = stmt.where(getattr(model, name) == value)
        return [r.model_dump(mode="json", warnings=False) for r in session.exec(stmt)]

    name = pseudonym(session, brand_id, member_id)
    leaves = session.exec(select(LogLeafData).where(LogLeafData.brand_id == brand_id,
                                                    LogLeafData.member == name)
                          .order_by(col(LogLeafData.idx)))
    erasure = session.get(MemberErasure, member_id)
    return {
        "exported_at": now.isoformat(),
        "member": member_public(session, member).model_dump(mode="json"),
        "balance": _ledger.balance(session, member=member, now=now).model_dump(mode="json"),
        "ledger_entries": rows(LedgerEntry, member_id=member_id),
        "holds": rows(PointHold, member_id=member_id),
        "redemptions": [{k: v for k, v in r.items() if k not in ("nonce", "presentation_hash")}
                        for r in rows(Redemption, member_id=member_id)],
        "issued_credentials": rows(IssuedCredential, member_id=member_id),
        "transparency_log": {"pseudonym": name, "leaves": [
            {"index": leaf.idx, "leaf": parse_json_object(leaf.data) if leaf.data else None}
            for leaf in leaves]},
        "erasure": erasure.model_dump(mode="json") if erasure else None,
    }


def erase_member(session: Session, *, brand_id: str, member_id: str,
                 now: datetime) -> dict[str, Any]:
    """Erase a member's personal data (GDPR art. 17, PIPL art. 47); keep the log verifiable.

    The DID and membership number are replaced, live credentials revoked and
    the member's leaf texts dropped. What stays: the pseudonymous leaf hashes
    (every proof of every other member still verifies) and the ledger's
    amounts under the member's random id, which the brand's accounting must
    keep (GDPR art. 17(3)(b)) and which no longer point to a person.

    Every column computed from the member's key goes too: a did:key *is* the
    public key, so its JWK thumbprint, or the hash of a credential or KB-JWT
    bound to it, re-identifies the member to anyone holding the public DID or
    a presentation (GDPR recital 26). Credential thumbprints are cleared;
    a redemption's credential and presentation hashes become random values
    (the columns are required and the presentation hash unique; replays stay
    refused by the partner's nonce and the revoked credential).
    """
    from issuer._admin import get_member
    from issuer._log_models import MemberErasure, Redemption
    from issuer._models import IssuedCredential
    from issuer._status_lists import revoke_current

    member = session.exec(select(Member).where(Member.id == member_id,
                                                Member.brand_id == brand_id)
                          .with_for_update()).first()
    if member is None:
        get_member(session, brand_id=brand_id, member_id=member_id)  # raises not_found
        raise AssertionError("unreachable")  # pragma: no cover
    done = session.get(MemberErasure, member_id)
    if done is not None:
        return done.model_dump(mode="json")
    # Pending leaves keep their text until integrated: integrate, then drop the texts.
    catch_up(session, brand_id, now=now, member_id=member_id)
    revoked = sum(revoke_current(session, member_id=member_id, credential_type=ctype, now=now,
                                 reason="member erased")
                  for ctype in ("LoyaltyPointsCredential", "LoyaltyMembershipCredential"))
    leaves = erase_member_leaves(session, brand_id=brand_id, member_id=member_id)
    keyed = session.execute(
        update(IssuedCredential)
        .where(col(IssuedCredential.member_id) == member_id,
               col(IssuedCredential.holder_key_thumbprint).is_not(None))
        .values(holder_key_thumbprint=None))
    redemptions = list(session.exec(select(Redemption).where(Redemption.member_id == member_id)))
    for redemption in redemptions:
        redemption.credential_hash = secrets.token_hex(32)
        redemption.presentation_hash = secrets.token_hex(32)
        session.add(redemption)
    member.did = f"erased:{member.id}"
    member.membership_number = f"erased-{secrets.token_hex(8)}"
    session.add(member)
    row = MemberErasure(member_id=member_id, brand_id=brand_id, erased_at=now,
                        details={"leaf_texts_dropped": leaves, "credentials_revoked": revoked,
                                 "key_thumbprints_dropped":
                                     int(getattr(keyed, "rowcount", 0) or 0),
                                 "redemption_hashes_replaced": len(redemptions)})
    session.add(row)
    session.flush()
    return row.model_dump(mode="json")
