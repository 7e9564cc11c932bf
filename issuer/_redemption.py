"""Cross-brand redemption and earning at partners, with settlement statements.

A *partner* belongs to one brand, has an OpenID4VP Client Identifier (the
``aud`` its members' KB-JWTs carry) and API keys of its own (``tpk_...``,
stored hashed, scoped to that partner: it can touch its own redemptions and
nothing of the brand's admin API).

Redemption (DESIGN.md "Cross-brand redemption", OpenID4VP 1.0 §8.4):

1. The partner forwards the member's ``vp_token``, the ``transaction_data``
   item it put in its request, and the request's nonce.
2. :func:`verify_redemption` checks the whole chain without touching the
   database state: the transaction is ``tessera_redeem`` for this brand and
   this partner; the credential is signed by one of this brand's keys; it is
   bound to a key (``cnf``) of the member's enrolled DID; the KB-JWT is
   signed by that key, addressed to the partner, carries the nonce and covers
   exactly this ``transaction_data`` item.
3. :func:`place_hold` then, under the member's row lock: refuses a
   presentation already used (``replayed``), an order already redeemed with
   other terms (``conflict``), a credential whose status is not valid (a
   points credential is superseded the moment points move, so the same one
   can redeem only once), and places a ledger hold (``insufficient_balance``
   when the points are not there). Nothing is written unless all of it holds.
4. ``capture`` turns the hold into a ``redeem`` entry, ``release`` cancels it
   (an expired hold reserves nothing and cannot be captured), ``refund``
   credits points back as a new entry. Each answer carries a receipt signed
   by the brand.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import sqlalchemy
from sqlalchemy import and_, bindparam, update
from sqlmodel import Session, col, select

from issuer import _ledger, _translog
from issuer._admin import check_secret_token
from issuer._cache import cached
from issuer._db import core, core_insert, table_of
from issuer._keystore import KeyStore, SqlKeyStore
from issuer._log_models import (
    LogLeafData,
    Partner,
    PartnerKey,
    PartnerKeyPublic,
    PartnerPublic,
    Redemption,
    RedemptionStatus,
    SettlementLine,
)
from issuer._models import (
    Brand,
    BrandKey,
    CredentialState,
    IssuedCredential,
    Member,
    new_id,
)
from tessera import credentials
from tessera.did import Resolver, holder_key_of
from tessera.encoding import b64url_encode, parse_json
from tessera.errors import ErrorCode, TesseraError
from tessera.formats import sd_jwt
from tessera.keys import PublicKey, new_secret_token, secret_token_row
from tessera.redemption import (
    RedeemTransaction,
    parse_redeem_transaction_data,
    sign_receipt,
    sign_statement,
)

__all__ = [
    "PARTNER_TOKEN_PREFIX",
    "RedemptionRow",
    "VerifiedRedemption",
    "authenticate_partner",
    "capture",
    "create_partner",
    "create_partner_key",
    "get_partner",
    "list_partners",
    "partner_earn",
    "partner_public",
    "place_hold",
    "receipt",
    "redemption_view",
    "refund",
    "release",
    "revoke_partner_key",
    "settlement",
    "verify_redemption",
]

PARTNER_TOKEN_PREFIX: Final = "tpk_"  # noqa: S105 - a prefix, not a secret
MAX_VP_TOKEN_BYTES: Final = 64 * 1024


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("ascii", "replace")).hexdigest()


# -- partners -----------------------------------------------------------------------------------


def create_partner(session: Session, *, brand_id: str, name: str, client_id: str
                   ) -> tuple[Partner, str]:
    """A partner and its first API key (the token is shown once)."""
    if session.exec(select(Partner).where(Partner.brand_id == brand_id,
                                          Partner.name == name)).first() is not None:
        raise TesseraError(ErrorCode.CONFLICT, "a partner with this name exists")
    partner = Partner(brand_id=brand_id, name=name, client_id=client_id)
    session.add(partner)
    session.flush()
    return partner, create_partner_key(session, partner_id=partner.id)


def create_partner_key(session: Session, *, partner_id: str) -> str:
    key_id, token, secret_sha256 = new_secret_token(PARTNER_TOKEN_PREFIX)
    session.add(PartnerKey(id=key_id, partner_id=partner_id, secret_sha256=secret_sha256))
    session.flush()
    return token


def get_partner(session: Session, *, brand_id: str, partner_id: str) -> Partner:
    partner = session.get(Partner, partner_id) if len(partner_id) <= 36 else None
    if partner is None or partner.brand_id != brand_id:
        raise TesseraError(ErrorCode.NOT_FOUND, "no such partner")
    return partner


def partner_public(session: Session, partner: Partner) -> PartnerPublic:
    keys = session.exec(select(PartnerKey).where(PartnerKey.partner_id == partner.id)
                        .order_by(col(PartnerKey.created_at), col(PartnerKey.id)))
    return PartnerPublic(id=partner.id, name=partner.name, client_id=partner.client_id,
                         created_at=partner.created_at,
                         keys=[PartnerKeyPublic.model_validate(k, from_attributes=True)
                               for k in keys])


def list_partners(session: Session, *, brand_id: str) -> list[PartnerPublic]:
    """The brand's partners with their keys (ids and dates; never the hashes)."""
    stmt = (select(Partner).where(Partner.brand_id == brand_id)
            .order_by(col(Partner.created_at), col(Partner.id)))
    return [partner_public(session, p) for p in session.exec(stmt)]


