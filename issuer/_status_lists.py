"""Status lists of a brand: random slots, state changes, and the signed documents served.

Two kinds of list (DESIGN.md "Status"):

* SD-JWT VCs point at an IETF **Token Status List** with 2 bits per entry
  (0 VALID, 1 INVALID = revoked, 2 SUSPENDED; draft-ietf-oauth-status-list
  §7.1), served as ``application/statuslist+jwt`` at
  ``{issuer}/status/{list_id}``.
* Data Integrity credentials carry two ``BitstringStatusListEntry`` items
  (W3C Bitstring Status List v1.0 §2.1), one per purpose, both at the same
  index of the shard: ``{issuer}/status/{list_id}/revocation`` and
  ``.../suspension``, each a ``BitstringStatusListCredential`` secured with
  ``eddsa-rdfc-2022`` or ``ecdsa-rdfc-2019`` by the brand key.

A shard holds 131,072 entries (the Bitstring minimum, §3.2 step 9; herd
privacy for both kinds). Indexes are drawn uniformly at random among the free
ones (:class:`tessera.status.IndexAllocator`), with a bounded number of
probes: once random probes keep hitting used slots the shard is marked full
and a new one opens, so allocation never scans a whole list.

The lists are not stored as bitmaps: they are computed from the
``issued_credential`` rows that are not valid, so a state change is a single
row update (plus the shard's ``version``) and a published list can never
disagree with the table. Signed documents are cached per process by
``(shard, purpose, version)``.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import Insert, Update, bindparam, union_all, update
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key
from sqlmodel import Session, col, select

from issuer._db import core, core_with_writes
from issuer._models import (
    CredentialState,
    IssuedCredential,
    StatusListKind,
    StatusListShard,
)
from tessera.errors import ErrorCode, TesseraError
from tessera.status import (
    DEFAULT_LIST_SIZE,
    BitstringStatusList,
    IndexAllocator,
    StatusList,
    TokenStatus,
    bitstring_status_list_credential,
    sign_status_list_token,
)
from tessera.typing import Signer

__all__ = [
    "BITSTRING_PURPOSES",
    "SHARD_SIZE",
    "PublishedList",
    "StatusPublisher",
    "allocate",
    "allocate_batch",
    "bitstring_entries",
    "change_state",
    "mark_superseded",
    "revoke_current",
    "token_status_claim",
]

SHARD_SIZE: Final = DEFAULT_LIST_SIZE
TOKEN_BITS: Final = 2
BITSTRING_PURPOSES: Final = ("revocation", "suspension")
# Random probes before a shard counts as full: at 90 % occupancy 64 probes
# all hit used slots with probability 0.9**64 ~ 0.1 %.
MAX_PROBES: Final = 64
LIST_VALIDITY: Final = timedelta(hours=24)
# Re-sign a cached list well before it expires, even when nothing changed.
RESIGN_AFTER: Final = timedelta(hours=1)
# Verifiers may cache a list this long (Cache-Control max-age and the token's ttl):
# the delay with which a revocation reaches them.
CACHE_SECONDS: Final = 60


# Built once with bound parameters: a slot costs two or three of these per credential,
# and building a statement and its cache key was a third of each (bench/README.md).
_OPEN_SHARD: Final = (select(StatusListShard)
                      .where(col(StatusListShard.brand_id) == bindparam("brand_id"),
                             col(StatusListShard.kind) == bindparam("kind"),
                             col(StatusListShard.full).is_(False))
                      .order_by(col(StatusListShard.created_at)))
_SLOT_USED: Final = select(IssuedCredential.id).where(
    col(IssuedCredential.status_list_id) == bindparam("shard_id"),
    col(IssuedCredential.status_index) == bindparam("idx"))
_SLOT_INDEX: Final = IssuedCredential.__table__.c  # type: ignore[attr-defined]
# A round of candidate slots probed in one statement: one lookup of the unique key
# (status_list_id, status_index) per candidate, as a UNION ALL. An IN list on the key's
# second column is, in PostgreSQL 15's generic plan, a filter over every row of the shard
# (a bitmap scan of status_list_id alone: ~3,000 rows read per batch-10 exchange in the
# load bench, growing with the shard; bench/README.md "Issuance on SQLite, the gate's
# hold (session 8)"). Built once per round size.
_SLOTS_USED: dict[int, Any] = {}


def _slots_used(count: int) -> Any:
    stmt = _SLOTS_USED.get(count)
    if stmt is None:
        lookups = [select(_SLOT_INDEX.status_index).where(
            _SLOT_INDEX.status_list_id == bindparam("shard_id"),
            _SLOT_INDEX.status_index == bindparam(f"idx_{i}")) for i in range(count)]
        stmt = _SLOTS_USED[count] = lookups[0] if count == 1 else union_all(*lookups)
    return stmt


def _open_shard(session: Session, *, brand_id: str, kind: StatusListKind,
                now: datetime, size: int) -> StatusListShard:
    shard = session.exec(_OPEN_SHARD, params={"brand_id": brand_id, "kind": kind}).first()
    if shard is None:
        shard = StatusListShard(brand_id=brand_id, kind=kind, size=size, created_at=now)
        session.add(shard)
        session.flush()
    return shard


def allocate(session: Session, *, brand_id: str, kind: StatusListKind, now: datetime,
             size: int = SHARD_SIZE, taken: Collection[tuple[str, int]] = ()
             ) -> tuple[StatusListShard, int]:
    """A free random index in the brand's open shard of ``kind`` (a new shard if full).

    The caller inserts the credential row in the same transaction; the
    unique ``(status_list_id, status_index)`` constraint turns a concurrent
    pick of the same slot into a retried write (``run_write``). ``taken``:
    ``(shard id, index)`` slots the caller picked but has not inserted yet
    (a batch inserts its rows together after its picks).
    """
    for _ in range(8):
        shard = _open_shard(session, brand_id=brand_id, kind=kind, now=now, size=size)
        probes = 0

        def used(idx: int, shard_id: str = shard.id) -> bool:
            nonlocal probes
            probes += 1
            if probes > MAX_PROBES:
                raise TesseraError(ErrorCode.CONFLICT, "status list shard is nearly full")
            if (shard_id, idx) in taken:
                return True
            found = session.exec(_SLOT_USED, params={"shard_id": shard_id, "idx": idx})
            return found.first() is not None

        try:
            return shard, IndexAllocator(shard.size, is_used=used, attempts=MAX_PROBES).allocate()
        except TesseraError as exc:
            if exc.code is not ErrorCode.CONFLICT:
                raise
            shard.full = True
            session.add(shard)
            session.flush()
    raise TesseraError(ErrorCode.INTERNAL_ERROR, "could not allocate a status list index")


def allocate_batch(session: Session, *, brand_id: str, kind: StatusListKind, now: datetime,
                   count: int, size: int = SHARD_SIZE) -> list[tuple[StatusListShard, int]]:
    """``count`` distinct free random slots for a batch's rows, inserted by the caller.

    The open shard is read once and a round of candidates is probed in one
    statement, instead of a shard read and a probe per slot (two statements a
    credential: bench/README.md "Issuance, third pass (session 5)"). Each
    candidate is drawn uniformly among the slots not yet picked and kept if
    free, so each pick stays uniform over the free slots (rejection sampling,
    as :class:`tessera.status.IndexAllocator`). After :data:`MAX_PROBES`
    candidates the rest go through :func:`allocate` one by one, which marks
    a nearly full shard full and opens the next.
    """
    shard = _open_shard(session, brand_id=brand_id, kind=kind, now=now, size=size)
    picked: list[int] = []
    probes = 0
    while probes < MAX_PROBES:
        want = min(count - len(picked), shard.size - len(picked), MAX_PROBES - probes)
        if want <= 0:
            break
        candidates: list[int] = []
        while len(candidates) < want:
            idx = secrets.randbelow(shard.size)
            if idx not in candidates and idx not in picked:
                candidates.append(idx)
        probes += want
        used = set(core(session, _slots_used(len(candidates)), {
            "shard_id": shard.id, **{f"idx_{i}": idx for i, idx in enumerate(candidates)},
        }).scalars())
        picked.extend(idx for idx in candidates if idx not in used)
    slots = [(shard, idx) for idx in picked]
    taken = {(shard.id, idx) for idx in picked}
    while len(slots) < count:
        slots.append(allocate(session, brand_id=brand_id, kind=kind, now=now, size=size,
                              taken=taken))
        taken.add((slots[-1][0].id, slots[-1][1]))
    return slots


def _bump(session: Session, shard_ids: set[str]) -> None:
    for shard_id in shard_ids:
        session.execute(update(StatusListShard).where(col(StatusListShard.id) == shard_id)
                        .values(version=StatusListShard.version + 1))


_ALLOWED: Final[dict[CredentialState, frozenset[CredentialState]]] = {
    CredentialState.REVOKED: frozenset({CredentialState.VALID, CredentialState.SUSPENDED}),
    CredentialState.SUSPENDED: frozenset({CredentialState.VALID}),
    CredentialState.VALID: frozenset({CredentialState.SUSPENDED}),
}


def change_state(session: Session, *, brand_id: str, credential_id: str,
                 state: CredentialState, now: datetime, reason: str | None = None
                 ) -> IssuedCredential:
    """Revoke (final), suspend (a valid one) or resume (a suspended one).

    The change acts on the credential's whole batch: its siblings carry the
    same claims for the same member, so revoking one of them alone would
    leave the wallet the others to present. Siblings already in the target
    state, or that cannot move to it (a revoked one is not resumed), keep
    theirs.
    """
    cred = session.get(IssuedCredential, credential_id, with_for_update=True,
                       populate_existing=True)
    if cred is None or cred.brand_id != brand_id:
        raise TesseraError(ErrorCode.NOT_FOUND, "no such credential")
    if cred.status == state:
        return cred  # idempotent: revoking twice is one revocation
    if CredentialState(cred.status) not in _ALLOWED[state]:
        raise TesseraError(ErrorCode.CONFLICT, f"a {cred.status} credential cannot become {state}")
    batch = [cred]
    if cred.batch_id is not None:
        stmt = (select(IssuedCredential)
                .where(IssuedCredential.batch_id == cred.batch_id,
                       IssuedCredential.id != cred.id,
                       col(IssuedCredential.status).in_(list(_ALLOWED[state])))
                .with_for_update().execution_options(populate_existing=True))
        batch.extend(session.exec(stmt))
    for row in batch:
        row.status = state
        row.status_reason = reason
        row.status_changed_at = now
        session.add(row)
    session.flush()
    _bump(session, {row.status_list_id for row in batch})
    return cred


# The states above "revoked" (in byte and collation order) are exactly the live ones.
_LIVE_ABOVE: Final = CredentialState.REVOKED
assert {s for s in CredentialState if s > _LIVE_ABOVE} == {
    CredentialState.VALID, CredentialState.SUSPENDED}

# Every ledger write asks it (the points credential is superseded): built once, one
# UPDATE ... RETURNING whether or not there is a live credential (bench/README.md
# "Redemption, third pass (session 5)").
_REVOKE_LIVE_OF_TYPE: Final = (
    update(IssuedCredential)
    .where(col(IssuedCredential.member_id) == bindparam("of_member"),
           col(IssuedCredential.credential_type) == bindparam("of_type"),
           # Rows nothing superseded only: the same rows (mark_superseded revokes what it
           # supersedes), read through ix_issued_credential_member_current without the
           # member's history of superseded credentials.
           col(IssuedCredential.superseded_by).is_(None),
           # The live states (valid, suspended) as the one range of the index's status
           # column they are (_LIVE_ABOVE): PostgreSQL 15's generic plan checks an IN
           # list on a column after a gap in the index (format, dataset) as a filter of
           # the rows fetched, a range in the index condition.
           col(IssuedCredential.status) > _LIVE_ABOVE)
    .values(status=CredentialState.REVOKED, status_reason=bindparam("reason"),
            status_changed_at=bindparam("now"))
    .returning(col(IssuedCredential.id), col(IssuedCredential.status_list_id)))


def revoke_current(session: Session, *, member_id: str, credential_type: str,
                   now: datetime, reason: str,
                   writes: Sequence[tuple[Insert | Update, Mapping[str, Any]]] = ()) -> int:
    """Revoke the member's live credentials of a type (their claims no longer hold).

    ``writes``: single-row INSERTs and UPDATEs (by key) the caller makes next, sent
    with the revocation (one statement on PostgreSQL, :func:`issuer._db.core_with_writes`);
    each must write its one row."""
    if session.new or session.dirty:
        session.flush()  # a credential changed and not yet written is written first
    rows, counts = core_with_writes(session, _REVOKE_LIVE_OF_TYPE, {
        "of_member": member_id, "of_type": credential_type, "reason": reason,
        "now": now}, writes)
    if any(n != 1 for n in counts):
        raise TesseraError(ErrorCode.INTERNAL_ERROR, "a row to update is gone")
    for row in rows:
        # A copy of the row this transaction loaded becomes what the row now holds.
        loaded = session.identity_map.get(identity_key(IssuedCredential, row.id))
        if loaded is not None:
            set_committed_value(loaded, "status", CredentialState.REVOKED)
            set_committed_value(loaded, "status_reason", reason)
            set_committed_value(loaded, "status_changed_at", now)
    if rows:
        _bump(session, {row.status_list_id for row in rows})
    return len(rows)


# A member's earlier credentials a new batch may supersede, built once (a statement built
# per call was a tenth of a batch's write: bench/README.md "Issuance, third pass").
_SUPERSEDABLE_ANY: Final = select(IssuedCredential).where(
    col(IssuedCredential.member_id) == bindparam("member_id"),
    col(IssuedCredential.credential_type) == bindparam("credential_type"),
    col(IssuedCredential.format) == bindparam("format"),
    col(IssuedCredential.superseded_by).is_(None),
    col(IssuedCredential.id).not_in(bindparam("new_ids", expanding=True)))
_ISSUED: Final = IssuedCredential.__table__  # type: ignore[attr-defined]


def _current(*where: Any) -> Any:
    return select(_ISSUED.c.id, _ISSUED.c.status, _ISSUED.c.status_list_id).where(
        _ISSUED.c.member_id == bindparam("member_id"),
        _ISSUED.c.credential_type == bindparam("credential_type"),
        _ISSUED.c.superseded_by.is_(None), *where)


# What a batch of dataset D supersedes, and only that: the rows nothing superseded of its
# format and another dataset (or none), and those of D revoked since. Each branch is a
# range of ix_issued_credential_member_current (member, type, superseded_by, format,
# dataset, status), so the pool of D that stays valid (a wallet's unused top-ups, which
# grew with every exchange of an unchanged balance) is never read: the statement reads
# the rows it returns (bench/README.md "Issuance on SQLite, the gate's hold (session 8)").
# The batch's own rows (D, valid) are in no branch.
_format = _ISSUED.c.format == bindparam("format")
_dataset = _ISSUED.c.dataset_sha256
_SUPERSEDABLE: Final = union_all(
    _current(_format, _dataset < bindparam("dataset")),
    _current(_format, _dataset > bindparam("dataset")),
    _current(_format, _dataset.is_(None)),
    _current(_format, _dataset == bindparam("dataset"),
             _ISSUED.c.status == CredentialState.REVOKED))
_SUPERSEDE: Final = (update(_ISSUED).where(_ISSUED.c.id.in_(bindparam("ids", expanding=True)))
                     .values(superseded_by=bindparam("first")))
_SUPERSEDE_AND_REVOKE: Final = _SUPERSEDE.values(
    status=CredentialState.REVOKED, status_reason="superseded",
    status_changed_at=bindparam("now"))


def mark_superseded(session: Session, *, member_id: str, credential_type: str,
                    credential_format: str, dataset_sha256: str | None,
                    new_ids: Sequence[str], now: datetime) -> None:
    """A fresh batch (``new_ids``) replaces the member's earlier credentials of a changed
    state.

    Earlier credentials of the same type and format whose claims differ from
    the batch's (``dataset_sha256``) are superseded by the batch's first
    credential and revoked. Those with the same claims stay valid: a wallet
    topping up its pool keeps the unused rest (OpenID4VCI 1.0 §13.2), and a
    batch never touches its own siblings.
    """
    first = new_ids[0]
    params = {"member_id": member_id, "credential_type": credential_type,
              "format": credential_format}
    if dataset_sha256 is None:
        _supersede_all(session, params={**params, "new_ids": list(new_ids)}, first=first,
                       now=now)
        return
    # Core statements on rows nothing in this transaction loaded (the batch's rows went
    # in by a Core INSERT); a copy loaded anyway is brought in line below.
    rows = core(session, _SUPERSEDABLE, {**params, "dataset": dataset_sha256}).all()
    if not rows:
        return  # a top-up of an unchanged state: the common case, one read of no row
    live = [row for row in rows if row.status != CredentialState.REVOKED]
    revoked = [row.id for row in rows if row.status == CredentialState.REVOKED]
    if live:
        core(session, _SUPERSEDE_AND_REVOKE,
             {"ids": [row.id for row in live], "first": first, "now": now})
    if revoked:
        core(session, _SUPERSEDE, {"ids": revoked, "first": first})
    for row in rows:
        loaded = session.identity_map.get(identity_key(IssuedCredential, row.id))
        if loaded is None:
            continue
        set_committed_value(loaded, "superseded_by", first)
        if row.status != CredentialState.REVOKED:
            set_committed_value(loaded, "status", CredentialState.REVOKED)
            set_committed_value(loaded, "status_reason", "superseded")
            set_committed_value(loaded, "status_changed_at", now)
    _bump(session, {row.status_list_id for row in live})


def _supersede_all(session: Session, *, params: dict[str, Any], first: str,
                   now: datetime) -> None:
    """A batch with no dataset digest supersedes every earlier credential of its kind."""
    changed: set[str] = set()
    for old in session.exec(_SUPERSEDABLE_ANY, params=params):
        old.superseded_by = first
        if old.status != CredentialState.REVOKED:
            old.status = CredentialState.REVOKED
            old.status_reason = "superseded"
            old.status_changed_at = now
            changed.add(old.status_list_id)
        session.add(old)
    session.flush()
    _bump(session, changed)


def token_status_claim(list_url: str, idx: int) -> dict[str, dict[str, object]]:
    """The SD-JWT VC ``status`` claim (Token Status List §6.2)."""
    return {"status_list": {"idx": idx, "uri": list_url}}


def bitstring_entries(list_url: str, idx: int) -> list[dict[str, str]]:
    """``credentialStatus`` of a Data Integrity credential: one entry per purpose (§2.1)."""
    return [{"id": f"{list_url}/{purpose}#{idx}", "type": "BitstringStatusListEntry",
             "statusPurpose": purpose, "statusListIndex": str(idx),
             "statusListCredential": f"{list_url}/{purpose}"}
            for purpose in BITSTRING_PURPOSES]


# -- publishing -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PublishedList:
    body: bytes
    media_type: str
    etag: str
    version: int
    signed_at: datetime


def _cryptosuite(signer: Signer) -> str:
    if signer.public_key.crv == "Ed25519":
        return "eddsa-rdfc-2022"
    if signer.public_key.crv == "P-256":
        return "ecdsa-rdfc-2019"
    raise TesseraError(ErrorCode.UNSUPPORTED_ALGORITHM,
                       f"no Data Integrity cryptosuite for a {signer.public_key.crv} key")


class StatusPublisher:
    """Builds, signs and caches the published lists (one instance per process)."""

    def __init__(self, *, max_entries: int = 1024) -> None:
        self._cache: dict[tuple[str, str], PublishedList] = {}
        self._lock = threading.Lock()
        self._max = max_entries

    def _invalid(self, session: Session, shard_id: str) -> list[tuple[int, str]]:
        stmt = select(IssuedCredential.status_index, IssuedCredential.status).where(
            IssuedCredential.status_list_id == shard_id,
            IssuedCredential.status != CredentialState.VALID)
        return [(int(i), str(s)) for i, s in session.exec(stmt)]

    def publish(self, session: Session, *, shard: StatusListShard, purpose: str | None,
                url: str, issuer: str, signer: Signer, now: datetime) -> PublishedList:
        """The signed list at ``url``; ``purpose`` is None for a token list."""
        if (purpose is None) != (shard.kind == StatusListKind.TOKEN) or (
                purpose is not None and purpose not in BITSTRING_PURPOSES):
            raise TesseraError(ErrorCode.NOT_FOUND, "no such status list")
        key = (shard.id, purpose or "")
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and hit.version == shard.version and \
                timedelta(0) <= now - hit.signed_at < RESIGN_AFTER:
            return hit
        invalid = self._invalid(session, shard.id)
        if purpose is None:
            token_list = StatusList(TOKEN_BITS, shard.size)
            for idx, state in invalid:
                token_list.set(idx, TokenStatus.INVALID if state == CredentialState.REVOKED
                               else TokenStatus.SUSPENDED)
            body = sign_status_list_token(token_list, signer, uri=url, issued_at=now,
                                          expires_at=now + LIST_VALIDITY, ttl=CACHE_SECONDS,
                                          issuer=issuer).encode("ascii")
            media_type = "application/statuslist+jwt"
        else:
            from tessera.encoding import canonical_json
            from tessera.formats import data_integrity

            bits = BitstringStatusList(shard.size)
            wanted = CredentialState.REVOKED if purpose == "revocation" else \
                CredentialState.SUSPENDED
            for idx, state in invalid:
                if state == wanted:
                    bits.set(idx, 1)
            unsigned = bitstring_status_list_credential(
                bits, credential_id=url, issuer=issuer, status_purpose=purpose,
                valid_from=now, valid_until=now + LIST_VALIDITY)
            signed = data_integrity.issue(unsigned, signer=signer,
                                          cryptosuite=_cryptosuite(signer),
                                          verification_method=signer.key_id or "",
                                          created=now)
            body = canonical_json(signed)
            media_type = "application/vc+ld+json"
        published = PublishedList(body=body, media_type=media_type,
                                  etag='"' + hashlib.sha256(body).hexdigest()[:32] + '"',
                                  version=shard.version, signed_at=now)
        with self._lock:
            if len(self._cache) >= self._max:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = published
        return published
