"""Issue a member's credentials from the ledger: SD-JWT VC or Data Integrity, with status.

Used by the OpenID4VCI credential endpoint. One request issues a batch
(OpenID4VCI 1.0 §3.3.2, §8): one Credential Dataset, and per credential its
own holder key, salts, decoys and random status-list slot, so that no two
presentations of a batch share a value the verifier did not ask for.

* Timestamps are coarsened (:data:`TIME_GRANULARITY`): ``iat`` and ``nbf``
  are the issuance time rounded down to the hour, ``exp`` the policy's end
  rounded down to the hour. A batch then shares no time rarer than "issued by
  this brand, of this type, in this hour", which every other member issued in
  that hour shares too.
* Each credential gets an ``issued_credential`` row; the rows of a response
  share a ``batch_id`` and the digest of their dataset. A new batch
  supersedes (and revokes) the member's earlier credentials of the same type
  and format whose dataset differs: the claims changed. Earlier credentials
  with the same dataset stay valid, so a wallet topping up its pool keeps the
  unused rest (§13.2: no revocation solely because of a new request), and a
  batch never supersedes its own siblings.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

from sqlmodel import Session

from issuer import _ledger
from issuer._admin import tiers_of
from issuer._credentials import Program as CredentialProgram
from issuer._db import core_insert
from issuer._keystore import KeyStore
from issuer._models import (
    Brand,
    CredentialState,
    IssuedCredential,
    Member,
    Program,
    StatusListKind,
    Tier,
    new_id,
)
from issuer._settings import Settings
from issuer._status_lists import (
    SHARD_SIZE,
    _cryptosuite,
    allocate_batch,
    bitstring_entries,
    mark_superseded,
    token_status_claim,
)
from tessera import credentials
from tessera.credentials import CredentialType
from tessera.encoding import canonical_json
from tessera.errors import ErrorCode, TesseraError
from tessera.formats import data_integrity, sd_jwt
from tessera.keys import PublicKey

__all__ = [
    "CONFIGURATIONS",
    "Configuration",
    "IssuedRow",
    "PreparedBatch",
    "ReadAhead",
    "coarse_time",
    "issue_batch",
    "issue_for_member",
    "issuer_url",
    "ledger_checkpoint",
    "prepare_batch",
    "read_ahead",
    "status_list_url",
]

SD_JWT: Final = "dc+sd-jwt"
LDP_VC: Final = "ldp_vc"
MEMBERSHIP_TTL: Final = timedelta(days=30)
POINTS_TTL: Final = timedelta(hours=24)
# The unit iat, nbf and exp of an SD-JWT VC are rounded down to: the anonymity
# set of a batch's times is every credential of the brand and type issued in
# the same hour. A day would hide more but cut a 24-hour points credential
# issued late in the day to minutes; an hour costs at most an hour of validity.
TIME_GRANULARITY: Final = timedelta(hours=1)


@dataclass(frozen=True)
class Configuration:
    """One entry of ``credential_configurations_supported`` (OpenID4VCI §12.2.4)."""

    id: str
    ctype: CredentialType
    format: str


CONFIGURATIONS: Final[dict[str, Configuration]] = {
    c.id: c for c in (
        Configuration(f"{t.name}_sd_jwt", t, SD_JWT) for t in credentials.CREDENTIAL_TYPES
    )
} | {
    c.id: c for c in (
        Configuration(f"{t.name}_ldp_vc", t, LDP_VC) for t in credentials.CREDENTIAL_TYPES
    )
}


def issuer_url(settings: Settings, brand: Brand) -> str:
    """The Credential Issuer Identifier of a brand (OpenID4VCI §12.2.1)."""
    return f"{settings.public_url}/brands/{brand.slug}"


def status_list_url(settings: Settings, brand: Brand, list_id: str) -> str:
    return f"{issuer_url(settings, brand)}/status/{list_id}"


def ledger_checkpoint(session: Session, member: Member | _ledger.MemberRow) -> tuple[int, str]:
    """The brand's transparency-log head (size, root) the balance is computed at.

    :func:`issuer._ledger.checked_balance` put the member's pending leaves into
    the tree first, so the head read here covers every entry the balance counts.
    """
    from issuer._translog import checkpoint

    return checkpoint(session, member.brand_id)


def _program_claim(settings: Settings, brand: Brand, program: Program,
                   tiers: list[Tier]) -> CredentialProgram:
    return CredentialProgram(
        id=f"{issuer_url(settings, brand)}/programs/{program.id}", name=program.name,
        brand=brand.did, tiers=[(t.name, t.rank) for t in tiers],
        points_ladder=tuple(program.points_ladder))


@dataclass(frozen=True)
class ReadAhead:
    """What a credential write reads that need not be read under the write lock, read
    before it in a read transaction (:func:`read_ahead`): the programme and its tiers,
    the brand's signer, the member's log figures (:class:`issuer._ledger.LogReading`),
    the holder keys' thumbprints. On SQLite one writer at a time holds the file's write
    gate; every read done here is one it is not held over (bench/README.md "Issuance on
    SQLite, the gate's hold (session 8)")."""

    program: CredentialProgram
    tiers: list[Tier]
    signer: Any
    log: _ledger.LogReading | None
    thumbprints: tuple[str, ...] = ()

    def with_keys(self, holder_keys: Sequence[PublicKey]) -> ReadAhead:
        return replace(self, thumbprints=tuple(k.thumbprint() for k in holder_keys))


def read_ahead(session: Session, *, settings: Settings, keystore: KeyStore, brand: Brand,
               member: Member, configuration_id: str, now: datetime) -> ReadAhead | None:
    """:class:`ReadAhead` for a batch of ``configuration_id`` to ``member`` (None: an
    unknown configuration, which :func:`prepare_batch` refuses).

    A programme renamed or a brand key rotated between this read and the write is as
    if the request had come a moment earlier (a retired key still verifies); the log
    figures are checked again in the write (:func:`issuer._ledger.reading_holds`)."""
    config = CONFIGURATIONS.get(configuration_id)
    if config is None:
        return None
    program = session.get(Program, member.program_id)
    assert program is not None  # foreign key
    tiers = tiers_of(session, program_id=program.id)
    log = (_ledger.read_log(session, member=member, now=now)
           if config.ctype is credentials.POINTS else None)
    return ReadAhead(program=_program_claim(settings, brand, program, tiers), tiers=tiers,
                     signer=keystore.signer(session, brand_id=brand.id, did=brand.did), log=log)


def _claims(session: Session, *, settings: Settings, brand: Brand,
            member: Member | _ledger.MemberRow, ctype: CredentialType, now: datetime,
            ahead: ReadAhead | None = None) -> tuple[dict[str, Any], datetime]:
    if ahead is not None:
        prog, tiers = ahead.program, ahead.tiers
    else:
        program = session.get(Program, member.program_id)
        assert program is not None  # foreign key
        tiers = tiers_of(session, program_id=program.id)
        prog = _program_claim(settings, brand, program, tiers)
    if ctype is credentials.MEMBERSHIP:
        tier = next((t for t in tiers if t.id == member.tier_id), None)
        if tier is None:
            raise TesseraError(ErrorCode.CONFLICT, "the member holds no tier yet")
        until = member.tier_valid_until or (now + timedelta(days=365))
        claims = credentials.membership_claims(
            program=prog.as_claim(), membership_number=member.membership_number,
            tier=tier.name, tiers=prog.tiers, member_since=member.enrolled_at.date(),
            tier_valid_until=until.date())
        tier_end = datetime.combine(until.date(), datetime.max.time(), tzinfo=UTC)
        return claims, min(now + MEMBERSHIP_TTL, tier_end)
    reading = ahead.log if ahead is not None else None
    if reading is not None and not _ledger.reading_holds(session, member=member,
                                                         reading=reading, now=now):
        reading = None  # logged for meanwhile: read under the lock
    bal = _ledger.checked_balance(session, member=member, now=now, reading=reading)
    nxt: tuple[int, date] | None = None
    if bal.expiring_next is not None:
        nxt = (bal.expiring_next.points, bal.expiring_next.at.date())
    head = reading.checkpoint if reading is not None else ledger_checkpoint(session, member)
    claims = credentials.points_claims(
        program=prog.as_claim(), membership_number=member.membership_number,
        balance=bal.available, as_of=now, checkpoint=head, expiring_next=nxt,
        ladder=prog.points_ladder)
    return claims, now + POINTS_TTL


def coarse_time(at: datetime, unit: timedelta = TIME_GRANULARITY) -> datetime:
    """``at`` rounded down to a multiple of ``unit`` since the epoch (UTC)."""
    step = int(unit.total_seconds())
    return datetime.fromtimestamp(int(at.timestamp()) // step * step, UTC)


_WHEN_READ: Final = frozenset({"as_of", "checkpoint"})


def _dataset_digest(claims: dict[str, Any]) -> str:
    # ``as_of`` and the log ``checkpoint`` say when the balance was read, not the state it
    # states: every member's ledger write moves the brand's log head, and counting it would
    # make each top-up revoke the unused rest of the pool (§13.2 forbids revoking solely
    # for a new request). An older checkpoint stays a prefix the audit can still prove.
    state = {k: v for k, v in claims.items() if k not in _WHEN_READ}
    return hashlib.sha256(canonical_json(state)).hexdigest()


def issue_for_member(session: Session, *, settings: Settings, keystore: KeyStore,
                     brand: Brand, member: Member, configuration_id: str,
                     holder_key: PublicKey, now: datetime) -> tuple[Any, IssuedRow]:
    """Issue one credential of ``configuration_id`` bound to ``holder_key`` / the member's DID."""
    issued = issue_batch(session, settings=settings, keystore=keystore, brand=brand,
                         member=member, configuration_id=configuration_id,
                         holder_keys=[holder_key], now=now)
    return issued[0]


def issue_batch(session: Session, *, settings: Settings, keystore: KeyStore, brand: Brand,
                member: Member, configuration_id: str, holder_keys: Sequence[PublicKey],
                now: datetime) -> list[tuple[Any, IssuedRow]]:
    """Issue one credential of ``configuration_id`` per holder key, as one batch, signed
    before this returns (:func:`prepare_batch` leaves the signing to after the commit)."""
    batch = prepare_batch(session, settings=settings, keystore=keystore, brand=brand,
                          member=member, configuration_id=configuration_id,
                          holder_keys=holder_keys, now=now)
    return list(zip(batch.sign(), batch.rows, strict=True))


@dataclass(frozen=True)
class IssuedRow:
    """The ``issued_credential`` row written for one credential of a batch."""

    id: str
    status_list_id: str
    status_index: int
    holder_key_thumbprint: str


@dataclass(frozen=True)
class PreparedBatch:
    """A batch whose rows are written and whose credentials are not signed yet.

    :meth:`sign` reads no database: the credential endpoint calls it after its
    write transaction committed, so the write lock (one writer at a time on
    SQLite) is not held over a batch's signatures (bench/README.md "Issuance,
    third pass (session 5)"). Everything that can refuse the batch (claims,
    schema, Data Integrity context, slots, rows) ran in :func:`prepare_batch`.
    """

    config: Configuration
    rows: list[IssuedRow]
    holder_keys: list[PublicKey]
    unsigned: list[Any]  # per credential: SD-JWT claims' status, or the unsigned VC
    claims: dict[str, Any]
    signer: Any
    issuer: str
    issued_at: datetime
    expires_at: datetime
    now: datetime

    def sign(self) -> list[Any]:
        if self.config.format == SD_JWT:
            ctype = self.config.ctype
            return [sd_jwt.issue(self.claims, signer=self.signer, issuer=self.issuer,
                                 vct=ctype.vct, holder_key=key, issued_at=self.issued_at,
                                 not_before=self.issued_at, expires_at=self.expires_at,
                                 status=status, always_visible=ctype.always_visible)
                    for key, status in zip(self.holder_keys, self.unsigned, strict=True)]
        return [data_integrity.issue(vc, signer=self.signer,
                                     cryptosuite=_cryptosuite(self.signer),
                                     verification_method=self.signer.key_id or "",
                                     created=self.now)
                for vc in self.unsigned]


_INSERT_ISSUED: Final = core_insert(IssuedCredential)


def prepare_batch(session: Session, *, settings: Settings, keystore: KeyStore, brand: Brand,
                  member: Member | _ledger.MemberRow, configuration_id: str,
                  holder_keys: Sequence[PublicKey], now: datetime,
                  ahead: ReadAhead | None = None) -> PreparedBatch:
    """Write the rows of one credential of ``configuration_id`` per holder key.

    The caller checked the keys (each proven or attested by the member, none
    twice); this only refuses a repeated key, which would link two
    credentials of the batch by their ``cnf``. The claims are checked against
    the type's schema once here (every credential of a batch carries the same).
    """
    config = CONFIGURATIONS.get(configuration_id)
    if config is None:
        raise TesseraError(ErrorCode.NOT_FOUND, "unknown credential configuration")
    if not holder_keys:
        raise TesseraError(ErrorCode.INVALID_REQUEST, "a batch needs at least one holder key")
    thumbprints = (list(ahead.thumbprints) if ahead is not None and ahead.thumbprints
                   else [k.thumbprint() for k in holder_keys])
    if len(set(thumbprints)) != len(holder_keys):
        raise TesseraError(ErrorCode.KEY_BINDING_INVALID,
                           "each holder key binds at most one credential of a batch")
    claims, expires = _claims(session, settings=settings, brand=brand, member=member,
                              ctype=config.ctype, now=now, ahead=ahead)
    signer = (ahead.signer if ahead is not None
              else keystore.signer(session, brand_id=brand.id, did=brand.did))
    kind = StatusListKind.TOKEN if config.format == SD_JWT else StatusListKind.BITSTRING
    batch_id = new_id()
    dataset = _dataset_digest(claims)
    issued_at = coarse_time(now)
    coarse_expiry = coarse_time(expires)
    if coarse_expiry <= issued_at:
        # Rounding would leave nothing: a tier that ends within the hour.
        coarse_expiry = expires
    if config.format == SD_JWT:
        config.ctype.validate(claims)
    # One shard read and one probe for the batch's slots (distinct and random), and its
    # rows in one Core INSERT: no ORM objects, no flush (bench/README.md, "Issuance,
    # third pass (session 5)").
    slots = allocate_batch(session, brand_id=brand.id, kind=kind, now=now,
                           count=len(holder_keys), size=SHARD_SIZE)
    rows: list[IssuedRow] = []
    unsigned: list[Any] = []
    values: list[dict[str, Any]] = []
    row_expires = coarse_expiry if config.format == SD_JWT else expires
    for (shard, idx), thumbprint in zip(slots, thumbprints, strict=True):
        cred_id = new_id()
        list_url = status_list_url(settings, brand, shard.id)
        if config.format == SD_JWT:
            unsigned.append(token_status_claim(list_url, idx))
        else:
            vc = data_integrity.loyalty_credential(
                config.ctype, claims, issuer=brand.did, subject=member.did, valid_from=now,
                valid_until=expires, credential_id=f"urn:uuid:{cred_id}")
            vc["credentialStatus"] = bitstring_entries(list_url, idx)
            unsigned.append(vc)
        rows.append(IssuedRow(cred_id, shard.id, idx, thumbprint))
        values.append({"id": cred_id, "brand_id": brand.id, "member_id": member.id,
                       "credential_type": config.ctype.name, "format": config.format,
                       "status_list_id": shard.id, "status_index": idx,
                       "status": CredentialState.VALID, "status_reason": None,
                       "superseded_by": None, "holder_key_thumbprint": thumbprint,
                       "issued_at": now, "expires_at": row_expires,
                       "status_changed_at": None, "batch_id": batch_id,
                       "dataset_sha256": dataset})
    session.execute(_INSERT_ISSUED, values)
    mark_superseded(session, member_id=member.id, credential_type=config.ctype.name,
                    credential_format=config.format, dataset_sha256=dataset,
                    new_ids=[row.id for row in rows], now=now)
    return PreparedBatch(config=config, rows=rows, holder_keys=list(holder_keys),
                         unsigned=unsigned, claims=claims, signer=signer, issuer=brand.did,
                         issued_at=issued_at, expires_at=coarse_expiry, now=now)