def revoke_partner_key(session: Session, *, brand_id: str, partner_id: str, key_id: str,
                       now: datetime) -> PartnerKeyPublic:
    """Revoke a partner key at once; revoking a revoked key returns it unchanged.

    Unlike a brand's own keys, a partner may be left with no active key:
    that is how a brand cuts a partner off.
    """
    partner = get_partner(session, brand_id=brand_id, partner_id=partner_id)
    row = session.get(PartnerKey, key_id, populate_existing=True) if len(key_id) <= 32 else None
    if row is None or row.partner_id != partner.id:
        raise TesseraError(ErrorCode.NOT_FOUND, "no such partner key")
    if row.revoked_at is None:
        row.revoked_at = now
        session.add(row)
        session.flush()
    return PartnerKeyPublic.model_validate(row, from_attributes=True)


# A partner key and the brand's keys in one statement: a redemption's transaction needs
# both (the key first; the brand's keys to check the credential or sign the receipt), and
# both are read afresh in each transaction (a revoked partner key, a rotated brand key
# are seen by the next request). One row per brand key, each carrying the partner key's
# columns, or NULLs when no such partner key.
_PARTNER_KEYS: Final = table_of(PartnerKey)
_PARTNER_KEY_AND_BRAND_KEYS: Final = sqlalchemy.select(
    _PARTNER_KEYS.c.id.label("pk_id"), _PARTNER_KEYS.c.partner_id.label("pk_partner_id"),
    _PARTNER_KEYS.c.secret_sha256.label("pk_secret_sha256"),
    _PARTNER_KEYS.c.revoked_at.label("pk_revoked_at"), *table_of(BrandKey).c,
).select_from(table_of(BrandKey).outerjoin(
    _PARTNER_KEYS, _PARTNER_KEYS.c.id == bindparam("key_id"))).where(
    table_of(BrandKey).c.brand_id == bindparam("brand_id"))


_PARTNER_KEY: Final = sqlalchemy.select(_PARTNER_KEYS).where(
    _PARTNER_KEYS.c.id == bindparam("key_id"))


def _partner_of_key(session: Session, *, brand: Brand, token: str, refused: TesseraError,
                    keystore: KeyStore | None) -> str:
    """The partner id of the unrevoked partner key ``token`` names, or raise ``refused``;
    with a :class:`SqlKeyStore`, the brand's keys come with the key (one statement) and
    are handed to it for the rest of the transaction."""
    if not isinstance(keystore, SqlKeyStore):
        return str(check_secret_token(session, model=PartnerKey, prefix=PARTNER_TOKEN_PREFIX,
                                      token=token, refused=refused).partner_id)
    store = keystore

    def lookup(key_id: str) -> tuple[str, str] | None:  # (partner id, secret hash)
        rows = list(core(session, _PARTNER_KEY_AND_BRAND_KEYS,
                         {"key_id": key_id, "brand_id": brand.id}))
        if rows:
            store.remember_keys(session, brand.id, rows)
            key = (rows[0].pk_id, rows[0].pk_partner_id, rows[0].pk_secret_sha256,
                   rows[0].pk_revoked_at)
        else:  # a brand with no key (keys are never deleted): the partner key alone
            row = core(session, _PARTNER_KEY, {"key_id": key_id}).first()
            key = ((row.id, row.partner_id, row.secret_sha256, row.revoked_at)
                   if row is not None else (None, None, None, None))
        key_id_found, partner_id, secret_sha256, revoked_at = key
        return ((str(partner_id), str(secret_sha256))
                if key_id_found is not None and revoked_at is None else None)

    return secret_token_row(token, prefix=PARTNER_TOKEN_PREFIX, lookup=lookup,
                            stored_hash=lambda found: found[1], refused=refused)[0]


def authenticate_partner(session: Session, *, brand: Brand, token: str,
                         keystore: KeyStore | None = None) -> Partner:
    """The partner whose key ``token`` is; ``keystore``: the brand's keys are read with
    the key (one statement) for the rest of the transaction (:func:`_partner_of_key`)."""
    refused = TesseraError(ErrorCode.UNAUTHORIZED, "missing or invalid partner key")
    partner_id = _partner_of_key(session, brand=brand, token=token, refused=refused,
                                 keystore=keystore)
    # The key is read every time (a revoked key is refused from the next request on);
    # the partner it names never changes (no route updates or deletes one).
    partner = cached(session, ("partner", partner_id),
                     lambda: session.get(Partner, partner_id))
    if partner is None or partner.brand_id != brand.id:
        raise refused  # another brand's partner is nobody here
    return partner


# -- verification -------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedRedemption:
    transaction: RedeemTransaction
    member_id: str
    nonce: str
    presentation_hash: str
    credential_hash: str
    status: Mapping[str, Any] | None
    credential_type: str


def _presentation(vp_token: Any, credential_id: str) -> str:
    if isinstance(vp_token, str):
        if len(vp_token) > MAX_VP_TOKEN_BYTES:
            raise TesseraError(ErrorCode.TOO_LARGE, "vp_token too large")
        vp_token = parse_json(vp_token, max_bytes=MAX_VP_TOKEN_BYTES)
    if not isinstance(vp_token, dict):
        raise TesseraError(ErrorCode.MALFORMED, "vp_token must map credential ids to "
                                                "presentations (OpenID4VP §8.1)")
    value = vp_token.get(credential_id)
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str):
        raise TesseraError(ErrorCode.DISCLOSURE_MISMATCH,
                           f"vp_token has no single presentation for {credential_id!r}")
    return value


def _brand_keys(session: Session, keystore: KeyStore, brand: Brand) -> dict[str, PublicKey]:
    return {k.verification_method: PublicKey.from_jwk(k.public_jwk)
            for k in keystore.public_keys(session, brand_id=brand.id, did=brand.did)}


def verify_redemption(session: Session, *, brand: Brand, partner: Partner, keystore: KeyStore,
                      resolver: Resolver, vp_token: Any, transaction_data: Any, nonce: str,
                      now: datetime) -> VerifiedRedemption:
    tx = parse_redeem_transaction_data(transaction_data)
    if tx.brand != brand.did:
        raise TesseraError(ErrorCode.INVALID_REQUEST, "the transaction names another brand")
    if tx.partner != partner.id:
        raise TesseraError(ErrorCode.FORBIDDEN, "the transaction names another partner")
    presentation = _presentation(vp_token, tx.credential_ids[0])
    keys = _brand_keys(session, keystore, brand)

    def issuer_key(iss: str, header: dict[str, Any]) -> PublicKey:
        if iss != brand.did:
            raise TesseraError(ErrorCode.UNTRUSTED_ISSUER, "credential not issued by this brand")
        key = keys.get(str(header.get("kid")))
        if key is None:
            raise TesseraError(ErrorCode.KEY_NOT_FOUND, "credential kid is not a brand key")
        return key

    # transaction_data is always passed: a KB-JWT without the hashes, or with
    # other hashes, is transaction_data_mismatch (OpenID4VP §8.4).
    vc = sd_jwt.verify(presentation, issuer_key=issuer_key, now=now,
                       audience=partner.client_id, nonce=nonce,
                       transaction_data=[tx.encoded])
    if vc.vct not in (credentials.POINTS.vct, credentials.MEMBERSHIP.vct):
        raise TesseraError(ErrorCode.CREDENTIAL_TYPE_NOT_ALLOWED,
                           "redeem with a points or membership credential")
    number = vc.claims.get("membership_number")
    if not isinstance(number, str):
        raise TesseraError(ErrorCode.DISCLOSURE_MISMATCH, "membership_number must be disclosed")
    program = vc.claims.get("program")
    program_url = program.get("id") if isinstance(program, dict) else None
    # The claim is the program's URL, .../programs/<id> (ids never contain "/"). The
    # member is locked as it is found: place_hold needs the lock anyway, and taking it
    # here spares a statement; nothing is written before every check below holds.
    _, slash, program_id = (program_url.rpartition("/programs/")
                            if isinstance(program_url, str) else ("", "", ""))
    member = (_ledger.lock_member_by_number(session, brand_id=brand.id, program_id=program_id,
                                            number=number)
              if slash and program_id and "/" not in program_id else None)
    if member is None:
        raise TesseraError(ErrorCode.NOT_FOUND, "no such member")
    try:
        enrolled = holder_key_of(resolver, member.did)
    except TesseraError as exc:
        raise TesseraError(ErrorCode.KEY_BINDING_INVALID, "member DID unresolvable") from exc
    if vc.holder_key is None or vc.holder_key != enrolled:
        raise TesseraError(ErrorCode.KEY_BINDING_INVALID,
                           "credential is not bound to the member's key")
    kb = presentation.rsplit("~", 1)[-1]
    status = vc.payload.get("status")
    return VerifiedRedemption(
        transaction=tx, member_id=member.id, nonce=nonce, presentation_hash=_sha(kb),
        credential_hash=_sha(presentation.split("~", 1)[0]),
        status=status if isinstance(status, dict) else None,
        credential_type=credentials.by_vct(vc.vct).name)


def _status_key(status: Mapping[str, Any] | None) -> tuple[str, int] | None:
    """The (status list id, index) a credential's status entry names; ``None`` when it
    names none or a malformed one (:func:`_check_status` tells them apart)."""
    entry = status.get("status_list") if status is not None else None
    uri, idx = (entry.get("uri"), entry.get("idx")) if isinstance(entry, dict) else (None, None)
    if not isinstance(uri, str) or not isinstance(idx, int):
        return None
    return uri.rstrip("/").rsplit("/", 1)[-1], idx


def _check_status(status: Mapping[str, Any] | None, row: Any) -> None:
    """The credential's own status entry (``row``: its status and reason, read from our
    table under the member lock; ``status`` ``None`` when not found)."""
    if status is None:
        return  # no status to check: the online balance still decides
    if _status_key(status) is None:
        raise TesseraError(ErrorCode.MALFORMED, "credential status entry malformed")
    if row.status is None:
        raise TesseraError(ErrorCode.STATUS_UNAVAILABLE, "credential status unknown")
    if row.status == CredentialState.REVOKED:
        raise TesseraError(ErrorCode.REVOKED, f"credential revoked ({row.status_reason})")
    if row.status == CredentialState.SUSPENDED:
        raise TesseraError(ErrorCode.SUSPENDED, "credential suspended")


# -- the write side -------------------------------------------------------------------------------

# The hot path's reads, built once with bound parameters (building a statement and its
# cache key on every call cost about as much as running it), read as plain rows where
# no ORM object is needed (issuer._db.core).
# A hold's checks after the member lock in one query: the credential's status entry and
# the three uniqueness checks, both outer-joined to one constant row, so there is a row
# (status or NULLs) even when no redemption matches. The checks are a UNION of three
# lookups, each by a unique key (presentation_hash; partner_id and order_reference;
# partner_id and nonce): one join condition ORing them got a generic plan that scanned
# the whole table (bench/README.md "Hot statements in O(1) without planner statistics
# (session 7)"). UNION, not UNION ALL: a redemption matching two keys is one row, as
# the OR gave.
_CREDENTIALS: Final = table_of(IssuedCredential)
_EARLIER_COLUMNS: Final = ("id", "partner_id", "member_id", "order_reference", "nonce",
                           "transaction_hash", "presentation_hash")


def _earlier_by(*where: Any) -> sqlalchemy.Select[Any]:
    table = table_of(Redemption)
    return sqlalchemy.select(*(table.c[name] for name in _EARLIER_COLUMNS)).where(*where)


_MATCHES: Final = sqlalchemy.union(
    _earlier_by(col(Redemption.presentation_hash) == bindparam("presentation_hash")),
    _earlier_by(col(Redemption.partner_id) == bindparam("partner_id"),
                col(Redemption.order_reference) == bindparam("order_reference")),
    _earlier_by(col(Redemption.partner_id) == bindparam("partner_id"),
                col(Redemption.nonce) == bindparam("nonce"))).subquery("earlier")
_EARLIER: Final = sqlalchemy.select(
    _CREDENTIALS.c.status, _CREDENTIALS.c.status_reason,
    *(_MATCHES.c[name] for name in _EARLIER_COLUMNS),
).select_from(
    sqlalchemy.select(sqlalchemy.literal(1).label("one")).subquery("one")
    .outerjoin(_CREDENTIALS, and_(_CREDENTIALS.c.brand_id == bindparam("brand_id"),
                                  _CREDENTIALS.c.status_list_id == bindparam("list_id"),
                                  _CREDENTIALS.c.status_index == bindparam("idx")))
    .outerjoin(_MATCHES, sqlalchemy.true()))
# A redemption is read and written as a plain row (RedemptionRow), never as an ORM object
# (loading, constructing and flushing one cost more than its statements).
_REDEMPTIONS: Final = table_of(Redemption)
_READ_REDEMPTION: Final = sqlalchemy.select(_REDEMPTIONS).where(
    _REDEMPTIONS.c.id == bindparam("id"))
_LOCK_REDEMPTION: Final = _READ_REDEMPTION.with_for_update()
_UPDATE_REDEMPTION: Final = (update(_REDEMPTIONS).where(_REDEMPTIONS.c.id == bindparam("_pk"))
                             .values(status=bindparam("status"),
                                     captured_points=bindparam("captured_points"),
                                     refunded_points=bindparam("refunded_points"),
                                     closed_at=bindparam("closed_at")))
# Append-only rows written as Core INSERTs on the hot path (no unit of work).
_INSERT_REDEMPTION: Final = core_insert(Redemption)
_INSERT_SETTLEMENT_LINE: Final = core_insert(SettlementLine)


@dataclass(slots=True)
class RedemptionRow:
    """A :class:`Redemption` row as read or written here (its columns); it changes
    through :func:`_save` (a Core ``UPDATE`` and this copy together)."""

    id: str
    brand_id: str
    partner_id: str
    member_id: str
    hold_id: str
    order_reference: str
    points: int
    nonce: str
    transaction_hash: str
    presentation_hash: str
    credential_hash: str
    created_at: datetime
    status: str = RedemptionStatus.HELD
    captured_points: int = 0
    refunded_points: int = 0
    closed_at: datetime | None = None


def _saved(row: RedemptionRow) -> dict[str, Any]:
    """The parameters of ``_UPDATE_REDEMPTION`` for ``row``."""
    return {"_pk": row.id, "status": row.status, "captured_points": row.captured_points,
            "refunded_points": row.refunded_points, "closed_at": row.closed_at}


def _save(session: Session, row: RedemptionRow) -> None:
    """Write ``row``'s mutable columns (status, captured and refunded points, closed_at)."""
    done = core(session, _UPDATE_REDEMPTION, _saved(row))
    if done.rowcount != 1:
        raise TesseraError(ErrorCode.INTERNAL_ERROR, "redemption row to update is gone")


def place_hold(session: Session, *, brand: Brand, partner: Partner, verified: VerifiedRedemption,
               now: datetime, ttl_seconds: int) -> tuple[RedemptionRow, bool]:
    """The hold for a verified redemption; ``(redemption, True)`` when it already existed."""
    tx = verified.transaction
    _ledger.lock_member(session, brand_id=brand.id, member_id=verified.member_id)
    # One query for the three uniqueness checks (each an indexed unique key), judged
    # in the order they always were: presentation, then order, then nonce; then the
    # credential's status entry, read by the same query.
    list_id, idx = _status_key(verified.status) or (None, None)
    rows = list(core(session, _EARLIER, {
        "presentation_hash": verified.presentation_hash, "partner_id": partner.id,
        "order_reference": tx.order_reference, "nonce": verified.nonce,
        "brand_id": brand.id, "list_id": list_id, "idx": idx}))
    earlier = [r for r in rows if r.id is not None]
    used = next((r for r in earlier if r.presentation_hash == verified.presentation_hash), None)
    if used is not None:
        raise TesseraError(ErrorCode.REPLAYED, f"presentation already used for redemption "
                                               f"{used.id}")
    same_order = next((r for r in earlier if r.partner_id == partner.id
                       and r.order_reference == tx.order_reference), None)
    if same_order is not None:
        if same_order.transaction_hash == tx.hash and same_order.member_id == verified.member_id:
            # The member presented again for the same transaction: its redemption.
            return _redemption(session, partner, same_order.id, lock=False), True
        raise TesseraError(ErrorCode.CONFLICT, "this order already has a redemption")
    if any(r.partner_id == partner.id and r.nonce == verified.nonce for r in earlier):
        raise TesseraError(ErrorCode.REPLAYED, "nonce already used by this partner")
    _check_status(verified.status, rows[0])
    made: list[RedemptionRow] = []

    def insert(body: Mapping[str, Any]) -> list[tuple[Any, Mapping[str, Any]]]:
        # A new row this transaction only answers with: a Core INSERT of its columns, not
        # the unit of work's flush (bench/README.md "Redemption profile"), sent with the
        # hold's last statement (bench/README.md "Redemption, sixth pass (session 8)").
        made.append(RedemptionRow(
            id=new_id(), brand_id=brand.id, partner_id=partner.id,
            member_id=verified.member_id, hold_id=body["hold"]["id"],
            order_reference=tx.order_reference, points=tx.points, nonce=verified.nonce,
            transaction_hash=tx.hash, presentation_hash=verified.presentation_hash,
            credential_hash=verified.credential_hash, created_at=now))
        return [(_INSERT_REDEMPTION, {c.name: getattr(made[0], c.name)
                                      for c in _REDEMPTIONS.columns})]

    outcome = _ledger.create_hold(
        session, brand_id=brand.id, member_id=verified.member_id,
        idempotency_key=f"redemption:{partner.id}:{tx.order_reference}", points=tx.points,
        now=now, reference=f"{partner.name}:{tx.order_reference}"[:200],
        ttl_seconds=ttl_seconds, then=insert)
    if not made:  # the hold was replayed: its writes were not made with it
        for stmt, params in insert(outcome.body):
            core(session, stmt, params)
    return made[0], False


def _redemption(session: Session, partner: Partner, redemption_id: str, *,
                lock: bool = True) -> RedemptionRow:
    row = core(session, _LOCK_REDEMPTION if lock else _READ_REDEMPTION,
               {"id": redemption_id}).first()
    if row is None or row.partner_id != partner.id:
        raise TesseraError(ErrorCode.NOT_FOUND, "no such redemption")
    return RedemptionRow(**row._mapping)


def _entry_id(body: Mapping[str, Any]) -> int:
    return int(body["entry"]["id"])


Also = Callable[[RedemptionRow], Sequence[tuple[Any, Mapping[str, Any]]]]
"""A caller's own single-row writes made with a capture, from its redemption row."""


def capture(session: Session, *, brand: Brand, partner: Partner, redemption_id: str,
            now: datetime, points: int | None = None, also: Also | None = None
            ) -> RedemptionRow:
    """The partner confirmed the sale: the hold becomes a ``redeem`` entry, once.

    ``also``: the caller's own writes (the route's fresh offer), sent with the capture's
    last statement (after the member's lock), or one by one when nothing is captured now
    (captured before, or the capture replayed)."""
    row = _redemption(session, partner, redemption_id)
    if row.status == RedemptionStatus.CAPTURED:
        for stmt, params in also(row) if also is not None else ():
            core(session, stmt, params)
        return row
    if row.status != RedemptionStatus.HELD:
        raise TesseraError(ErrorCode.CONFLICT, f"redemption is {row.status}")
    made = False

    def captured(body: Mapping[str, Any]) -> list[tuple[Any, Mapping[str, Any]]]:
        # The redemption's UPDATE and its settlement line go with the capture's last
        # statement (bench/README.md "Redemption, sixth pass (session 8)").
        nonlocal made
        made = True
        row.status = RedemptionStatus.CAPTURED
        row.captured_points = int(body["hold"]["captured_points"])
        row.closed_at = now
        return [(_UPDATE_REDEMPTION, _saved(row)), (_INSERT_SETTLEMENT_LINE, {
            "brand_id": brand.id, "partner_id": partner.id, "kind": "redeem",
            "points": row.captured_points, "entry_id": _entry_id(body),
            "redemption_id": row.id, "reference": row.order_reference, "created_at": now}),
            *(also(row) if also is not None else ())]

    outcome = _ledger.capture_hold(session, brand_id=brand.id, hold_id=row.hold_id,
                                   idempotency_key=f"capture:{row.id}", now=now, points=points,
                                   member_id=row.member_id, then=captured)
    if not made:  # the capture was replayed: its writes were not made with it
        _, (_, line), *more = captured(outcome.body)
        _save(session, row)
        core(session, _INSERT_SETTLEMENT_LINE, line)
        for stmt, params in more:
            core(session, stmt, params)
    session.info.setdefault(_CAPTURED_NOW, set()).add(row.id)
    return row


def release(session: Session, *, brand: Brand, partner: Partner, redemption_id: str,
            now: datetime) -> RedemptionRow:
    """The sale was cancelled: the points are free again. Releasing twice is one release."""
    row = _redemption(session, partner, redemption_id)
    if row.status == RedemptionStatus.RELEASED:
        return row
    if row.status != RedemptionStatus.HELD:
        raise TesseraError(ErrorCode.CONFLICT, f"redemption is {row.status}")
    _ledger.release_hold(session, brand_id=brand.id, hold_id=row.hold_id,
                         idempotency_key=f"release:{row.id}", now=now)
    row.status = RedemptionStatus.RELEASED
    row.closed_at = now
    _save(session, row)
    return row


def refund(session: Session, *, brand: Brand, partner: Partner, redemption_id: str,
           points: int, refund_reference: str, now: datetime) -> RedemptionRow:
    """Goods returned at the partner: points come back as a new ledger entry."""
    row = _redemption(session, partner, redemption_id)
    key = f"refund:{row.id}:{refund_reference}"
    done = session.exec(select(SettlementLine).where(
        SettlementLine.redemption_id == row.id, SettlementLine.kind == "refund",
        SettlementLine.reference == f"{row.order_reference}/{refund_reference}"[:200])).first()
    if done is not None:
        if done.points != points:
            raise TesseraError(ErrorCode.CONFLICT, "refund reference used for another amount")
        return row
    if row.status not in (RedemptionStatus.CAPTURED, RedemptionStatus.REFUNDED):
        raise TesseraError(ErrorCode.CONFLICT, "only a captured redemption can be refunded")
    if points > row.captured_points - row.refunded_points:
        raise TesseraError(ErrorCode.INVALID_REQUEST, "refund exceeds what was captured")
    outcome = _ledger.adjust(session, brand_id=brand.id, member_id=row.member_id,
                             idempotency_key=key, points=points, now=now,
                             reason=f"refund of redemption {row.id} ({row.order_reference})",
                             operator=f"partner:{partner.id}")
    row.refunded_points += points
    if row.refunded_points == row.captured_points:
        row.status = RedemptionStatus.REFUNDED
    _save(session, row)
    session.add(SettlementLine(brand_id=brand.id, partner_id=partner.id, kind="refund",
                               points=points, entry_id=_entry_id(outcome.body),
                               redemption_id=row.id,
                               reference=f"{row.order_reference}/{refund_reference}"[:200],
                               created_at=now))
    session.flush()
    return row


def partner_earn(session: Session, *, brand: Brand, partner: Partner, membership_number: str,
                 points: int, order_reference: str, now: datetime) -> _ledger.Outcome:
    """Points earned at the partner: the partner reports, the brand credits (once per order)."""
    members = list(session.exec(select(Member).where(
        Member.brand_id == brand.id, Member.membership_number == membership_number)))
    if len(members) != 1:
        raise TesseraError(ErrorCode.NOT_FOUND, "no such member")
    outcome = _ledger.earn(session, brand_id=brand.id, member_id=members[0].id,
                           idempotency_key=f"partner-earn:{partner.id}:{order_reference}",
                           points=points, now=now, reference=order_reference[:200],
                           reason=f"earned at partner {partner.name}"[:500])
    if not outcome.replayed:
        session.add(SettlementLine(brand_id=brand.id, partner_id=partner.id, kind="earn",
                                   points=points, entry_id=_entry_id(outcome.body),
                                   reference=order_reference, created_at=now))
        session.flush()
    return outcome


# -- views, receipts, statements --------------------------------------------------------------


def _status(session: Session, row: RedemptionRow, now: datetime) -> str:
    if row.status == RedemptionStatus.HELD:
        hold = _ledger.hold_row(session, row.hold_id)
        if hold is not None and _aware(hold.expires_at) <= now:
            return RedemptionStatus.EXPIRED
    return row.status


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


# Session.info: redemptions this transaction captured (their one settlement line is its own).
_CAPTURED_NOW: Final = "tessera.redemption.captured_now"


def _log_indexes(session: Session, row: RedemptionRow) -> list[int]:
    """The log indexes of the entries the redemption's settlement lines name (those
    already integrated). Only a capture writes a line (a refund needs a capture
    first), so a held or released redemption has none: no query. Nor has one this
    transaction captured: its only line is the capture's, whose leaf is pending
    until this transaction commits (the sequencer integrates committed leaves)."""
    if row.status in (RedemptionStatus.HELD, RedemptionStatus.RELEASED) \
            or row.id in session.info.get(_CAPTURED_NOW, ()):
        return []
    lines = select(SettlementLine.entry_id).where(SettlementLine.redemption_id == row.id)
    return sorted(int(i) for i in session.exec(select(LogLeafData.idx).where(
        LogLeafData.brand_id == row.brand_id, col(LogLeafData.entry_id).in_(lines))))


def redemption_view(session: Session, row: RedemptionRow, now: datetime) -> dict[str, Any]:
    hold = _ledger.hold_row(session, row.hold_id)
    return {"id": row.id, "partner_id": row.partner_id, "order_reference": row.order_reference,
            "points": row.points, "status": _status(session, row, now),
            "captured_points": row.captured_points, "refunded_points": row.refunded_points,
            "hold_expires_at": _aware(hold.expires_at).isoformat() if hold else None,
            "transaction_data_hash": row.transaction_hash,
            "log_entries": _log_indexes(session, row)}


def receipt(session: Session, *, keystore: KeyStore, brand: Brand, row: RedemptionRow,
            now: datetime, view: Mapping[str, Any] | None = None) -> str:
    """The brand's signed receipt of ``row``; ``view``: its :func:`redemption_view`,
    when the caller has it already (the same transaction)."""
    view = view if view is not None else redemption_view(session, row, now)
    hold = _ledger.hold_row(session, row.hold_id)
    return sign_receipt(
        keystore.signer(session, brand_id=brand.id, did=brand.did), issuer=brand.did,
        redemption_id=row.id, partner=row.partner_id, order_reference=row.order_reference,
        points=row.points, status=view["status"], transaction_hash=row.transaction_hash,
        issued_at=now, captured_points=row.captured_points,
        refunded_points=row.refunded_points, log_entries=view["log_entries"],
        hold_expires_at=_aware(hold.expires_at) if hold else None)


def settlement(session: Session, *, keystore: KeyStore, brand: Brand, partner: Partner,
               start: datetime, end: datetime, now: datetime) -> dict[str, Any]:
    """A signed statement of the partner's lines in ``[start, end)``, each tied to the log.

    ``log`` names the signed head the lines were checked against: every line
    carries its leaf index and leaf hash, and the statement is only produced
    if each leaf still says what the line says (the reconciliation).
    """
    if start.tzinfo is None or end.tzinfo is None or end <= start:
        raise TesseraError(ErrorCode.INVALID_REQUEST, "period must be an aware, non-empty range")
    # Every line's leaf must have its index: pending leaves go into the tree first.
    _translog.catch_up(session, brand.id, now=now, keystore=keystore)
    lines = list(session.exec(select(SettlementLine).where(
        SettlementLine.partner_id == partner.id, col(SettlementLine.created_at) >= start,
        col(SettlementLine.created_at) < end).order_by(col(SettlementLine.id))))
    leaves = {row.entry_id: row for row in session.exec(select(LogLeafData).where(
        LogLeafData.brand_id == brand.id,
        col(LogLeafData.entry_id).in_([ln.entry_id for ln in lines] or [-1])))}
    size, root = _translog.checkpoint(session, brand.id)
    source = _translog.SqlHashSource(session, brand.id)
    source.fetch((0, leaves[ln.entry_id].idx) for ln in lines if ln.entry_id in leaves)
    out: list[dict[str, Any]] = []
    totals: dict[str, int] = {"redeem": 0, "refund": 0, "earn": 0}
    sign = {"redeem": -1, "refund": 1, "earn": 1}
    for ln in lines:
        leaf = leaves.get(ln.entry_id)
        if leaf is None:
            raise TesseraError(ErrorCode.INTERNAL_ERROR, f"settlement line {ln.id} has no leaf")
        if leaf.data is not None:
            body = parse_json(leaf.data)
            if not isinstance(body, dict) or body.get("delta") != sign[ln.kind] * ln.points:
                raise TesseraError(ErrorCode.INTERNAL_ERROR,
                                   f"settlement line {ln.id} disagrees with log leaf {leaf.idx}")
        totals[ln.kind] += ln.points
        out.append({"kind": ln.kind, "at": _aware(ln.created_at).isoformat(),
                    "reference": ln.reference, "points": ln.points,
                    "ledger_entry": ln.entry_id, "log_index": leaf.idx,
                    "leaf_hash": b64url_encode(source.get_leaf_hash(leaf.idx)),
                    "redemption_id": ln.redemption_id})
    statement: dict[str, Any] = {
        "issuer": brand.did, "partner": partner.id, "partner_name": partner.name,
        "period": {"from": start.isoformat(), "to": end.isoformat()},
        "issued_at": now.isoformat(), "lines": out, "totals": totals,
        "net_points_burned": totals["redeem"] - totals["refund"],
        "log": {"tree_size": size, "root_hash": root},
    }
    statement["jws"] = sign_statement(
        keystore.signer(session, brand_id=brand.id, did=brand.did), statement)
    return statement
